"""MPI tier: ranks x threads must not exceed the cores, or every collective waits on a rank that
the OS has descheduled (and BLAS threads spin). Under ``mpiexec`` each rank takes its share of the
node's cores, as ``python -m hpcnn.train`` does; a plain serial run is left alone.
"""

import os
import shutil
import tempfile

import pytest

from hpcnn import threads

_ranks = int(os.environ.get("PMI_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", "1")))
if _ranks > 1:
    threads.apply(threads.default_threads(_ranks))  # one node: tests launch with mpiexec -n 2


@pytest.fixture
def rank0_dir():
    """A fresh folder made by rank 0 and named to all (pytest's tmp_path is not MPI-safe: every
    rank would prune old folders under the same base at once)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = comm.bcast(tempfile.mkdtemp(prefix="hpcnn-mpi-") if comm.Get_rank() == 0 else None)
    yield path
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
