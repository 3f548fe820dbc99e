"""In-process A/B of winograd_fma.WGRAD_MIN_VECTORS (the weight gradient on the tiles from one
vector of input channels, or "direct"'s below two), alternated: THREADS LAYER... (name:N,C,H,K,m).
Run on its first form (an int, toggled 2/1) at commit c9f5fbc + the F(2x2, 3x3) tiles:
  for t in 1 2; do python results/isa/xeon6/wgrad_vectors_ab.py $t 3a_5x5:32,16,28,32,4 \
    3a_5x5:32,16,28,32,2 4a_5x5:32,16,14,48,4 4a_5x5:32,16,14,48,2; done
"""
import sys
import time

import numpy as np

from hpcnn import threads

T = int(sys.argv[1])
threads.apply(T)
from hpcnn.kernels import winograd_fma  # noqa: E402

rng = np.random.default_rng(0)
for spec in sys.argv[2:]:
    name, dims = spec.split(":")
    N, C, H, K, m = (int(v) for v in dims.split(","))
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((K, C, 5, 5)) / np.sqrt(25 * C)).astype(np.float32)
    dy = rng.standard_normal((N, K, H, H)).astype(np.float32)
    best = {}
    for rnd in range(7):
        for v in (2, 1):
            winograd_fma.WGRAD_MIN_VECTORS = {(m, 5): v}
            t = time.perf_counter()
            winograd_fma.backward(dy, x, w, (1, 1), (2, 2), m, input_grad=False)
            dt = time.perf_counter() - t
            if rnd:
                best.setdefault(v, []).append(dt)
    med = {v: float(np.median(ts)) * 1e3 for v, ts in best.items()}
    print(f"{name} m={m} threads={T}: weight gradient, direct's (2 vectors) {med[2]:.2f} ms, "
          f"tiles (1 vector) {med[1]:.2f} ms: {med[2] / med[1]:.2f}x", flush=True)
