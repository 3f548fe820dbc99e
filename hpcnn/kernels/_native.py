"""Native functions that Numba kernels call through pointers, and two tiny LLVM intrinsics.

Why: a chunked convolution makes a few BLAS calls per chunk, hundreds per layer. Made from Python,
each ``np.dot`` costs microseconds of interpreter time and cannot accumulate (``beta = 1``) or
write into a strided block. So the chunk loops run inside Numba and call the ``cblas_?gemm`` of
the OpenBLAS that numpy itself loaded, passed in as a ctypes function (a run-time argument, so the
kernels stay cacheable). Nothing is compiled or downloaded: when numpy's BLAS is not an OpenBLAS
with a CBLAS interface, :data:`GEMM` is ``{}`` and the strategies that need it are not offered.

- :data:`GEMM` maps a dtype to its ctypes ``cblas_sgemm`` / ``cblas_dgemm``;
  ``gemm(ROW_MAJOR, NO_TRANS|TRANS, NO_TRANS|TRANS, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)``.
- :func:`blas_threads` / :func:`set_blas_threads`: OpenBLAS's process-wide thread count (cheap
  enough to switch around one layer call; threadpoolctl's context manager is not).
- :data:`CLOCK`: libc ``clock_gettime`` (``CLOCK_MONOTONIC``, the clock of
  ``time.perf_counter_ns``), so kernels can time their phases for :mod:`hpcnn.profile`.
- :func:`atomic_load` / :func:`atomic_store` / :func:`atomic_add` / :func:`cpu_relax`: acquire /
  release accesses to an int64 array cell, for the hand-off flags between the two roles of the
  pipelined convolution (a plain load in a spin loop may be hoisted out of it by LLVM).
"""

import ctypes
import ctypes.util
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
CLOCK_MONOTONIC = 1

GEMM = {}
"""dtype -> ctypes cblas gemm of numpy's OpenBLAS ({} when there is none)."""

_set_threads = _get_threads = None
BLAS_INFO = "none"


def _numpy_openblas():
    """Path of the OpenBLAS shared library numpy uses, or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    found = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
    found.sort(key=lambda i: "numpy" not in i.get("filepath", ""))  # numpy's own first
    return found[0]["filepath"] if found else None


def _bind():
    global _set_threads, _get_threads, BLAS_INFO
    path = _numpy_openblas()
    if path is None:
        return
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return
    # (symbol suffix, integer type): numpy's wheels ship ILP64 OpenBLAS with a scipy_ prefix
    for prefix, suffix, idx in (("scipy_", "64_", ctypes.c_int64), ("", "64_", ctypes.c_int64),
                                ("", "", ctypes.c_int)):
        names = {d: f"{prefix}cblas_{c}gemm{suffix}" for d, c in ((np.float32, "s"),
                                                                  (np.float64, "d"))}
        if not all(hasattr(lib, n) for n in names.values()):
            continue
        for dtype, name in names.items():
            real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
            f = getattr(lib, name)
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, idx, idx, idx, real,
                          ctypes.c_void_p, idx, ctypes.c_void_p, idx, real, ctypes.c_void_p, idx]
            f.restype = None
            GEMM[np.dtype(dtype)] = f
        for set_name, get_name in ((f"{prefix}openblas_set_num_threads{suffix}",
                                    f"{prefix}openblas_get_num_threads{suffix}"),
                                   ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                _set_threads = getattr(lib, set_name)
                _set_threads.argtypes, _set_threads.restype = [ctypes.c_int], None
                _get_threads = getattr(lib, get_name)
                _get_threads.argtypes, _get_threads.restype = [], ctypes.c_int
                break
        BLAS_INFO = f"{path} ({names[np.float32]})"
        return


_bind()


def blas_threads():
    """OpenBLAS's current thread count (1 when it cannot be read)."""
    return int(_get_threads()) if _get_threads is not None else 1


def set_blas_threads(n):
    """Set OpenBLAS's process-wide thread count (a no-op without the binding)."""
    if _set_threads is not None:
        _set_threads(int(n))


def _bind_clock():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        f = libc.clock_gettime
    except (OSError, AttributeError):
        return None
    f.argtypes, f.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_int
    return f


CLOCK = _bind_clock()
"""ctypes ``clock_gettime(clk_id, struct timespec *)``, or None."""


# ---------------------------------------------------------------------------------------------
# atomics on int64 array cells (LLVM intrinsics; cached with the kernels that use them)


def _int64_vector(arr):
    """The intrinsics below type only for a 1-D int64 array (None otherwise: no match)."""
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


def _cell_pointer(context, builder, aryty, ary, idx):
    ary = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx])


@intrinsic
def atomic_load(typingctx, arr, idx):
    """arr[idx] read with acquire ordering (arr: 1-D int64)."""
    if not _int64_vector(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def atomic_store(typingctx, arr, idx, val):
    """arr[idx] = val with release ordering (arr: 1-D int64)."""
    if not _int64_vector(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(v, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, val), codegen


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """Atomically add val to arr[idx]; returns the old value (sequentially consistent)."""
    if not _int64_vector(arr):
        return None

    def codegen(context, builder, sig, args):
        ptr = _cell_pointer(context, builder, sig.args[0], args[0], args[1])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return types.int64(arr, idx, val), codegen


_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def cpu_relax(typingctx):
    """The spin-wait hint (x86 ``pause``); nothing on other CPUs."""

    def codegen(context, builder, sig, args):
        if _IS_X86:  # the intrinsic, not inline asm: Numba's code emitter has no asm parser
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen
