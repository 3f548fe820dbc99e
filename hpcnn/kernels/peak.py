"""The core's FMA peak, measured: independent vector FMAs in registers, nothing else.

``python -m hpcnn.bench conv`` reports every convolution against this figure, measured in the
same process at the same thread count: the ceiling no kernel can pass, where an SGEMM ceiling
is only what one library reaches. Each thread runs :func:`hpcnn.kernels._fma.fma_peak_loop`
(``regs - 4`` independent chains of the ISA's widest FMA: enough to cover the latency of two
FMA units); the best of a few rounds counts.
"""

import time

import numba
import numpy as np

from hpcnn.kernels import isa as isa_mod
from hpcnn.kernels._fma import fma_peak_loop, peak_chains
from hpcnn.kernels._jit import pnjit, prange


@pnjit
def _peak_kernel(isa, n, out):
    for t in prange(out.shape[0]):
        out[t] = fma_peak_loop(isa, n)


def fma_peak(isa=None, threads=None, seconds=0.1, rounds=5):
    """GFLOP/s of ``threads`` (default: Numba's count) threads each running FMAs of ``isa``
    (default: :func:`hpcnn.kernels.isa.select`) for about ``seconds`` per round."""
    isa = isa_mod.select() if isa is None else isa
    threads = numba.get_num_threads() if threads is None else int(threads)
    out = np.zeros(threads, dtype=np.float32)
    per_iter = 2.0 * peak_chains(isa) * isa.lanes
    n = 1 << 16
    while True:  # calibrate: one round of about `seconds`
        t0 = time.perf_counter()
        _peak_kernel(isa.id, n, out)
        dt = time.perf_counter() - t0
        if dt >= seconds / 4 or n >= 1 << 34:
            break
        n *= 4
    n = max(1, int(n * seconds / max(dt, 1e-9)))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        _peak_kernel(isa.id, n, out)
        best = min(best, time.perf_counter() - t0)
    return per_iter * n * threads / best / 1e9
