"""The scaling study under MPI: ``point`` writes one well-formed row, and the model's bytes per
collective kind equal what the strategies themselves count (``Strategy.bytes_per_step``).

Run under ``mpiexec -n 2`` and ``-n 4``."""

import os
from functools import partial

import pytest

from hpcnn.nn import NETS, build_net
from hpcnn.optim import SGD
from hpcnn.parallel import build_strategy, watchdog
from hpcnn.scaling import csvio, point
from hpcnn.scaling.model import NetShape, predict_bytes

pytestmark = pytest.mark.mpi


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.mark.parametrize("parallel,scheme", [("data", None), ("hybrid", "b")])
def test_point_writes_one_row(rank0_dir, parallel, scheme):
    comm = world()
    path = os.path.join(rank0_dir, "points.csv")
    argv = ["--net", "lenet5", "--parallel", parallel, "--batch-per-rank", "4", "--steps", "2",
            "--warmup", "1", "--seed", "3", "--link", "shm", "--csv", path]
    if scheme:
        argv += ["--scheme", scheme]
    assert point.main(argv) == 0
    assert not watchdog.running()  # the point stops the watchdog it started: the next test's peers
    comm.Barrier()
    if comm.Get_rank() == 0:
        (row,) = csvio.read_rows(path)
        size = comm.Get_size()
        assert (row["nodes"], row["ranks"], row["ranks_per_node"]) == (1, size, size)
        assert (row["net"], row["parallel"], row["batch_per_rank"]) == ("lenet5", parallel, 4)
        assert row["global_batch"] == 4 * size and row["seed"] == 3 and row["link"] == "shm"
        assert row["scheme"] == (scheme or "") and row["images_per_s"] > 0
        for t in ("step_s", "compute_s", "wait_s"):
            assert 0 <= row[f"{t}_min"] <= row[f"{t}_mean"] <= row[f"{t}_max"]
        assert row["bytes_total"] == pytest.approx(sum(row[f"bytes_{k}"] for k in csvio.KINDS))
        assert row["bytes_total"] > 0
        assert row["command"].startswith("python -m hpcnn.scaling point --net lenet5")


GRIDS = [(None, "data", None), ((1, 0), "hybrid", "a"), ((1, 0), "hybrid", "b"),
         ((1, 0), "hybrid", "c"), ((2, 0), "hybrid", "a"), ((0, 1), "hybrid", "c")]


@pytest.mark.parametrize("grid,parallel,scheme", GRIDS)
@pytest.mark.parametrize("batch_per_rank", [3, 8])
def test_model_bytes_equal_strategy_bytes(grid, parallel, scheme, batch_per_rank):
    comm = world()
    size = comm.Get_size()
    dims = None
    if grid is not None:  # 0: the rest of the ranks
        d, m = grid
        d, m = (d, size // d) if m == 0 else (size // m, m)
        if d * m != size or d < 1 or m < 1:
            pytest.skip(f"grid {grid} needs another rank count")
        dims = (d, m)
    shape = NETS["owt_cifar"][2]
    shape_model = NetShape(build_net("owt_cifar", shape, 10, seed=0, narrow=32))
    model = build_net("owt_cifar", shape, 10, seed=0, narrow=32, algo="lowering")
    st = build_strategy(comm, model, partial(SGD, lr=0.01), parallel=parallel, grid=dims,
                        scheme=scheme)
    want = {k: int(v) for k, v in st.bytes_per_step(batch_per_rank * size).items() if v}
    got = {k: v for k, v in predict_bytes(shape_model, parallel, size, batch_per_rank, dims,
                                          scheme or "a").items() if v}
    if comm.Get_rank() == 0:
        assert got == want
