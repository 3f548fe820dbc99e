"""The single source of Numba options for every kernel in hpcnn.kernels.

Kernels import ``njit`` / ``pnjit`` from here instead of passing options themselves, so that the
fast-math policy and the compile cache are decided in one place (``make lint`` greps for strays).

- ``fastmath``: only flags that keep results reproducible run to run (no ``reassoc``), so the same
  seed and thread count give the same numbers.
- ``cache``: on by default; the cache lives in ``NUMBA_CACHE_DIR`` when set (give each node its own
  on a cluster), else beside the sources (ignored by git). ``HPCNN_NUMBA_CACHE=0`` turns it off.
- ``nogil``: every kernel releases the GIL, so a Python thread can lower one chunk while another
  runs a BLAS GEMM.

Numba stamps a cached kernel with the hash of the file that defines it, and nothing else. But the
kernels of ``direct``, ``nhwc`` and ``peak`` inline code that :mod:`~._fma` generates as LLVM IR
for the paths :mod:`~.isa` describes: a change to those two files alone (a fixed tile, a pull
that touches only them) would leave every cached kernel running the old tile, silently. So the
cache locators of hpcnn's own files add the hash of those generator files to the stamp
(:data:`GENERATORS`): a changed generator recompiles every kernel once.
"""

import functools
import hashlib
import os

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn"}
CACHE = os.environ.get("HPCNN_NUMBA_CACHE", "1") != "0"

njit = numba.njit(cache=CACHE, nogil=True, fastmath=FASTMATH)
"""Serial kernel decorator."""

pnjit = numba.njit(cache=CACHE, nogil=True, fastmath=FASTMATH, parallel=True)
"""Parallel kernel decorator: loops written with ``prange`` run on Numba's threads."""

prange = numba.prange


GENERATORS = ("_fma.py", "_wtrans.py", "isa.py")
"""Files of this folder whose generated code the kernels inline (see the module docstring)."""
_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE = os.path.dirname(_HERE)


@functools.lru_cache(maxsize=1)
def generators_hash():
    """sha256 over the generator files' bytes."""
    h = hashlib.sha256()
    for name in GENERATORS:
        with open(os.path.join(_HERE, name), "rb") as f:
            h.update(f.read())
    return h.digest()


def _with_generators(base):
    """Numba's locator ``base``, for hpcnn's files only, with :func:`generators_hash` in the
    source stamp."""

    class Locator(base):
        def get_source_stamp(self):
            return super().get_source_stamp(), generators_hash()

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(_PACKAGE + os.sep):
                return None
            return super().from_function(py_func, py_file)

    Locator.__name__ = Locator.__qualname__ = "Hpcnn" + base.__name__
    return Locator


def _install_locators():
    """Put the two locators hpcnn's files use (a NUMBA_CACHE_DIR, else beside the sources) first
    in Numba's list, stamped as above; with a Numba whose caching module differs, its own
    locators stay (stamped by the defining file only)."""
    try:
        from numba.core import caching

        classes = caching.CacheImpl._locator_classes
        bases = (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator)
    except (ImportError, AttributeError):
        return False
    if not any(c.__name__.startswith("Hpcnn") for c in classes):
        classes[:0] = [_with_generators(b) for b in bases]
    return True


LOCATORS = _install_locators()
"""Whether the generator-stamped cache locators are in force."""
