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
    """Give this process ``threads`` threads of compute; returns the count.

    Numba gets ``threads`` threads, and so does any other OpenMP pool; BLAS gets ONE. The kernels
    parallelize over Numba threads and call BLAS single-threaded inside them, and the two kernels
    that want a multi-threaded GEMM (plain lowering, the pipelined compute role) raise BLAS's
    count around their own calls. A BLAS pool left at ``threads`` spins its threads for a while
    after every call, against Numba's: measured at 2 threads on 2 cores, cifar10_quick trained
    at 571 img/s that way and 1,053 img/s with BLAS on one thread (LeNet-5 1,104 and 3,836).
    """
    global _limiter
    import numba
    from threadpoolctl import threadpool_limits

    from hpcnn.kernels import _native

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    # without numpy's OpenBLAS bound (no per-call switching), BLAS keeps every thread
    blas = 1 if _native.GEMM else threads
    _limiter = (threadpool_limits(limits=blas, user_api="blas"),
                threadpool_limits(limits=threads, user_api="openmp"))
    return threads


def current() -> dict:
    """The thread counts in force, for headers and benchmark records."""
    import numba
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')}:{i.get('num_threads')}" for i in threadpool_info()]
    return {"numba": numba.get_num_threads(), "blas": ",".join(blas) or "none"}
