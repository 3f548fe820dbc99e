"""The single source of Numba options for every kernel in hpcnn.kernels.

Kernels import ``njit`` / ``pnjit`` from here instead of passing options themselves, so that the
fast-math policy and the compile cache are decided in one place (``make lint`` greps for strays).

- ``fastmath``: only flags that keep results reproducible run to run (no ``reassoc``), so the same
  seed and thread count give the same numbers.
- ``cache``: on by default; the cache lives in ``NUMBA_CACHE_DIR`` when set (give each node its own
  on a cluster), else beside the sources (ignored by git). ``HPCNN_NUMBA_CACHE=0`` turns it off.
- ``nogil``: every kernel releases the GIL, so a Python thread can lower one chunk while another
  runs a BLAS GEMM.
"""

import os

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn"}
CACHE = os.environ.get("HPCNN_NUMBA_CACHE", "1") != "0"

njit = numba.njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
"""Serial kernel decorator."""

pnjit = numba.njit(cache=CACHE, nogil=True, fastmath=FASTMATH, parallel=True)
"""Parallel kernel decorator: loops written with ``prange`` run on Numba's threads."""

prange = numba.prange
