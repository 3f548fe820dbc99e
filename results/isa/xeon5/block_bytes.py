# In-process A/B of winograd_fma.BLOCK_BYTES (values alternated, best of 5 x 5 rounds): forward, weight and data gradient ms.
# usage: python results/isa/xeon5/block_bytes.py THREADS BYTES,BYTES,... LAYER...
import sys, time, numpy as np, numba
from hpcnn.kernels import winograd_fma as wf, isa as isa_mod
L = {"conv2": (100, 32, 16, 32, 5, 2), "conv3": (100, 32, 8, 64, 5, 2), "3a_5x5": (32, 16, 28, 32, 5, 2), "3b_5x5": (32, 32, 28, 96, 5, 2),
     "4a_5x5": (32, 16, 14, 48, 5, 2), "4e_5x5": (32, 32, 14, 128, 5, 2), "5a_5x5": (32, 32, 7, 128, 5, 2), "4d_5x5": (32, 32, 14, 64, 5, 2), "5b_5x5": (32, 48, 7, 128, 5, 2)}
from hpcnn import threads
T = threads.apply(int(sys.argv[1])); isa = isa_mod.select()  # Numba T threads, BLAS one
vals = [int(v) for v in sys.argv[2].split(",")]
for name in sys.argv[3:]:
    N, C, H, K, R, p = L[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32); w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32); b = np.zeros(K, np.float32)
    fns = {"fwd": lambda: wf.forward(x, w, b, (1, 1), (p, p)), "wgr": lambda: wf._wgrad(dy, x, w, (p, p), isa),
           "dgr": lambda: wf._conv(dy, w, None, (R - 1 - p, R - 1 - p), isa, turned=True)}
    res = {(k, v): [] for k in fns for v in vals}
    for _ in range(5):
        for v in vals:
            wf.BLOCK_BYTES = v
            for k, f in fns.items():
                f(); ts = []
                for _ in range(5):
                    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
                res[(k, v)].append(min(ts))
    print(f"{name:7s} T={T} " + " | ".join(f"{k} " + " ".join(f"{min(res[(k, v)])*1e3:.2f}" for v in vals) for k in fns), flush=True)
