# In-process A/B of direct.BLOCK (output pixels per forward block) on the forward and the data gradient.
import sys, time
import numpy as np, numba
from hpcnn.kernels import direct, isa as isa_mod
L = {"conv2": (100, 32, 16, 32, 5, 2), "conv3": (100, 32, 8, 64, 5, 2), "3a_5x5": (32, 16, 28, 32, 5, 2),
     "4a_5x5": (32, 16, 14, 48, 5, 2), "4d_5x5": (32, 32, 14, 64, 5, 2), "3b_5x5": (32, 32, 28, 96, 5, 2),
     "5a_3x3": (32, 160, 7, 320, 3, 1), "5b_3x3": (32, 192, 7, 384, 3, 1), "5a_5x5": (32, 32, 7, 128, 5, 2),
     "4a_3x3": (32, 96, 14, 208, 3, 1), "5b_5x5": (32, 48, 7, 128, 5, 2), "4e_5x5": (32, 32, 14, 128, 5, 2),
     "conv1": (100, 3, 32, 32, 5, 2), "4c_5x5": (32, 24, 14, 64, 5, 2)}
T = int(sys.argv[1]); numba.set_num_threads(T)
isa = isa_mod.select()
BL = (512, 1024, 2048)
print(f"# {isa.name}, {T} thread(s): direct forward and data gradient ms at BLOCK = {BL}, best of 5 x 5 rounds alternated", flush=True)
for name in sys.argv[2:]:
    N, C, H, K, R, p = L[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32); w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    b = np.zeros(K, np.float32)
    y = direct.forward(x, w, b, (1, 1), (p, p)); dy = rng.standard_normal(y.shape, dtype=np.float32)
    W = x.shape[3]
    fns = {"fwd": lambda: direct.forward(x, w, b, (1, 1), (p, p)),
           "dgrad": lambda: direct._data_grad(dy, w, (R - 1 - p, R - 1 - p), W, isa)}
    res = {(k, bl): [] for k in fns for bl in BL}
    for _ in range(5):
        for bl in BL:
            direct.BLOCK = bl
            for k, f in fns.items():
                f(); ts = []
                for _ in range(5):
                    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
                res[(k, bl)].append(min(ts))
    out = []
    for k in fns:
        base = min(res[(k, 512)])
        out.append(k + " " + " ".join(f"{bl}:{min(res[(k, bl)])*1e3:.2f}({base/min(res[(k, bl)]):.3f}x)" for bl in BL))
    print(f"{name:7s} T={T} " + " | ".join(out), flush=True)
