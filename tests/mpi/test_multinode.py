"""Multi-node code paths, run for real when the ranks span several hosts (the emulated cluster of
jobs/cluster-local.sh, or a real one); skipped when every rank runs on one host.

tests/test_cluster_local.py runs this file (with the equivalence tests) on 2 emulated nodes.
"""

import os

import pytest


def _hosts():
    from mpi4py import MPI

    return MPI.COMM_WORLD.allgather(MPI.Get_processor_name())


def _multinode():
    return len(set(_hosts())) > 1


@pytest.mark.mpi(min_size=2)
def test_ranks_per_node_come_from_the_shared_memory_split():
    from mpi4py import MPI

    from hpcnn.parallel.runtime import local_size

    hosts = _hosts()
    if len(set(hosts)) == 1:
        pytest.skip("every rank runs on one host")
    comm = MPI.COMM_WORLD
    me = hosts[comm.Get_rank()]
    assert local_size(comm) == hosts.count(me)


@pytest.mark.mpi(min_size=2)
def test_threads_per_rank_follow_the_nodes_cores():
    from mpi4py import MPI

    from hpcnn import threads
    from hpcnn.parallel.runtime import local_size

    if not _multinode():
        pytest.skip("every rank runs on one host")
    comm = MPI.COMM_WORLD
    cores = threads.available_cores()
    # every rank of a node sees the node's cores, and takes its share of them
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        assert node.allgather(cores) == [cores] * node.Get_size()
    finally:
        node.Free()
    if os.environ.get("HPCNN_CLUSTER"):  # the emulated cluster pins each node to its CPUs
        assert cores == len(os.sched_getaffinity(0))
    assert threads.default_threads(local_size(comm)) == max(1, cores // local_size(comm))


@pytest.mark.mpi(min_size=2)
def test_data_shards_are_disjoint_across_nodes():
    import numpy as np
    from mpi4py import MPI

    from hpcnn.data import load_dataset

    if not _multinode():
        pytest.skip("every rank runs on one host")
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    ds = load_dataset("synthetic", synthetic_shape=(1, 8, 8), synthetic_train=64,
                      synthetic_test=8, seed=3)
    per = 64 // size
    mine = ds.x_train[rank * per:(rank + 1) * per]
    # every rank generated the same data (same seed) wherever it runs; its slice is its own
    digest = np.array([float(ds.x_train.sum()), float(mine.sum())])
    table = np.empty((size, 2)) if rank == 0 else None
    comm.Gather(digest, table, root=0)
    if rank == 0:
        assert np.allclose(table[:, 0], table[0, 0])
        assert np.isclose(table[:, 1].sum(), table[0, 0], rtol=1e-6)
