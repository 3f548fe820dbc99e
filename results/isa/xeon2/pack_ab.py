"""direct's forward and backward with the weights packed by the NumPy transpose and copy of
commit 6bdd89c against the parallel packing kernel (direct._pack_panels), alternated in one
process: ``python results/isa/xeon2/pack_ab.py THREADS [LAYER,...]``."""
import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from hpcnn.kernels import direct

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
numba.set_num_threads(T)
threadpool_limits(1)


def numpy_pack(w, isa):
    """_pack_weights as of 6bdd89c."""
    K, C, R, S = w.shape
    RSC = R * S * C
    wt = w.transpose(2, 3, 1, 0).reshape(RSC, K)
    widths = direct._panels(K, isa)
    offsets = np.zeros(len(widths), dtype=np.int64)
    out = np.zeros(RSC * int(widths.sum()), dtype=w.dtype)
    k0 = 0
    for p, width in enumerate(widths):
        offsets[p] = RSC * k0
        kn = min(int(width), K - k0)
        out[offsets[p]:offsets[p] + RSC * width].reshape(RSC, width)[:, :kn] = wt[:, k0:k0 + kn]
        k0 += int(width)
    return out, widths, offsets


LAYERS_ALL = [("conv2", 100, 32, 16, 32, 5, 2), ("conv3", 100, 32, 8, 64, 5, 2),
          ("4a_3x3", 32, 96, 14, 208, 3, 1), ("4c_3x3", 32, 128, 14, 256, 3, 1),
          ("4e_3x3", 32, 160, 14, 320, 3, 1), ("5a_3x3", 32, 160, 7, 320, 3, 1),
          ("5b_3x3", 32, 192, 7, 384, 3, 1), ("4e_5x5", 32, 32, 14, 128, 5, 2),
          ("5b_5x5", 32, 48, 7, 128, 5, 2)]
LAYERS = [lay for lay in LAYERS_ALL if len(sys.argv) < 3 or lay[0] in sys.argv[2].split(",")]
kernel_pack = direct._pack_weights
rng = np.random.default_rng(0)
for name, N, C, H, K, R, p in LAYERS:
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((K, C, R, R)) / np.sqrt(C * R * R)).astype(np.float32)
    b = np.zeros(K, np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
    t = {"numpy": [[], []], "kernel": [[], []]}
    for rnd in range(6):
        for mode in t:
            direct._pack_weights = kernel_pack if mode == "kernel" else numpy_pack
            t0 = time.perf_counter()
            direct.forward(x, w, b, (1, 1), (p, p))
            t1 = time.perf_counter()
            direct.backward(dy, x, w, (1, 1), (p, p), True)
            t2 = time.perf_counter()
            if rnd:
                t[mode][0].append(t1 - t0)
                t[mode][1].append(t2 - t1)
    (f0, b0), (f1, b1) = ([min(v) * 1e3 for v in t[m]] for m in ("numpy", "kernel"))
    print(f"{name} {T} thread(s): fwd {f0:.2f} -> {f1:.2f} ms, bwd {b0:.2f} -> {b1:.2f} ms, "
          f"fwd+bwd {(f0 + b0) / (f1 + b1):.2f}x", flush=True)
direct._pack_weights = kernel_pack
