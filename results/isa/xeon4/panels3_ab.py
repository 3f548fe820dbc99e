# In-process A/B: direct's three-vector panels (PANELS3) on the layers whose panels change; forward and data gradient.
import sys, time
import numpy as np, numba
from hpcnn.kernels import direct, isa as isa_mod
L = {"4a_5x5": (32, 16, 14, 48, 5, 2), "4a_3x3": (32, 96, 14, 208, 3, 1), "5b_5x5": (32, 48, 7, 128, 5, 2),
     "4b_3x3": (32, 112, 14, 224, 3, 1), "4d_3x3": (32, 144, 14, 288, 3, 1)}
T = int(sys.argv[1]); numba.set_num_threads(T)
isa = isa_mod.select()
print(f"# {isa.name}, {T} thread(s): direct forward and data gradient ms, PANELS3 off/on, best of 5 x 5 rounds alternated", flush=True)
for name in sys.argv[2:]:
    N, C, H, K, R, p = L[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32); w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    b = np.zeros(K, np.float32)
    y = direct.forward(x, w, b, (1, 1), (p, p)); dy = rng.standard_normal(y.shape, dtype=np.float32)
    W = x.shape[3]
    fns = {"fwd": lambda: direct.forward(x, w, b, (1, 1), (p, p)),
           "dgrad": lambda: direct._data_grad(dy, w, (R - 1 - p, R - 1 - p), W, isa)}
    outs = {}
    res = {(k, on): [] for k in fns for on in (False, True)}
    for _ in range(5):
        for on in (False, True):
            direct.PANELS3 = on
            for k, f in fns.items():
                outs[(k, on)] = f(); ts = []
                for _ in range(5):
                    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
                res[(k, on)].append(min(ts))
    txt = []
    for k in fns:
        a, c = min(res[(k, False)]), min(res[(k, True)])
        err = np.abs(outs[(k, False)] - outs[(k, True)]).max() / np.abs(outs[(k, False)]).max()
        txt.append(f"{k} panels {[int(v) for v in direct._panels(K if k == 'fwd' else C, isa)]}: {a*1e3:.2f} -> {c*1e3:.2f} ({a/c:.3f}x, rel diff {err:.1e})")
    direct.PANELS3 = False; p0 = list(direct._panels(K, isa)); direct.PANELS3 = True
    print(f"{name:7s} T={T} " + " | ".join(txt), flush=True)
