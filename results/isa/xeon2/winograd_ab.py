"""Winograd drivers of commit 6bdd89c (transforms one tile row at a time) against the working
tree's (ROW_TILES picks the form), forward and backward of GoogLeNet's 3x3 layers, alternated
in one process: ``python results/isa/xeon2/winograd_ab.py THREADS [winograd,winograd4]``.
Both runs use the working tree's weight transform (one GEMM); best of 3 timed rounds."""
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from hpcnn.kernels import _winograd_tiles as NEW
from hpcnn.kernels import winograd as W

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ALGOS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["winograd", "winograd4"]
numba.set_num_threads(T)
threadpool_limits(1)
src = subprocess.run(["git", "show", "6bdd89c:hpcnn/kernels/_winograd_tiles.py"],
                     capture_output=True, text=True, check=True).stdout
path = os.path.join(tempfile.mkdtemp(), "old_tiles.py")
with open(path, "w") as f:
    f.write(src)
spec = importlib.util.spec_from_file_location("old_tiles", path)
OLD = importlib.util.module_from_spec(spec)
spec.loader.exec_module(OLD)

rng = np.random.default_rng(0)
LAYERS = [(32, 64, 56, 192), (32, 96, 28, 128), (32, 128, 28, 192), (32, 96, 14, 208),
          (32, 128, 14, 256), (32, 160, 14, 320), (32, 160, 7, 320), (32, 192, 7, 384)]
for N, C, H, K in LAYERS:
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = np.zeros(K, np.float32)
    dy = rng.standard_normal((N, K, H, H), dtype=np.float32)
    for algo in ALGOS:
        res = {"old": [[], []], "new": [[], []]}
        for rnd in range(4):
            for name, mod in (("old", OLD), ("new", NEW)):
                W.KERNELS = mod.KERNELS
                t0 = time.perf_counter()
                W.forward(x, w, b, (1, 1), (1, 1), algo=algo)
                t1 = time.perf_counter()
                W.backward(dy, x, w, (1, 1), (1, 1), True, algo=algo)
                t2 = time.perf_counter()
                if rnd:
                    res[name][0].append(t1 - t0)
                    res[name][1].append(t2 - t1)
        o = [min(v) * 1e3 for v in res["old"]]
        n = [min(v) * 1e3 for v in res["new"]]
        gain = (o[0] + o[1]) / (n[0] + n[1])
        print(f"{algo} C{C} {H}x{H} K{K} {T} thread(s): fwd {o[0]:.2f} -> {n[0]:.2f} ms, "
              f"bwd {o[1]:.2f} -> {n[1]:.2f} ms, old/new fwd+bwd {gain:.2f}x", flush=True)
