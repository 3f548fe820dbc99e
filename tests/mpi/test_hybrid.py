"""Hybrid parallelism by equivalence: every scheme on every grid gives the serial run.

Run under ``mpiexec -n 2`` (grids 1x2 and 2x1) and ``mpiexec -n 4`` (grids 2x2, 1x4, 4x1); a grid
whose size is not the rank count is skipped. Every rank also computes the serial run itself, so
the comparison needs no second launch.
"""

import functools
from functools import partial

import numpy as np
import pytest

from hpcnn import checkpoint as ckpt
from hpcnn.data import load_dataset
from hpcnn.nn import NETS, build_net
from hpcnn.optim import SGD
from hpcnn.parallel import DataParallel, Hybrid
from hpcnn.train import parse_args, run

STEPS = 10
GRIDS = [(1, 2), (2, 1), (2, 2), (1, 4), (4, 1)]
NET_KWARGS = {"lenet5": {}, "cifar10_quick": {}, "owt_cifar": {"narrow": 16}}


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _train(net, comm, batch, grid=None, scheme=None, steps=STEPS, seed=1):
    """Named full state on rank 0 after ``steps`` steps, and the strategy."""
    _, solver, shape = NETS[net]
    ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train=batch * steps,
                      synthetic_test=10, seed=seed)
    # one fixed convolution strategy: "auto" could time its way to different ones at B and B/N
    model = build_net(net, shape, 10, seed=seed, algo="lowering", **NET_KWARGS[net])
    opt = partial(SGD, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    if grid is None:
        st = DataParallel(comm, model, opt)
    else:
        st = Hybrid(comm, model, opt, grid=grid, scheme=scheme, bucket_mb=0.05)
    size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
    per = batch // size
    for i in range(steps):
        sl = slice(i * batch + rank * per, i * batch + (rank + 1) * per)
        st.step(ds.x_train[sl], ds.y_train[sl], solver.lr)
    return st.state()[0], st


@functools.lru_cache(maxsize=None)
def serial(net, batch):
    return _train(net, None, batch)[0]


def _grid_or_skip(grid):
    if grid[0] * grid[1] != world().Get_size():
        pytest.skip(f"grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]} ranks")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("scheme", ["a", "b", "c"])
@pytest.mark.parametrize("grid", GRIDS, ids=[f"{d}x{m}" for d, m in GRIDS])
@pytest.mark.parametrize("net", list(NET_KWARGS))
def test_hybrid_equals_serial(net, grid, scheme):
    _grid_or_skip(grid)
    comm = world()
    batch = 4 * comm.Get_size()
    state, st = _train(net, comm, batch, grid, scheme)
    # measured bytes are the analytic ones, kind by kind, on every rank
    t = st.timings()
    assert {k: v for k, v in t["bytes"].items() if v} == \
        {k: v * STEPS for k, v in st.bytes_per_step(batch).items() if v}
    if comm.Get_rank() == 0:
        ref = serial(net, batch)
        assert sorted(state) == sorted(ref)
        for k in ref:
            if k.startswith("param/"):
                np.testing.assert_allclose(state[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
            else:  # momentum: cifar10_quick's conv1 (std 1e-4) has gradients that nearly
                # cancel, where a different summation order moves single values by ~1e-3 of the
                # buffer's largest
                np.testing.assert_allclose(state[k], ref[k], rtol=1e-3,
                                           atol=2e-3 * np.abs(ref[k]).max(), err_msg=k)


@pytest.mark.mpi(min_size=2)
def test_no_head_weight_is_reduced_on_a_model_only_grid():
    comm = world()
    state, st = _train("owt_cifar", comm, 4 * comm.Get_size(), (1, comm.Get_size()), "a", 2)
    assert "allreduce_head" not in st.timings()["bytes"]
    feature_bytes = sum(4 * p.data.size for layer in st.model.features for p in layer.params())
    assert st.timings()["bytes"]["allreduce"] == 2 * feature_bytes
    # each rank holds only its rows of every FC layer
    for layer in st.model.head:
        for p in layer.params():
            assert p.shard is not None and p.data.shape[0] < p.full_shape[0]


@pytest.mark.mpi(min_size=2)
def test_hybrid_predictions_equal_serial():
    from hpcnn.train import evaluate

    comm = world()
    _, st = _train("lenet5", comm, 4 * comm.Get_size(), (1, comm.Get_size()), "a", 3)
    _, ref = _train("lenet5", None, 4 * comm.Get_size(), steps=3)
    x = np.random.default_rng(5).standard_normal((37, 1, 28, 28)).astype(np.float32)
    y = np.arange(37) % 10
    assert evaluate(st, x, y, comm, batch=7) == evaluate(ref, x, y, None, batch=7)


# checkpoints across layouts -------------------------------------------------------------------
# Seed 1: with seed 0, 4 ranks' summation order flips one max-pool argmax of lenet5's conv1 within
# the 10 resumed steps, and that filter then differs by ~2e-4 (as tests/mpi/test_data_parallel.py
# notes for its seeds); seeds 1, 2 and 3 show the equivalence without such a flip.
SMALL = ["--net", "lenet5", "--dataset", "synthetic", "--synthetic-shape", "1,16,16",
         "--synthetic-train", "128", "--synthetic-test", "32", "--batch-size", "16",
         "--log-interval", "100", "--algo", "lowering", "--epochs", "2", "--seed", "1"]
HYBRID = ["--parallel", "hybrid"]


def _final(directory):
    return ckpt.read_checkpoint(ckpt.list_checkpoints(directory)[0])[0]


def _sub(comm, n):
    """The first ``n`` ranks as a communicator (None on the others)."""
    color = 0 if comm.Get_rank() < n else 1
    sub = comm.Split(color, comm.Get_rank())
    if color:
        sub.Free()
        return None
    return sub


def _assert_state(a, b, exact):
    """Bitwise on the same layout; across layouts the parameters to rtol 1e-5 (and the momentum,
    whose near-cancelling entries move more with the summation order, to 1e-3 of its scale)."""
    assert sorted(a) == sorted(b)
    for k in sorted(a, key=lambda k: not k.startswith("param/")):
        if exact:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        elif k.startswith("param/"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-3 * np.abs(b[k]).max(),
                                       err_msg=k)


@pytest.mark.mpi(min_size=2)
def test_hybrid_checkpoint_resumes_under_any_strategy_and_rank_count(rank0_dir):
    """Saved under hybrid 1x2: resumed bitwise on 1x2, and under data parallelism on one rank
    (and, on 4 ranks, under hybrid 2x2) equal to the uninterrupted run."""
    from mpi4py import MPI

    comm = world()
    d = {k: f"{rank0_dir}/{k}" for k in ("straight", "cut", "same", "data1", "grid22")}
    pair = _sub(comm, 2)
    if pair is not None:
        run(parse_args([*SMALL, *HYBRID, "--checkpoint-dir", d["straight"]]), pair, 1)
        run(parse_args([*SMALL, *HYBRID, "--checkpoint-dir", d["cut"], "--checkpoint-every",
                        "5", "--max-steps", "5"]), pair, 1)
        run(parse_args([*SMALL, *HYBRID, "--checkpoint-dir", d["same"], "--resume",
                        f"{d['cut']}/{ckpt.checkpoint_name(5)}"]), pair, 1)
        pair.Free()
    comm.Barrier()
    if comm.Get_rank() == 0:
        s = run(parse_args([*SMALL, "--checkpoint-dir", d["data1"], "--resume",
                            f"{d['cut']}/{ckpt.checkpoint_name(5)}"]), MPI.COMM_SELF, 1)
        assert s["step"] == 16
    if comm.Get_size() == 4:
        run(parse_args([*SMALL, *HYBRID, "--grid", "2x2", "--checkpoint-dir", d["grid22"],
                        "--resume", f"{d['cut']}/{ckpt.checkpoint_name(5)}"]), comm, 1)
    comm.Barrier()
    if comm.Get_rank() == 0:
        straight = _final(d["straight"])
        _assert_state(_final(d["same"]), straight, exact=True)
        _assert_state(_final(d["data1"]), straight, exact=False)
        if comm.Get_size() == 4:
            _assert_state(_final(d["grid22"]), straight, exact=False)


@pytest.mark.mpi(min_size=2)
def test_data_parallel_checkpoint_resumes_under_hybrid(rank0_dir):
    """The reverse: saved by data parallelism on all ranks, resumed under hybrid (1xN, and
    2x2 on 4 ranks), equal to the uninterrupted data-parallel run."""
    comm = world()
    straight, cut, hyb = (f"{rank0_dir}/{k}" for k in ("straight", "cut", "hyb"))
    run(parse_args([*SMALL, "--checkpoint-dir", straight]), comm, 1)
    run(parse_args([*SMALL, "--checkpoint-dir", cut, "--max-steps", "6"]), comm, 1)
    grid = "2x2" if comm.Get_size() == 4 else f"1x{comm.Get_size()}"
    s = run(parse_args([*SMALL, *HYBRID, "--grid", grid, "--checkpoint-dir", hyb, "--resume",
                        f"{cut}/{ckpt.checkpoint_name(6)}"]), comm, 1)
    assert s["step"] == 16 and s["parallel"] == "hybrid"
    if comm.Get_rank() == 0:
        _assert_state(_final(hyb), _final(straight), exact=False)


@pytest.mark.mpi(min_size=2)
def test_hybrid_bad_options_fail_alike_on_every_rank():
    from hpcnn.errors import UsageError

    comm = world()
    for argv, needle in (([*HYBRID, "--grid", f"{comm.Get_size() + 1}x1"], "does not match"),
                         ([*HYBRID, "--sync", "average"], "data-parallel option")):
        with pytest.raises(UsageError, match=needle):
            run(parse_args([*SMALL, *argv]), comm, 1)
