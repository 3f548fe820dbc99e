"""direct's weight gradient: tiles per kernel column ("per_s") against tiles spanning the kernel
row ("span"), in one process, best of 5 alternated rounds. Usage: python wgrad_span.py THREADS"""

import sys
import time

import numba
import numpy as np

from hpcnn import threads
from hpcnn.kernels import direct

LAYERS = [  # name, N, C, H (= W), K, R (padding R // 2)
    ("3a_5x5", 32, 16, 28, 32, 5), ("4a_5x5", 32, 16, 14, 48, 5), ("4b_5x5", 32, 24, 14, 64, 5),
    ("5b_5x5", 32, 48, 7, 128, 5), ("c48_14", 32, 48, 14, 64, 5), ("c80_14", 32, 80, 14, 64, 5),
    ("c16_3x3", 32, 16, 28, 32, 3),
]


def cover(C, S, isa, per_s):
    wide, narrow = isa.widths
    out = []

    def run(base, n, s):
        c0 = 0
        while c0 < n:
            width = wide if n - c0 > narrow else narrow
            out.append((base + c0, width, min(width, n - c0), s))
            c0 += width

    if per_s:
        for s in range(S):
            run(s * C, C, s)
    else:
        run(0, S * C, -1)
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def main(T):
    threads.apply(T)
    numba.set_num_threads(T)
    modes = {"per_s": lambda C, S, isa: cover(C, S, isa, True),
             "span": lambda C, S, isa: cover(C, S, isa, False)}
    rng = np.random.default_rng(0)
    for name, N, C, H, K, R in LAYERS:
        x = rng.standard_normal((N, C, H, H), dtype=np.float32)
        w = rng.standard_normal((K, C, R, R), dtype=np.float32)
        dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
        pad = (R // 2, R // 2)
        dws, best = {}, dict.fromkeys(modes, 1e9)
        for rnd in range(6):  # round 0: compile and check
            for mode, f in modes.items():
                direct.column_tiles = f
                t = time.perf_counter()
                dw = direct.backward(dy, x, w, (1, 1), pad, False)[1]
                if rnd:
                    best[mode] = min(best[mode], time.perf_counter() - t)
                else:
                    dws[mode] = dw
        err = np.abs(dws["per_s"] - dws["span"]).max() / np.abs(dws["per_s"]).max()
        print(f"{name:8s} {T} thread(s): per_s {best['per_s'] * 1e3:7.2f} ms, span "
              f"{best['span'] * 1e3:7.2f} ms, per_s/span {best['per_s'] / best['span']:.2f}x, "
              f"difference {err:.1e}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
