"""MPI parallelism through mpi4py: communicators are always passed in, never grabbed here."""

from hpcnn.parallel.data_parallel import (
    DEFAULT_BUCKET_MB,
    DataParallel,
    ParamAveraging,
    make_buckets,
    model_buckets,
)
from hpcnn.parallel.grid import ProcessGrid, blockdist
from hpcnn.parallel.runtime import agree, local_size, reduce_timing

__all__ = ["DEFAULT_BUCKET_MB", "DataParallel", "ParamAveraging", "ProcessGrid", "agree",
           "blockdist", "local_size", "make_buckets", "model_buckets", "reduce_timing"]
