"""One measured point of the scaling study (an MPI program: run it under mpiexec or srun)::

    mpiexec -n 2 python -m hpcnn.scaling point --net owt_cifar --parallel hybrid --scheme a \\
        --batch-per-rank 64 --steps 5 --warmup 2 --link shm --csv results/scaling/points.csv

Every rank trains the net on synthetic data (the same batches ``hpcnn.bench scaling`` uses) with
the strategy asked for; after ``--warmup`` untimed steps a barrier starts ``--steps`` timed ones.
Rank 0 appends one row to the CSV (:mod:`hpcnn.scaling.csvio`): nodes (from the MPI
shared-memory split), ranks, ranks per node, threads, the mode, per-rank and global batch, the
link's label, images/s (the global batch over the slowest rank's median step time), that median
step's time split into compute, wait per collective kind and data (min, mean and max over
ranks), the bytes each rank handed to each kind per step (mean over ranks and steps), the
command line and seed. Each rank's median step, not the mean: the machines are shared, and a
step that another process preempted is not the typical one.
"""

import argparse
import math
import shlex
import sys
import time

from hpcnn.errors import HpcnnError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def build_parser():
    from hpcnn import argtypes as at

    p = _Parser(prog="python -m hpcnn.scaling point", description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="cifar10_quick", help="cifar10_quick, owt_cifar, ...")
    p.add_argument("--parallel", default="data", help="data or hybrid")
    p.add_argument("--scheme", default=None, help="hybrid scheme a, b or c (default a)")
    p.add_argument("--grid", default=None, help="hybrid grid DxM (default 1xN)")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--batch-per-rank", type=at.positive_int, default=None)
    b.add_argument("--global-batch", type=at.positive_int, default=None,
                   help="split over the ranks (must divide evenly)")
    p.add_argument("--steps", type=at.positive_int, default=5, help="timed steps")
    p.add_argument("--warmup", type=at.nonneg_int, default=2, help="untimed steps first")
    p.add_argument("--min-seconds", type=at.nonneg_float, default=0.0,
                   help="time more steps than --steps when they would take less than this "
                        "(rank 0 decides from the last warm-up step; the CSV keeps the count)")
    p.add_argument("--seed", type=at.seed_int, default=0)
    p.add_argument("--link", default="shm",
                   help="label of the network between the nodes (shm, 10gbit, 1gbit, ...)")
    p.add_argument("--csv", required=True, help="append the row here (rank 0)")
    p.add_argument("--threads", type=at.thread_count, default=1, help="threads per rank")
    p.add_argument("--bucket-mb", type=at.positive_float, default=25.0,
                   help="gradient bucket cap (MiB)")
    return p


def parse_args(argv):
    from hpcnn.nn import NETS
    from hpcnn.parallel.factory import PARALLEL_CHOICES, parse_grid

    a = build_parser().parse_args(argv)
    if a.net not in NETS:
        raise UsageError(f"unknown --net {a.net!r}; choose from {', '.join(NETS)}")
    if a.parallel not in PARALLEL_CHOICES:
        raise UsageError(f"unknown --parallel {a.parallel!r}; choose from "
                         f"{', '.join(PARALLEL_CHOICES)}")
    if a.parallel == "data" and (a.scheme or a.grid):
        raise UsageError("--scheme and --grid need --parallel hybrid")
    if a.scheme is not None and a.scheme not in ("a", "b", "c"):
        raise UsageError(f"unknown --scheme {a.scheme!r}; choose from a, b, c")
    if a.grid is not None:
        parse_grid(a.grid)
    if a.batch_per_rank is None and a.global_batch is None:
        a.batch_per_rank = 64
    if not a.link or any(c in a.link for c in ",\n\"") or len(a.link) > 40:
        raise UsageError(f"--link must be a short label without commas, got {a.link!r}")
    return a


def topology(comm):
    """(nodes, ranks per node): nodes from the shared-memory split, ranks per node its largest
    size (every rank gets the same answer)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        local = node.Get_size()
        leader = int(node.Get_rank() == 0)
    finally:
        node.Free()
    return comm.allreduce(leader), comm.allreduce(local, op=MPI.MAX)


def _fold(per_kind):
    """{kind: v} of a strategy onto the CSV's kinds (unknown kinds summed under "other")."""
    from hpcnn.scaling.csvio import KINDS

    out = dict.fromkeys(KINDS, 0.0)
    for k, v in per_kind.items():
        out[k if k in out else "other"] += float(v)
    return out



def synthetic_batches(net_name, batch_per_rank, size, rank, seed, n_batches=4):
    """This rank's slices of ``n_batches`` global batches, gathered by index as train.py does."""
    import numpy as np

    from hpcnn.data import load_dataset
    from hpcnn.nn import NETS

    _, solver, shape = NETS[net_name]
    glob = batch_per_rank * size
    ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train=glob * n_batches,
                      synthetic_test=10, seed=seed)
    order = np.random.default_rng(seed).permutation(glob * n_batches)
    idx = [np.sort(order[i * glob + rank * batch_per_rank: i * glob + (rank + 1) * batch_per_rank])
           for i in range(n_batches)]
    return ds, idx, solver, shape


def measure(comm, net, parallel, scheme, grid, batch_per_rank, steps, warmup, seed,
            bucket_mb=25.0, overlap=True, progress=True, min_seconds=0.0):
    """Train ``net`` on synthetic data for ``warmup`` + ``steps`` steps; return (on rank 0; None
    elsewhere) images/s, timing stats over ranks (:func:`hpcnn.parallel.reduce_timing`), the
    bytes per step per kind (mean over ranks, on the CSV's kinds), rank 0's own waits and bytes
    per step per kind, and the job's total bytes per step, measured and analytic.

    Shared with ``python -m hpcnn.bench scaling`` (its workers call this)."""
    from functools import partial

    import numpy as np
    from mpi4py import MPI

    from hpcnn.nn import build_net
    from hpcnn.optim import SGD
    from hpcnn.parallel import build_strategy, reduce_timing
    from hpcnn.parallel.runtime import agree
    from hpcnn.scaling.csvio import KINDS
    from hpcnn.train import warm_kernel_cache

    size, rank = comm.Get_size(), comm.Get_rank()
    ds, idx, solver, shape = synthetic_batches(net, batch_per_rank, size, rank, seed)
    model = build_net(net, shape, 10, seed=seed)
    k0 = idx[0]
    warm_kernel_cache(comm, model, ds.x_train[k0], ds.y_train[k0])
    opt = partial(SGD, lr=solver.lr, momentum=solver.momentum, weight_decay=solver.weight_decay)
    hybrid = parallel == "hybrid"
    st = agree(comm, build_strategy, comm, model, opt, parallel=parallel,
               grid=(grid or f"1x{size}") if hybrid else None,
               scheme=(scheme or "a") if hybrid else None, bucket_mb=bucket_mb,
               overlap=overlap, progress=progress)
    per_step = []  # (wall, data, step call, {kind: wait}, {kind: bytes}) of each timed step
    comm.Barrier()
    t_start = MPI.Wtime()
    last = None
    i = 0
    while i < warmup + steps:
        if i == warmup:
            if min_seconds > 0 and last is not None:  # enough steps for a stable median
                want = math.ceil(min_seconds / max(last, 1e-6))
                steps = comm.bcast(max(steps, min(want, 200)), root=0)
            comm.Barrier()
            t_start = MPI.Wtime()
        st.reset_timings()
        ta = time.perf_counter()
        k = idx[i % len(idx)]
        x, y = ds.x_train[k], ds.y_train[k]
        tb = time.perf_counter()
        st.step(x, y, solver.lr)
        tc = time.perf_counter()
        last = tc - ta
        if i >= warmup:
            t = st.timings()
            per_step.append((tc - ta, tb - ta, tc - tb, t["wait_s"], t["bytes"]))
        i += 1
    elapsed = MPI.Wtime() - t_start
    # The median step of this rank (shared machines: a step another process preempted is not
    # the typical one) and its breakdown; images/s from the slowest rank's median step.
    order = sorted(range(steps), key=lambda j: per_step[j][0])
    wall, data, call, wait_kinds, _ = per_step[order[(steps - 1) // 2]]
    slowest = comm.allreduce(wall, op=MPI.MAX)
    waits = _fold(wait_kinds)
    wait = sum(waits.values())
    values = {"step_s": wall, "compute_s": call - wait, "data_s": data, "wait_s": wait}
    values.update({f"wait_{k}_s": waits[k] for k in KINDS})
    timing = reduce_timing(comm, values)
    total_bytes, total_wait = {}, {}
    for _, _, _, w, b in per_step:
        for kk, v in b.items():
            total_bytes[kk] = total_bytes.get(kk, 0) + v
        for kk, v in w.items():
            total_wait[kk] = total_wait.get(kk, 0.0) + v
    t = {"bytes": total_bytes, "wait_s": total_wait}
    analytic = st.bytes_per_step(batch_per_rank * size)
    nbytes = np.array([_fold(t["bytes"])[k] / steps for k in KINDS]
                      + [sum(analytic.values())], np.float64)
    comm.Allreduce(MPI.IN_PLACE, nbytes, op=MPI.SUM)  # the job's: every rank's own
    if rank != 0:
        return None
    return {"images_per_s": batch_per_rank * size / slowest, "timing": timing,
            "mean_images_per_s": steps * batch_per_rank * size / elapsed,
            "bytes": dict(zip(KINDS, (nbytes[:-1] / size).tolist())),
            "job_bytes": float(nbytes[:-1].sum()), "job_bytes_analytic": float(nbytes[-1]),
            "rank0_bytes": {k: v / steps for k, v in t["bytes"].items()},
            "rank0_wait_s": {k: v / steps for k, v in t["wait_s"].items()},
            "bytes_analytic": analytic, "describe": st.describe(), "steps": steps,
            "buckets": len(getattr(st, "buckets", []) or [])}


def run(a, comm, argv):
    from hpcnn.kernels.autotune import cpu_model
    from hpcnn.parallel.runtime import agree
    from hpcnn.scaling.csvio import COLUMNS, KINDS, STATS, TIMES, append_row, check_csv

    size = comm.Get_size()
    if a.global_batch is not None:
        if a.global_batch % size:
            raise UsageError(f"--global-batch {a.global_batch} does not split evenly over "
                             f"{size} ranks")
        a.batch_per_rank = a.global_batch // size
    agree(comm, check_csv, a.csv)  # before the measurement: a bad file fails every rank now
    nodes, per_node = topology(comm)
    res = measure(comm, a.net, a.parallel, a.scheme, a.grid, a.batch_per_rank, a.steps,
                  a.warmup, a.seed, a.bucket_mb, min_seconds=a.min_seconds)
    if res is None:
        return 0
    hybrid = a.parallel == "hybrid"
    row = {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu_model(),
           "nodes": nodes, "ranks": size, "ranks_per_node": per_node, "threads": a.threads,
           "net": a.net, "parallel": a.parallel, "scheme": (a.scheme or "a") if hybrid else "",
           "grid": (a.grid or f"1x{size}") if hybrid else f"{size}x1",
           "batch_per_rank": a.batch_per_rank, "global_batch": a.batch_per_rank * size,
           "link": a.link, "steps": res["steps"], "warmup": a.warmup,
           "images_per_s": res["images_per_s"], "seed": a.seed,
           "command": "python -m hpcnn.scaling point " + shlex.join(argv)}
    for t in TIMES:
        for s in STATS:
            row[f"{t}_{s}"] = res["timing"][t][s]
    for k in KINDS:
        row[f"bytes_{k}"] = res["bytes"][k]
    row["bytes_total"] = sum(res["bytes"].values())
    assert set(row) == set(COLUMNS)
    append_row(a.csv, row)
    print(f"{a.net} {a.parallel}{' ' + row['scheme'] if hybrid else ''} nodes {nodes} ranks "
          f"{size} batch/rank {a.batch_per_rank} link {a.link}: {res['images_per_s']:.1f} img/s, "
          f"step {1e3 * res['timing']['step_s']['mean']:.1f} ms (compute "
          f"{1e3 * res['timing']['compute_s']['mean']:.1f}, wait "
          f"{1e3 * res['timing']['wait_s']['mean']:.1f}), "
          f"{row['bytes_total'] / 2**20:.2f} MiB/step/rank -> {a.csv}", flush=True)
    return 0


def main(argv):
    from hpcnn.train import _launcher_rank

    try:
        a = parse_args(argv)
    except UsageError as e:
        if _launcher_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    from mpi4py import MPI

    from hpcnn import threads
    from hpcnn.parallel.runtime import abort_on_exception

    comm = MPI.COMM_WORLD  # an entry point: the point owns the world
    threads.pin_env(a.threads)
    from hpcnn.parallel import watchdog  # after the pin: BLAS reads it when numpy loads
    try:
        if comm.Get_size() > 1:
            watchdog.start(comm)  # a dead peer ends the point, not the job's time limit
        threads.apply(a.threads)
        return run(a, comm, argv)
    except HpcnnError as e:
        # raised alike on every rank (the checks go through ``agree``); rank 0 says why
        if comm.Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        abort_on_exception(comm, e)
    finally:
        watchdog.stop()  # this rank is done: its exit (or the caller's next step) is no death
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
