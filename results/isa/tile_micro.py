"""The register tile alone, on data in L1/L2: its fraction of the FMA peak by shape.

``python results/isa/tile_micro.py [avx512|avx2|generic]`` (default: the host's widest path).
Prints ``L nseg rows: percent`` for a full-width (two-vector) tile adding L steps of nseg
segments into its accumulators, A rows 300 floats apart, B read from a 20-128 KiB panel.
"""
import sys
import time

import numpy as np
from numba import njit

from hpcnn import threads
from hpcnn.kernels import isa as I
from hpcnn.kernels import peak
from hpcnn.kernels._fma import tile

threads.apply(1)
path = I.select(sys.argv[1] if len(sys.argv) > 1 else None)
W = path.widths[0]


@njit(nogil=True)
def run(reps, isa_id, width, A, aoffs, B, out, ooffs, L, nseg, mr):
    for _ in range(reps):
        tile(isa_id, 2, mr, A, 0, aoffs, 256, 0, B, 0, 0, 0, width, 1, nseg, L, out, 0, ooffs, 1)


A = np.random.rand(20000).astype(np.float32)
B = np.random.rand(40000).astype(np.float32)
out = np.zeros(path.rows * W + 64, np.float32)
pk = peak.fma_peak(path)
print(f"path {path.name}: tile {path.rows} x {W}, FMA peak {pk:.1f} GFLOP/s (1 thread)")
aoffs = (np.arange(path.rows) * 300).astype(np.int64)
ooffs = (np.arange(path.rows) * W).astype(np.int64)
for L, nseg in [(160, 1), (1000, 1), (32, 5), (15, 5)]:
    for mr in sorted({path.rows, path.rows - 2, path.rows // 2 + 1}, reverse=True):
        run(1, path.id, W, A, aoffs, B, out, ooffs, L, nseg, mr)
        flops = L * nseg * mr * W * 2
        reps = max(1, int(2e8 / flops))
        t = time.perf_counter()
        run(reps, path.id, W, A, aoffs, B, out, ooffs, L, nseg, mr)
        dt = time.perf_counter() - t
        print(f"{L} {nseg} {mr}: {100 * reps * flops / dt / 1e9 / pk:.0f}%")
