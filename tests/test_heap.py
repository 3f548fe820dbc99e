"""hpcnn.heap: freed arrays stay in the process (no page faults step after step)."""

import os
import subprocess
import sys

import pytest

from hpcnn import heap

# A step that allocates and frees a few MiB-sized arrays in an order that makes glibc's malloc
# unmap and fault them in again; the page faults of 20 steps after one warm-up step.
STEP = r"""
import resource
import hpcnn, numpy as np
def step():
    a = np.ones(3 << 18, np.float32)
    b = np.ones(1 << 18, np.float32)
    c = np.ones(5 << 18, np.float32)
    del b, a
    d = np.ones(2 << 18, np.float32)
    del c, d
step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(hpcnn.RETAINED_HEAP, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)
"""


def _faults(**env):
    run_env = {k: v for k, v in os.environ.items() if k not in heap.USER_VARS}
    run_env.pop("HPCNN_RETAIN_HEAP", None)
    run_env.update(env)
    out = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True,
                         env=run_env, timeout=120, check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_import_retains_the_heap_and_the_opt_outs_are_honoured():
    retained, faults = _faults()
    if not retained:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert faults < 1, f"{faults} page faults per step with the heap retained"
    for env in ({"HPCNN_RETAIN_HEAP": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}):
        retained, faults = _faults(**env)
        assert not retained, env
        assert faults >= 1, (env, faults)  # glibc's own policy: the pages come and go


def test_peer_env_switches_hpcnn_policy_off_for_pytorch_as_shipped():
    assert heap.peer_env({}, "as-shipped") == {"HPCNN_RETAIN_HEAP": "0"}
    assert heap.peer_env({"X": "1"}, "retained") == {"X": "1"}
