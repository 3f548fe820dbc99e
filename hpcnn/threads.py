"""Thread pinning: every process sets Numba's and BLAS's thread counts so ranks x threads <= cores.

Call :func:`pin_env` before numpy/numba are imported (it sets the environment variables the
libraries read at start-up), then :func:`apply` once they are imported (it limits thread pools
that already exist, through threadpoolctl).
"""

import os
import sys

_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "NUMBA_NUM_THREADS")

_limiter = None  # keeps the threadpoolctl limit alive for the life of the process


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity mask, which Slurm and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(local_ranks: int = 1) -> int:
    """The cores available to this process divided among the ranks sharing its node."""
    return max(1, available_cores() // max(1, local_ranks))


def pin_env(threads: int) -> None:
    """Set the thread-count variables read by OpenMP, OpenBLAS, MKL and Numba at import time."""
    for var in _ENV_VARS:
        if var == "NUMBA_NUM_THREADS" and "numba" in sys.modules:
            # Numba re-reads it at every compile and refuses a change once its pool runs;
            # once imported, apply() sets its count instead.
            continue
        os.environ[var] = str(threads)


def apply(threads: int) -> int:
    """Limit Numba's and BLAS's thread pools of this process to ``threads``; returns the count."""
    global _limiter
    import numba
    from threadpoolctl import threadpool_limits

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    _limiter = threadpool_limits(limits=threads)
    return threads


def current() -> dict:
    """The thread counts in force, for headers and benchmark records."""
    import numba
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')}:{i.get('num_threads')}" for i in threadpool_info()]
    return {"numba": numba.get_num_threads(), "blas": ",".join(blas) or "none"}
