"""The direct strategy with full tiles of ROWS rows against the AVX-512 path's own (14), forward
and backward, alternated in one process (the tile code has a variant for every height up to 14,
so no recompilation): ``python results/isa/xeon2/rows_ab.py THREADS ROWS[,ROWS...]``."""
import dataclasses
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from hpcnn.kernels import direct, isa

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ROWS = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [12]
numba.set_num_threads(T)
threadpool_limits(1)
base = isa.ISAS["avx512"]
paths = [base] + [dataclasses.replace(base, rows=r) for r in ROWS]
LAYERS = [("conv1", 100, 3, 32, 32, 5, 2), ("conv2", 100, 32, 16, 32, 5, 2),
          ("conv3", 100, 32, 8, 64, 5, 2), ("3a_5x5", 32, 16, 28, 32, 5, 2),
          ("4a_5x5", 32, 16, 14, 48, 5, 2), ("4d_5x5", 32, 32, 14, 64, 5, 2),
          ("5b_5x5", 32, 48, 7, 128, 5, 2), ("4c_3x3", 32, 128, 14, 256, 3, 1),
          ("5b_3x3", 32, 192, 7, 384, 3, 1)]
rng = np.random.default_rng(0)
for name, N, C, H, K, R, p in LAYERS:
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(np.float32)
    b = np.zeros(K, np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
    t = {i: [[], []] for i in range(len(paths))}
    for rnd in range(5):
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            direct.forward(x, w, b, (1, 1), (p, p), isa=path)
            t1 = time.perf_counter()
            direct.backward(dy, x, w, (1, 1), (p, p), True, isa=path)
            t2 = time.perf_counter()
            if rnd:
                t[i][0].append(t1 - t0)
                t[i][1].append(t2 - t1)
    best = [(min(f) * 1e3, min(bw) * 1e3) for f, bw in t.values()]
    ref = best[0][0] + best[0][1]
    line = " | ".join(f"{path.rows} rows {f:.2f} / {bw:.2f} ms ({ref / (f + bw):.2f}x)"
                      for path, (f, bw) in zip(paths, best))
    print(f"{name} {T} thread(s): {line}", flush=True)
