"""Allreduce latency and bandwidth: ``mpiexec -n 2 python -m hpcnn.bench comm [--json FILE]``.

OSU style (osu_allreduce): for each message size the float32 buffer is allocated once, reduced in
place (``MPI.IN_PLACE``, as the gradient buckets are), the first iterations are warm-up and not
timed, a ``Barrier`` starts the timed loop, and ``MPI.Wtime`` times it. Every rank times its own
loop; rank 0 prints the average over ranks (and the slowest rank) and writes the JSON.

Bandwidth is reported two ways: ``algbw = bytes / time`` and NCCL-tests' ``busbw = algbw *
2 (N - 1) / N``, the rate each link must sustain in a ring allreduce, comparable across N.
"""

import argparse
import json
import sys


def sizes(min_bytes, max_bytes):
    """Powers of 2 from ``min_bytes`` to ``max_bytes`` (multiples of 4: float32 elements)."""
    out, b = [], max(4, min_bytes)
    while b <= max_bytes:
        out.append(b)
        b *= 2
    return out


def iterations(nbytes, scale=1.0):
    """OSU's rule of thumb: many iterations for small messages, fewer for large ones."""
    if nbytes <= 8192:
        n, warm = 1000, 100
    elif nbytes <= 1 << 20:
        n, warm = 200, 20
    else:
        n, warm = max(10, int((64 << 20) * 10 // nbytes)), 3
    return max(2, int(n * scale)), max(1, int(warm * scale))


def measure(comm, nbytes, iters, warmup):
    """Seconds per in-place float32 ``Allreduce`` of ``nbytes`` on this rank (timed loop only)."""
    import numpy as np
    from mpi4py import MPI

    buf = np.zeros(nbytes // 4, dtype=np.float32)  # zeros stay finite over any number of sums
    t = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            comm.Barrier()
            t = MPI.Wtime()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return (MPI.Wtime() - t) / iters


def main(argv):
    p = argparse.ArgumentParser(prog="mpiexec -n N python -m hpcnn.bench comm",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--min-bytes", type=int, default=4)
    p.add_argument("--max-bytes", type=int, default=64 << 20)
    p.add_argument("--iter-scale", type=float, default=1.0,
                   help="multiply the iteration counts (smaller: faster, noisier)")
    p.add_argument("--json", default=None, help="write the table here (rank 0)")
    a = p.parse_args(argv)

    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD  # an entry point: the benchmark owns the world
    size, rank = comm.Get_size(), comm.Get_rank()
    if size < 2:
        if rank == 0:
            print("comm benchmark needs at least 2 ranks: mpiexec -n 2 python -m hpcnn.bench "
                  "comm", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"# Allreduce (float32, MPI.IN_PLACE, SUM), {size} ranks, "
              f"{MPI.Get_library_version().splitlines()[0].strip()}")
        print(f"# {'bytes':>10} {'iters':>6} {'avg us':>11} {'max us':>11} "
              f"{'algbw MB/s':>11} {'busbw MB/s':>11}", flush=True)
    rows = []
    for nbytes in sizes(a.min_bytes, a.max_bytes):
        iters, warm = iterations(nbytes, a.iter_scale)
        t = np.array([measure(comm, nbytes, iters, warm)], dtype=np.float64)
        tsum, tmax = np.zeros(1), np.zeros(1)
        comm.Reduce(t, tsum, op=MPI.SUM, root=0)
        comm.Reduce(t, tmax, op=MPI.MAX, root=0)
        if rank == 0:
            avg = tsum[0] / size
            algbw = nbytes / avg / 1e6
            busbw = algbw * 2 * (size - 1) / size
            rows.append({"bytes": nbytes, "iterations": iters, "avg_us": avg * 1e6,
                         "max_us": tmax[0] * 1e6, "algbw_MBps": algbw, "busbw_MBps": busbw})
            print(f"  {nbytes:>10} {iters:>6} {avg * 1e6:>11.2f} {tmax[0] * 1e6:>11.2f} "
                  f"{algbw:>11.1f} {busbw:>11.1f}", flush=True)
    if rank == 0 and a.json:
        with open(a.json, "w") as f:
            json.dump({"benchmark": "allreduce", "ranks": size, "results": rows}, f, indent=1)
    return 0
