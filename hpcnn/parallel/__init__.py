"""MPI parallelism through mpi4py: communicators are always passed in, never grabbed here."""

from hpcnn.parallel.data_parallel import DataParallel
from hpcnn.parallel.runtime import agree, local_size

__all__ = ["DataParallel", "agree", "local_size"]
