"""The compile cache of hpcnn's kernels (hpcnn.kernels._jit): a cached kernel is stamped with the
hash of its own file and of the files whose generated code it inlines (the register tiles), so
that a change to a tile alone recompiles the kernels that use it."""

import subprocess
import sys

import numpy as np
import pytest

from hpcnn.kernels import _jit, direct


def _locator(kernel):
    cache = getattr(kernel, "_cache", None)
    if cache is None or not hasattr(cache, "_impl"):
        pytest.skip("caching is off (HPCNN_NUMBA_CACHE=0)")
    return cache._impl.locator


def test_kernel_stamp_includes_the_generators(monkeypatch):
    assert _jit.LOCATORS, "Numba's caching module changed: the generator stamp is not in force"
    direct._some_empty(np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64))
    loc = _locator(direct._some_empty)
    assert type(loc).__name__.startswith("Hpcnn")
    own, gen = loc.get_source_stamp()
    assert gen == _jit.generators_hash() and len(gen) == 32
    monkeypatch.setattr(_jit, "generators_hash", lambda: b"another tile")
    assert loc.get_source_stamp() == (own, b"another tile")  # a changed tile: a new stamp


def test_other_files_keep_numba_stamps(tmp_path):
    """A function outside hpcnn gets Numba's own locator and stamp, even with hpcnn imported."""
    mod = tmp_path / "elsewhere.py"
    mod.write_text("import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import hpcnn.kernels._jit\n"
            "import elsewhere; elsewhere.f(1)\n"
            "loc = elsewhere.f._cache._impl.locator\n"
            "print(type(loc).__name__, isinstance(loc.get_source_stamp(), bytes))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out[0] in ("InTreeCacheLocator", "UserProvidedCacheLocator") and out[1] == "True"
