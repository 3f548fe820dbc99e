"""Data parallelism by equivalence: N ranks with global batch B give the serial result.

Run with ``mpiexec -n 2 python -m pytest --with-mpi -m mpi tests``. Every rank also computes the
serial run itself (no communicator), so the comparison needs no second launch.
"""

import numpy as np
import pytest

from hpcnn.data import load_dataset
from hpcnn.nn import NETS, build_net
from hpcnn.optim import SGD
from hpcnn.parallel import DataParallel
from hpcnn.train import train_step


def run(net, comm, steps, batch, seed=1):
    _, solver, shape = NETS[net]
    ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train=batch * steps,
                      synthetic_test=10, seed=seed)
    model = build_net(net, shape, 10, seed=seed)
    size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
    dp = DataParallel(comm, model)
    opt = SGD(model.params(), solver.lr, solver.momentum, solver.weight_decay)
    per = batch // size
    for i in range(steps):
        sl = slice(i * batch + rank * per, i * batch + (rank + 1) * per)
        train_step(model, dp, opt, ds.x_train[sl], ds.y_train[sl], solver.lr)
    return model.flat_params.copy()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("net", ["lenet5", "cifar10_quick"])
def test_n_ranks_equal_serial(net):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    batch = 4 * comm.Get_size()
    parallel = run(net, comm, steps=20, batch=batch)
    serial = run(net, None, steps=20, batch=batch)
    np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6)
    # and every rank holds the same parameters
    gathered = np.empty((comm.Get_size(), parallel.size), dtype=np.float32)
    comm.Allgather(parallel, gathered)
    assert (gathered == gathered[0]).all()


@pytest.mark.mpi(min_size=2)
def test_parameters_broadcast_from_rank_0():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    model = build_net("lenet5", (1, 28, 28), 10, seed=comm.Get_rank())  # differs per rank
    DataParallel(comm, model)
    ref = build_net("lenet5", (1, 28, 28), 10, seed=0)
    np.testing.assert_array_equal(model.flat_params, ref.flat_params)
