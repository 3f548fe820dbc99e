"""MPI parallelism through mpi4py: communicators are always passed in, never grabbed here.

Names are imported on first use (PEP 562), so that ``hpcnn.parallel.runtime`` can be imported
before the thread counts are pinned, without loading numpy's BLAS or Numba.
"""

import importlib

_WHERE = {
    "DEFAULT_BUCKET_MB": "flatbuf", "FlatGroup": "flatbuf", "make_buckets": "flatbuf",
    "DataParallel": "data_parallel", "ParamAveraging": "data_parallel",
    "model_buckets": "data_parallel",
    "Hybrid": "hybrid", "SCHEMES": "hybrid",
    "Strategy": "strategy", "CommStats": "strategy",
    "ProcessGrid": "grid", "blockdist": "grid",
    "agree": "runtime", "local_size": "runtime", "reduce_timing": "runtime",
    "build_strategy": "factory",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'hpcnn.parallel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hpcnn.parallel.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
