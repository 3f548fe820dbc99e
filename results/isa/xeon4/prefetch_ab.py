# In-process A/B of B-panel prefetch distances in direct's forward kernel (the same kernel, its tile intrinsic differs);
# "_dg" shapes are the data gradients' forwards (K and C swapped). Run: python results/isa/xeon4/prefetch_ab.py THREADS LAYER...
import sys
import time

import numba
import numpy as np
from numba import prange

from hpcnn.kernels import _fma, direct, nhwc
from hpcnn.kernels import isa as isa_mod

DIST = (0, 8, 16, 24)
t0_, t8_, t16_, t24_ = (_fma._tile_intrinsic(f"tile_pf{d}", d) for d in DIST)

@numba.njit(parallel=True)
def fk(x, wp, widths, offsets, bias, y, R, S, sh, sw, ph, pw, rows, cols, band, nb,
       isa, lanes, mr, xp, yt, ao, oo, mode):
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G = xp.shape[0]
    Hp, row, SC, PQ = H + 2 * ph, (W + 2 * pw) * C, S * C, P * Q
    Kp = yt.shape[2]
    yf = y.reshape(-1)
    for g in prange(G):
        buf, aof, oof, out = xp[g], ao[g], oo[g], yt[g]
        outf = out.reshape(-1)
        n_hi = (g + 1) * N // G
        for n0 in range(g * N // G, n_hi, nb):
            ni = min(nb, n_hi - n0)
            nhwc.pack_x(x, n0, n0 + ni, ph, pw, buf[:ni * Hp * row].reshape(ni, Hp, row))
            for oh0 in range(0, P, band):
                oh1 = min(oh0 + band, P)
                nr = oh1 - oh0
                for jb in range(rows.shape[0]):
                    a, b = max(rows[jb, 0], oh0), min(rows[jb, 1], oh1)
                    r0, r1 = rows[jb, 2], rows[jb, 3]
                    if a >= b or r1 <= r0:
                        continue
                    for cc in range(cols.shape[0]):
                        q0, q1, s0, s1 = cols[cc, 0], cols[cc, 1], cols[cc, 2], cols[cc, 3]
                        cnt = 0
                        for i in range(ni):
                            for oh in range(a, b):
                                for q in range(q0, q1):
                                    aof[cnt] = (i * Hp + oh * sh + r0) * row + (q * sw + s0) * C
                                    oof[cnt] = ((i * nr + oh - oh0) * Q + q) * Kp
                                    cnt += 1
                        k0 = 0
                        nt = -(-cnt // mr)
                        for pi in range(widths.shape[0]):
                            width = widths[pi]
                            b0 = offsets[pi] + (r0 * S + s0) * C * width
                            for ti in range(nt):
                                t0, t1 = ti * cnt // nt, (ti + 1) * cnt // nt
                                if mode == 0:
                                    t0_(isa, width // lanes, t1 - t0, buf, 0, aof[t0:], row, 0, wp, b0, SC * width, 0, width, 1, r1 - r0, (s1 - s0) * C, outf, k0, oof[t0:], 0)
                                elif mode == 1:
                                    t8_(isa, width // lanes, t1 - t0, buf, 0, aof[t0:], row, 0, wp, b0, SC * width, 0, width, 1, r1 - r0, (s1 - s0) * C, outf, k0, oof[t0:], 0)
                                elif mode == 2:
                                    t16_(isa, width // lanes, t1 - t0, buf, 0, aof[t0:], row, 0, wp, b0, SC * width, 0, width, 1, r1 - r0, (s1 - s0) * C, outf, k0, oof[t0:], 0)
                                else:
                                    t24_(isa, width // lanes, t1 - t0, buf, 0, aof[t0:], row, 0, wp, b0, SC * width, 0, width, 1, r1 - r0, (s1 - s0) * C, outf, k0, oof[t0:], 0)
                            k0 += width
                for i in range(ni):
                    direct._to_nchw(outf, i * nr * Q * Kp, Kp, bias, yf, n0 + i, K, PQ, oh0 * Q, oh1 * Q)

def setup(N, C, H, K, R, pad, isa):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((K, C, R, R), dtype=np.float32)
    P = Q = H + 2 * pad - R + 1
    G = direct._groups(N)
    wp, widths, offsets = direct._pack_weights(w, isa)
    band, nb = direct._block(N, G, P, Q, direct.BLOCK, direct.BLOCK)
    xp = np.zeros((G, nb * (H + 2 * pad) ** 2 * C + 64), np.float32)
    ao = np.empty((G, direct._row(nb * band * Q, 8)), np.int64)
    oo = np.empty((G, direct._row(nb * band * Q, 8)), np.int64)
    yt = np.empty((G, nb * band * Q, int(widths.sum())), np.float32)
    rows = direct.window_classes(P, H, R, 1, pad)
    cols = direct.window_classes(Q, H, R, 1, pad)
    y = np.empty((N, K, P, Q), np.float32)
    return (x, wp, widths, offsets, np.zeros(K, np.float32), y, R, R, 1, 1, pad, pad, rows, cols, band, nb,
            isa.id, isa.lanes, isa.rows, xp, yt, ao, oo), direct._forward(x, w, None, (1, 1), (pad, pad), isa)

L = {"conv2": (100, 32, 16, 32, 5, 2), "conv3": (100, 32, 8, 64, 5, 2), "3a_5x5": (32, 16, 28, 32, 5, 2),
     "4a_5x5": (32, 16, 14, 48, 5, 2), "4d_5x5": (32, 32, 14, 64, 5, 2), "3b_5x5": (32, 32, 28, 96, 5, 2),
     "5a_3x3": (32, 160, 7, 320, 3, 1), "5b_3x3": (32, 192, 7, 384, 3, 1), "5a_5x5": (32, 32, 7, 128, 5, 2),
     "4a_3x3": (32, 96, 14, 208, 3, 1), "5b_5x5": (32, 48, 7, 128, 5, 2), "4e_5x5": (32, 32, 14, 128, 5, 2),
     # data gradients ("turned" forwards of dy: K input channels, C output channels)
     "conv2_dg": (100, 32, 16, 32, 5, 2), "5a_3x3_dg": (32, 320, 7, 160, 3, 1), "3b_5x5_dg": (32, 96, 28, 32, 5, 2)}
T = int(sys.argv[1]); numba.set_num_threads(T)
isa = isa_mod.select()
print(f"# {isa.name}, {T} thread(s); forward ms, best of 5 calls x 5 rounds, distances alternated in one process; B-prefetch distance in steps", flush=True)
for name in sys.argv[2:]:
    args, ref = setup(*L[name], isa)
    res = {d: [] for d in DIST}
    for rnd in range(5):
        for m, d in enumerate(DIST):
            fk(*args, m); ts = []
            for _ in range(5):
                t = time.perf_counter(); fk(*args, m); ts.append(time.perf_counter() - t)
            res[d].append(min(ts))
            assert np.array_equal(args[5], ref), name
    b0 = min(res[0])
    print(f"{name:10s} T={T} " + "  ".join(f"pf{d} {min(v)*1e3:6.2f} ({b0/min(v):.3f}x)" for d, v in res.items()), flush=True)
