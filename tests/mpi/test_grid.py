"""ProcessGrid and the small collective helpers, across ranks."""

import pytest

from hpcnn.parallel import ProcessGrid, blockdist, reduce_timing


@pytest.mark.mpi(min_size=2)
def test_pure_data_parallel_grid():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    g = ProcessGrid(comm)
    assert g.dims == (comm.Get_size(), 1)
    assert g.coords == (comm.Get_rank(), 0)  # reorder=False: rank r sits at data position r
    assert g.data_comm.Get_size() == comm.Get_size() and g.model_comm.Get_size() == 1
    assert g.data_comm.Get_rank() == comm.Get_rank()
    g.free()


@pytest.mark.mpi(min_size=2)
def test_model_axis_grid_and_compute_dims():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    size = comm.Get_size()
    g = ProcessGrid(comm, (1, size))
    assert g.data_comm.Get_size() == 1 and g.model_comm.Get_size() == size
    assert g.model_comm.allreduce(1) == size
    g.free()
    g = ProcessGrid(comm, (0, 0))
    assert g.dims[0] * g.dims[1] == size
    g.free()
    with pytest.raises(ValueError):
        ProcessGrid(comm, (size + 1, 1))


@pytest.mark.mpi(min_size=2)
def test_blockdist_shards_a_batch_across_the_data_axis():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    count, start = blockdist(11, comm.Get_size(), comm.Get_rank())
    pieces = comm.allgather(list(range(start, start + count)))
    assert sum(pieces, []) == list(range(11))


@pytest.mark.mpi(min_size=2)
def test_reduce_timing_min_mean_max_on_root():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    t = reduce_timing(comm, {"compute_s": rank + 1.0, "data_s": 2.0})
    if rank == 0:
        assert t["compute_s"] == {"min": 1.0, "mean": (size + 1) / 2, "max": float(size)}
        assert t["data_s"] == {"min": 2.0, "mean": 2.0, "max": 2.0}
    else:
        assert t is None
