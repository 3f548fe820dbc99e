"""Keep freed memory in the process instead of handing it back to the kernel after every step.

glibc's malloc serves large blocks (128 KiB and up, a threshold it raises as such blocks are
freed) with fresh mmap()s and trims the top of its heap when much is free there. A training step
allocates and frees the same few-MiB arrays over and over (activations, gradients, a
convolution's packed weights and scratch), in an order that keeps tripping those rules: the
pages are unmapped and faulted in again, zeroed by the kernel, on every call. Measured on a
2-vCPU VM (AMD Zen 4): one GoogLeNet 5a_5x5 backward of 2 images took 4.2-5.2 ms instead of
0.5-0.7 ms once forwards had run before it, with about 780 page faults per call.

:func:`retain` sets glibc's mmap threshold to its largest value (32 MiB) and its trim threshold to
256 MiB, so that such blocks are reused in place. ``import hpcnn`` calls it once. It does nothing
where the C library has no ``mallopt`` (musl, macOS), where the user tunes malloc through the
environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``), or
with ``HPCNN_RETAIN_HEAP=0``.
"""

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound on 64-bit
TRIM_THRESHOLD = 256 << 20
USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def retain():
    """Set the thresholds; True when both were set."""
    if os.environ.get("HPCNN_RETAIN_HEAP", "1") == "0" or any(v in os.environ for v in USER_VARS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


PEER_HEAP = ("as-shipped", "retained")
"""How the benchmarks run PyTorch's processes (``--torch-heap``): with the C library's malloc as
PyTorch's users get it (default: the worker imports the hpcnn package, so hpcnn's policy is
switched off there), or with hpcnn's retained heap as well."""


def peer_env(env, policy):
    """``env`` (a dict, changed and returned) for a PyTorch worker under ``policy``."""
    if policy == "as-shipped":
        env["HPCNN_RETAIN_HEAP"] = "0"
    return env


def add_option(parser):
    """The benchmarks' ``--torch-heap`` option."""
    parser.add_argument("--torch-heap", choices=PEER_HEAP, default="as-shipped",
                        help="PyTorch's processes with the C library's malloc as shipped "
                             "(default), or with hpcnn's retained heap (hpcnn.heap) as well")
