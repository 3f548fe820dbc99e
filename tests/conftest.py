"""Every test process keeps the convolution autotuner's choices in its own temporary file, never
in the user's cache (subprocesses inherit it through the environment)."""

import os
import shutil
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_autotune_cache():
    if "HPCNN_AUTOTUNE_CACHE" in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="hpcnn-autotune-")  # per process: MPI-safe
    os.environ["HPCNN_AUTOTUNE_CACHE"] = os.path.join(folder, "autotune.json")
    yield
    os.environ.pop("HPCNN_AUTOTUNE_CACHE", None)
    shutil.rmtree(folder, ignore_errors=True)
