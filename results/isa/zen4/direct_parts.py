"""Where direct's time goes, one thread: each pass whole, and again with the tiles switched off.

A path with an id no tile case has (99) makes every tile call a no-op, so the second time is
everything but the multiply-adds (packing, moves to NCHW, bias sums, bookkeeping); the tiles'
fraction of the FMA peak is the ideal time (real multiply-adds at the peak of ``--peak``
GFLOP/s) over the difference. Run from a checkout: ``PYTHONPATH=<tree> python direct_parts.py``.
"""
import argparse
import time

import numba
import numpy as np

from hpcnn.kernels import direct
from hpcnn.kernels import isa as I

ap = argparse.ArgumentParser()
ap.add_argument("--peak", type=float, required=True, help="the FMA peak, GFLOP/s, 1 thread")
args = ap.parse_args()
numba.set_num_threads(1)
real = I.select()
none = I.Isa("none", 99, real.lanes, real.regs, real.rows, "")


def best(f, n=9):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e3


rng = np.random.default_rng(0)
LAYERS = {"conv1": (100, 3, 32, 32, 5, 2), "conv2": (100, 32, 16, 32, 5, 2),
          "conv3": (100, 32, 8, 64, 5, 2)}
print(f"path {real.name}, peak {args.peak} GFLOP/s; ms, best of 9")
for name, (N, C, H, K, R, pad) in LAYERS.items():
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32) * 0.1
    b = np.zeros(K, np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
    st, pd = (1, 1), (pad, pad)
    ideal = 2 * direct.real_macs(x.shape, w.shape, st, pd) / (args.peak * 1e9) * 1e3
    for label, run in (("forward", lambda p: direct._forward(x, w, b, st, pd, p)),
                       ("wgrad", lambda p: direct.backward(dy, x, w, st, pd, False, isa=p))):
        whole, rest = best(lambda: run(real)), best(lambda: run(none))
        print(f"{name} {label:8s} {whole:7.2f}  without tiles {rest:6.2f}  ideal {ideal:6.2f}"
              f"  tiles at {100 * ideal / (whole - rest):3.0f}% of the peak")
