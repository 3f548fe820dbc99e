# In-process A/B of a winograd_fma block setting (values alternated, best of 5 x 5 rounds): ms of the passes named.
# usage: python results/isa/xeon5/block_ab.py THREADS ATTR=V1,V2,... PASSES LAYER...  (PASSES: some of fwd,wgr,dgr)
# wgrad_min_tiles.log: ... WGRAD_MIN_TILES=1,64 wgr ...; block_bytes.log came from this script's first form
# (git show f313e9f:results/isa/xeon5/block_bytes.py: BLOCK_BYTES, all three passes, BLAS not pinned).
import sys, time, numpy as np, numba
from hpcnn.kernels import winograd_fma as wf, isa as isa_mod
L = {"conv2": (100, 32, 16, 32, 5, 2), "conv3": (100, 32, 8, 64, 5, 2), "3a_5x5": (32, 16, 28, 32, 5, 2), "3b_5x5": (32, 32, 28, 96, 5, 2),
     "4a_5x5": (32, 16, 14, 48, 5, 2), "4e_5x5": (32, 32, 14, 128, 5, 2), "5a_5x5": (32, 32, 7, 128, 5, 2), "4d_5x5": (32, 32, 14, 64, 5, 2), "5b_5x5": (32, 48, 7, 128, 5, 2),
     "4b_3x3": (32, 112, 14, 224, 3, 1), "4e_3x3": (32, 160, 14, 320, 3, 1), "3a_3x3": (32, 96, 28, 128, 3, 1),
     "5a_3x3": (32, 160, 7, 320, 3, 1)}
from hpcnn import threads
T = threads.apply(int(sys.argv[1])); isa = isa_mod.select()  # Numba T threads, BLAS one
attr, vals = sys.argv[2].split("=")
vals = [int(v) for v in vals.split(",")]
for name in sys.argv[4:]:
    N, C, H, K, R, p = L[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32); w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32); b = np.zeros(K, np.float32)
    fns = {"fwd": lambda: wf.forward(x, w, b, (1, 1), (p, p)), "wgr": lambda: wf._wgrad(dy, x, w, (p, p), isa),
           "dgr": lambda: wf._conv(dy, w, None, (R - 1 - p, R - 1 - p), isa, turned=True)}
    fns = {k: f for k, f in fns.items() if k in sys.argv[3].split(",")}
    res = {(k, v): [] for k in fns for v in vals}
    for _ in range(5):
        for v in vals:
            setattr(wf, attr, v)
            for k, f in fns.items():
                f(); ts = []
                for _ in range(5):
                    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
                res[(k, v)].append(min(ts))
    print(f"{name:7s} T={T} " + " | ".join(f"{k} " + " ".join(f"{min(res[(k, v)])*1e3:.2f}" for v in vals) for k in fns), flush=True)
