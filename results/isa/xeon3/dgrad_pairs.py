"""direct's data gradient: one-vector panels against pairs of output pixels on a two-vector panel
(hpcnn.kernels.direct._data_grad), in one process, best of 5 alternated rounds.
Usage: python dgrad_pairs.py THREADS"""

import sys
import time

import numba
import numpy as np

from hpcnn import threads
from hpcnn.kernels import direct

LAYERS = [  # name, N, C (dx's channels), H (= W), K, R (padding R // 2)
    ("3a_5x5", 32, 16, 28, 32, 5), ("4a_5x5", 32, 16, 14, 48, 5), ("c16_3x3", 32, 16, 28, 32, 3),
    ("c16_7x7", 32, 16, 7, 64, 5), ("c12_28", 32, 12, 28, 32, 5), ("c12_28_3", 32, 12, 28, 32, 3),
    ("c9_27", 32, 9, 27, 33, 5),
]


def main(T):
    threads.apply(T)
    numba.set_num_threads(T)
    isa = direct._isa(None)
    rng = np.random.default_rng(0)
    for name, N, C, H, K, R in LAYERS:
        w = rng.standard_normal((K, C, R, R), dtype=np.float32)
        dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
        pad = (R - 1 - R // 2,) * 2
        dxs, best = {}, {False: 1e9, True: 1e9}
        for rnd in range(6):  # round 0: compile and check
            for paired in best:
                t = time.perf_counter()
                dx = direct._data_grad(dy, w, pad, H, isa, paired=paired)
                if rnd:
                    best[paired] = min(best[paired], time.perf_counter() - t)
                else:
                    dxs[paired] = dx
        err = np.abs(dxs[True] - dxs[False]).max() / np.abs(dxs[False]).max()
        print(f"{name:8s} {T} thread(s): one vector {best[False] * 1e3:6.2f} ms, pairs "
              f"{best[True] * 1e3:6.2f} ms, {best[False] / best[True]:.2f}x, difference "
              f"{err:.1e}, chosen: {'pairs' if direct.pairs(C, R, H, isa) else 'one vector'}",
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
