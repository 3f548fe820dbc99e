# In-process A/B: the weight gradient's three-vector column tiles (direct.TILES3) on the layers whose tiles change.
import sys, time
import numpy as np, numba
from hpcnn.kernels import direct, isa as isa_mod
L = {"3a_5x5": (32, 16, 28, 32, 5, 2), "4a_5x5": (32, 16, 14, 48, 5, 2), "5b_5x5": (32, 48, 7, 128, 5, 2),
     "4b_3x3": (32, 112, 14, 224, 3, 1), "4d_3x3": (32, 144, 14, 288, 3, 1), "conv2_3x3": (32, 64, 56, 192, 3, 1),
     "3a_3x3": (32, 96, 28, 128, 3, 1), "4a_3x3": (32, 96, 14, 208, 3, 1)}
T = int(sys.argv[1]); numba.set_num_threads(T)
isa = isa_mod.select()
print(f"# {isa.name}, {T} thread(s): direct weight gradient ms, TILES3 off/on, best of 5 x 5 rounds alternated", flush=True)
for name in sys.argv[2:]:
    N, C, H, K, R, p = L[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32); w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    y = direct.forward(x, w, None, (1, 1), (p, p)); dy = rng.standard_normal(y.shape, dtype=np.float32)
    def f():
        return direct.backward(dy, x, w, (1, 1), (p, p), False)[1]
    res = {False: [], True: []}; outs = {}
    for _ in range(5):
        for on in (False, True):
            direct.TILES3 = on
            outs[on] = f(); ts = []
            for _ in range(5):
                t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
            res[on].append(min(ts))
    tiles = {on: [int(v) for v in (direct.__dict__.__setitem__("TILES3", on) or direct.column_tiles(C, R, isa))[:, 1]] for on in (False, True)}
    direct.TILES3 = True
    a, c = min(res[False]), min(res[True])
    err = np.abs(outs[False] - outs[True]).max() / np.abs(outs[False]).max()
    print(f"{name:9s} T={T} tiles {tiles[False]} -> {tiles[True]}: {a*1e3:.2f} -> {c*1e3:.2f} ms ({a/c:.3f}x, rel diff {err:.1e})", flush=True)
