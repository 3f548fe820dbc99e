"""Collective latency and bandwidth, every kind hpcnn uses:
``mpiexec -n N python -m hpcnn.bench comm [--kinds ...] [--json FILE]``.

Kinds: ``allreduce`` (in place), ``iallreduce`` (in place, non-blocking then waited for, as the
gradient buckets run: MPICH picks other algorithms for it), ``reduce_scatter``, ``allgather``,
``bcast``, ``reduce`` and ``alltoall``, all float32 SUM where they reduce. The message size of a
row is each rank's payload as the strategies count it (:mod:`hpcnn.parallel.strategy`): the
buffer of an allreduce, a reduce-scatter's whole input, a rank's own block of an all-gather, the
buffer of a broadcast or a reduce, a rank's whole send buffer of an all-to-all.

OSU style (osu_allreduce): for each size the buffers are allocated once, the first iterations are
warm-up, a ``Barrier`` starts the timed loop and ``MPI.Wtime`` times it. The iteration count is
rank 0's choice (enough for ``--budget`` seconds, within OSU's counts), broadcast so every rank
loops alike. Rank 0 prints the mean over ranks (and the slowest rank's), the slowest rank's
median of the iterations (each timed alone) and writes the JSON.

``--allreduce-algorithm ring|recursive_doubling|...`` sets MPICH's
``MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM`` before MPI starts (what the alpha-beta model's ring and
recursive-doubling allreduce are fitted from). Bandwidth: ``algbw = bytes / time``.
"""

import argparse
import json
import os
import sys

KINDS = ("allreduce", "iallreduce", "reduce_scatter", "allgather", "bcast", "reduce", "alltoall")
ALLREDUCE_ALGORITHMS = ("auto", "ring", "recursive_doubling", "reduce_scatter_allgather")


def sizes(min_bytes, max_bytes, factor=2):
    """Powers of ``factor`` from ``min_bytes`` to ``max_bytes`` (multiples of 4: float32)."""
    out, b = [], max(4, min_bytes)
    while b <= max_bytes:
        out.append(b)
        b *= factor
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


def _op(comm, kind, nbytes):
    """A no-argument callable running one ``kind`` collective of ``nbytes`` per rank."""
    import numpy as np
    from mpi4py import MPI

    size = comm.Get_size()
    n = max(1, nbytes // 4)
    if kind == "allreduce":
        buf = np.zeros(n, np.float32)  # zeros stay finite over any number of sums
        return lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if kind == "iallreduce":  # non-blocking, then waited for: what the gradient buckets run
        buf = np.zeros(n, np.float32)
        return lambda: comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM).Wait()
    if kind == "reduce_scatter":
        n = max(size, n - n % size)
        src, dst = np.zeros(n, np.float32), np.zeros(n // size, np.float32)
        return lambda: comm.Reduce_scatter_block(src, dst, op=MPI.SUM)
    if kind == "allgather":
        src, dst = np.zeros(n, np.float32), np.zeros(n * size, np.float32)
        return lambda: comm.Allgather(src, dst)
    if kind == "bcast":
        buf = np.zeros(n, np.float32)
        return lambda: comm.Bcast(buf, root=0)
    if kind == "reduce":
        src = np.zeros(n, np.float32)
        dst = np.zeros(n, np.float32) if comm.Get_rank() == 0 else None
        return lambda: comm.Reduce(src, dst, op=MPI.SUM, root=0)
    if kind == "alltoall":
        n = max(size, n - n % size)
        src, dst = np.zeros(n, np.float32), np.zeros(n, np.float32)
        return lambda: comm.Alltoall(src, dst)
    raise ValueError(f"unknown collective kind {kind!r}")


def measure(comm, kind, nbytes, iters, warmup, budget=None):
    """(mean seconds, median seconds, iterations) of ``kind`` collectives of ``nbytes`` on this
    rank (the timed loop only). The median of the iterations, each timed alone, is what a
    preempted iteration does not move: the machines are shared.

    With ``budget`` (seconds), rank 0 lowers ``iters`` to what fits the budget after timing the
    warm-up, and every rank follows (one ``bcast``)."""
    import numpy as np
    from mpi4py import MPI

    op = _op(comm, kind, nbytes)
    comm.Barrier()
    t = MPI.Wtime()
    for _ in range(warmup):
        op()
    if budget is not None:
        per = (MPI.Wtime() - t) / max(1, warmup)
        iters = comm.bcast(max(3, min(iters, int(budget / max(per, 1e-9)))), root=0)
    each = np.empty(iters)
    comm.Barrier()
    t = MPI.Wtime()
    for i in range(iters):
        t0 = MPI.Wtime()
        op()
        each[i] = MPI.Wtime() - t0
    return (MPI.Wtime() - t) / iters, float(np.median(each)), iters


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        from hpcnn.errors import UsageError

        raise UsageError(f"{self.prog}: {message}")


def build_parser():
    from hpcnn import argtypes as at

    p = _Parser(prog="mpiexec -n N python -m hpcnn.bench comm",
                description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"comma-separated collectives (default all: {', '.join(KINDS)})")
    p.add_argument("--min-bytes", type=at.positive_int, default=4)
    p.add_argument("--max-bytes", type=at.positive_int, default=64 << 20)
    p.add_argument("--factor", type=at.positive_int, default=2,
                   help="size step: each size is the last times this (2 or more)")
    p.add_argument("--iter-scale", type=at.positive_float, default=1.0,
                   help="multiply the iteration counts (smaller: faster, noisier)")
    p.add_argument("--budget", type=at.positive_float, default=None,
                   help="seconds per size and kind at most (fewer iterations on slow links)")
    p.add_argument("--allreduce-algorithm", default="auto", help=", ".join(ALLREDUCE_ALGORITHMS))
    p.add_argument("--link", default="shm", help="label of the network, kept in the JSON")
    p.add_argument("--json", default=None, help="write the table here (rank 0)")
    return p


def parse_args(argv):
    from hpcnn.errors import UsageError

    a = build_parser().parse_args(argv)
    a.kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    bad = [k for k in a.kinds if k not in KINDS]
    if bad or not a.kinds:
        raise UsageError(f"unknown --kinds {','.join(bad) or repr('')}; choose from "
                         f"{', '.join(KINDS)}")
    if a.allreduce_algorithm not in ALLREDUCE_ALGORITHMS:
        raise UsageError(f"unknown --allreduce-algorithm {a.allreduce_algorithm!r}; choose "
                         f"from {', '.join(ALLREDUCE_ALGORITHMS)}")
    if a.factor < 2:
        raise UsageError(f"--factor must be 2 or more, got {a.factor}")
    if a.min_bytes > a.max_bytes:
        raise UsageError(f"--min-bytes {a.min_bytes} exceeds --max-bytes {a.max_bytes}")
    return a


def main(argv):
    from hpcnn.errors import UsageError
    from hpcnn.train import _launcher_rank

    try:
        a = parse_args(argv)
    except UsageError as e:
        if _launcher_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if a.allreduce_algorithm != "auto":  # read by MPICH when MPI starts (the import below)
        os.environ["MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM"] = a.allreduce_algorithm

    import numpy as np
    from mpi4py import MPI

    from hpcnn.scaling.point import topology

    comm = MPI.COMM_WORLD  # an entry point: the benchmark owns the world
    size, rank = comm.Get_size(), comm.Get_rank()
    if size < 2:
        if rank == 0:
            print("error: comm benchmark needs at least 2 ranks: mpiexec -n 2 python -m "
                  "hpcnn.bench comm", file=sys.stderr)
        return 2
    nodes, per_node = topology(comm)
    library = MPI.Get_library_version().splitlines()[0].strip()
    results = {}
    for kind in a.kinds:
        if rank == 0:
            algo = f", algorithm {a.allreduce_algorithm}" if kind == "allreduce" else ""
            print(f"# {kind} (float32), {size} ranks on {nodes} node(s), link {a.link}{algo}, "
                  f"{library}")
            print(f"# {'bytes':>10} {'iters':>6} {'avg us':>11} {'max us':>11} "
                  f"{'median us':>11} {'algbw MB/s':>11}", flush=True)
        rows = []
        for nbytes in sizes(a.min_bytes, a.max_bytes, a.factor):
            iters, warm = iterations(nbytes, a.iter_scale)
            t, med, iters = measure(comm, kind, nbytes, iters, warm, a.budget)
            t = np.array([t, med], dtype=np.float64)
            tsum, tmax = np.zeros(2), np.zeros(2)
            comm.Reduce(t, tsum, op=MPI.SUM, root=0)
            comm.Reduce(t, tmax, op=MPI.MAX, root=0)
            if rank == 0:
                avg = tsum[0] / size
                med = tmax[1]  # the slowest rank's median: a collective ends with its last rank
                rows.append({"bytes": nbytes, "iterations": iters, "avg_us": avg * 1e6,
                             "max_us": tmax[0] * 1e6, "median_us": med * 1e6,
                             "algbw_MBps": nbytes / avg / 1e6})
                print(f"  {nbytes:>10} {iters:>6} {avg * 1e6:>11.2f} {tmax[0] * 1e6:>11.2f} "
                      f"{med * 1e6:>11.2f} {nbytes / avg / 1e6:>11.1f}", flush=True)
        results[kind] = rows
    if rank == 0 and a.json:
        from hpcnn.atomic import atomic_path

        with atomic_path(a.json) as tmp, open(tmp, "w") as f:
            json.dump({"benchmark": "comm", "ranks": size, "nodes": nodes,
                       "ranks_per_node": per_node, "link": a.link,
                       "allreduce_algorithm": a.allreduce_algorithm, "library": library,
                       "command": "python -m hpcnn.bench comm " + " ".join(argv),
                       "results": results}, f, indent=1)
    return 0
