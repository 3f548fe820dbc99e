"""The sparse autoencoder and FISTA on N ranks equal the serial run (each rank also computes the
serial result itself); bad input fails on every rank with exit status 2.

Run with ``mpiexec -n 2 python -m pytest --with-mpi -m mpi tests/mpi/test_unsup_mpi.py``.
"""

import numpy as np
import pytest

from hpcnn.parallel.grid import blockdist
from hpcnn.unsup import autoencoder as ae
from hpcnn.unsup import fista as fi
from hpcnn.unsup.__main__ import main

pytestmark = pytest.mark.mpi


@pytest.fixture
def comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def block(a, comm):
    n, start = blockdist(len(a), comm.Get_size(), comm.Get_rank())
    return a[start:start + n]


def sae_problem(dtype, n=101):  # 101 rows: an uneven split on 2 and 4 ranks
    cfg = ae.SAEConfig(visible=16, hidden=6, rho=0.05, beta=3.0, weight_decay=1e-3)
    rng = np.random.default_rng(0)
    x = (rng.random((n, 16)) * 0.8 + 0.1).astype(dtype)
    return cfg, x, ae.init_params(cfg, 0)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_autoencoder_loss_and_grad_equal_serial(comm, dtype, rtol):
    cfg, x, theta = sae_problem(dtype)
    f1, g1 = ae.SparseAutoencoder(cfg, None, dtype).loss_and_grad(theta, x, len(x))
    g1 = g1.copy()
    fN, gN = ae.SparseAutoencoder(cfg, comm, dtype).loss_and_grad(theta, block(x, comm), len(x))
    assert fN == pytest.approx(f1, rel=rtol)
    np.testing.assert_allclose(gN, g1, rtol=rtol * 10, atol=rtol * 1e-3)
    # every rank holds the same numbers
    ref = comm.bcast(gN if comm.Get_rank() == 0 else None)
    np.testing.assert_array_equal(gN, ref)


def test_autoencoder_training_equals_serial(comm):
    cfg, x, theta = sae_problem(np.float64)
    t1, h1 = ae.train(ae.SparseAutoencoder(cfg, None, np.float64), theta, x, len(x), 15)
    tN, hN = ae.train(ae.SparseAutoencoder(cfg, comm, np.float64), theta, block(x, comm),
                      len(x), 15)
    np.testing.assert_allclose(hN, h1, rtol=1e-9)
    np.testing.assert_allclose(tN, t1, rtol=1e-7, atol=1e-9)


def test_fista_codes_equal_serial(comm):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((37, 16)).astype(np.float32)
    D = fi.random_dictionary(16, 20, 2)
    Z1 = fi.fista(X, D, 0.2, 100)
    ZN = fi.fista(block(X, comm), D, 0.2, 100)
    # float32 GEMMs over a different number of rows round differently (BLAS blocking), and 100
    # FISTA steps amplify that to ~1e-5
    np.testing.assert_allclose(ZN, block(Z1, comm), rtol=1e-4, atol=1e-4)
    assert fi.objective(block(X, comm), D, ZN, 0.2, comm) == pytest.approx(
        fi.objective(X, D, Z1, 0.2), rel=1e-6)


def test_dictionary_learning_equals_serial(comm):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((53, 16))
    D0 = fi.random_dictionary(16, 12, 4)
    D1, h1 = fi.learn_dictionary(X, D0, 0.2, 5, 40, len(X))
    DN, hN = fi.learn_dictionary(block(X, comm), D0, 0.2, 5, 40, len(X), comm)
    np.testing.assert_allclose(hN, h1, rtol=1e-10)
    np.testing.assert_allclose(DN, D1, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(DN, comm.bcast(DN if comm.Get_rank() == 0 else None))


def test_cli_autoencoder_equals_serial(comm, rank0_dir, capsys):
    import json
    import os

    from mpi4py import MPI

    common = ["autoencoder", "--dataset", "synthetic", "--patches", "300", "--iters", "8",
              "--hidden", "7", "--threads", "1", "--dtype", "float64"]
    out = os.path.join(rank0_dir, "n.json")
    assert main([*common, "--metrics", out], comm=comm) == 0
    one = os.path.join(rank0_dir, "1.json")
    if comm.Get_rank() == 0:  # the serial run, on rank 0 alone
        assert main([*common, "--metrics", one], comm=MPI.COMM_SELF) == 0
    comm.Barrier()
    if comm.Get_rank() == 0:
        a, b = json.load(open(out)), json.load(open(one))
        assert a["ranks"] == comm.Get_size() and b["ranks"] == 1
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-9)


@pytest.mark.parametrize("argv", [
    ["autoencoder", "--rho", "1.0"],
    ["autoencoder", "--beta", "-2"],
    ["fista", "--lam", "-1"],
    ["fista", "--dictionary", "missing.npy"],
])
def test_bad_input_exit_2_on_every_rank(comm, argv, capsys):
    rc = main([*argv, "--dataset", "synthetic", "--patches", "40", "--iters", "1",
               "--threads", "1"], comm=comm)
    assert comm.allgather(rc) == [2] * comm.Get_size()
    err = capsys.readouterr().err
    if comm.Get_rank() == 0:
        assert err.startswith("error: ") and err.count("\n") == 1
    else:
        assert err == ""
