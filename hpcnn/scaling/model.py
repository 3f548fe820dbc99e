"""The performance model: predicted step time, images/s and efficiency of data parallelism and
hybrid schemes a, b and c at any node count, batch and link.

``python -m hpcnn.scaling model fit``      alpha-beta per kind and link from bench comm's JSONs
``python -m hpcnn.scaling model compute``  per-layer compute time of a net (timed: take the lock)
``python -m hpcnn.scaling model predict``  one prediction, its step split by collective kind

A step on each rank is

    compute  = forward + backward + loss + optimizer (per layer, measured: hpcnn.scaling.compute)
    exposed  = the collectives' alpha-beta cost (hpcnn.scaling.alphabeta) not hidden by backward
    step     = compute + exposed;  images/s = ranks * batch per rank / step

Assumptions (printed with every report):

1. Compute per rank is the per-layer times of one process (each layer timed alone, scaled so
   that they add up to a whole training step timed at that batch), interpolated in the batch
   (proportional to it below the smallest batch measured, 16). A pass of a hybrid head over R
   examples, split over M ranks, takes 1/M of the whole head's time on R examples (from a
   profile taken beside a cell, which holds that cell's batch n only: its time at n, scaled by
   how the study's profile of several batches grows from n to R); scheme a
   makes one pass over the group's M n examples, b and c make M passes of n each
   (hpcnn.parallel.hybrid), so where a pass costs mostly its weights' traffic (small batches,
   large heads) b and c compute longer than a. The optimizer's time is
   proportional to the parameters a rank updates, so hybrid's per-rank work shrinks with M and
   its speedup over one node can exceed the node count. A projected node computes like one core
   of this machine.
2. Every collective costs ``A alpha + B beta`` with the algorithm MPICH picks for its size; alpha
   and beta are fitted per kind and per link from ``bench comm`` (1 rank per node; on the
   emulated links the 2-node fit, as 4 and 8 nodes oversubscribe the 2 cores). The gradient
   buckets cost as ``iallreduce`` (non-blocking, then waited for), fitted apart: MPICH runs
   other algorithms for it than for the blocking allreduce. Messages of 16 MiB per rank and
   more (``ab.BIG``: their buffers outgrow the last-level cache, as the 25 MiB buckets do) get
   their own beta, fitted to the 16 and 64 MiB samples.
3. Data parallelism's gradient buckets (25 MiB, reverse layer order) start as backward finishes
   their layers and run one after another; while backward still computes they progress at a
   fraction ``overlap`` of full speed (MPICH moves a non-blocking collective only inside MPI
   calls: hpcnn polls once per layer), at full speed after it. ``overlap`` is fitted per link to
   the measured points (a calibrated constant; 0 = no overlap, 1 = perfect; 0 where not
   measured, as on the named interconnects).
4. Hybrid's collectives on the model axis are blocking: nothing hides them (schemes b and c post
   the next round's transfer early, but it too moves only inside MPI calls). Its feature
   gradients overlap backward like data parallelism's buckets.
5. The data step costs nothing (the batch is in memory). Several ranks per node are charged the
   link's costs too (a conservative simplification; the study runs one rank per node on links).
6. Jitter: where ranks wait for each other (every blocking collective, the end of the
   overlapped reductions) a rank on a machine shared with other processes waits on average
   ``jitter`` seconds for a peer that the OS had descheduled. Fitted per link with ``overlap``
   to the measured points (the second calibrated constant); 0 on the named interconnects and in
   every projection (a node to itself). Compute on this machine also depends on how many of its
   2 cores are busy, and the machine's speed moves between minutes: a measured point is
   predicted from the profile ``run`` took beside it (before the cells of each net and batch,
   with as many copies running at once as the layout has ranks; the one nearest in time), else
   from the study's profile with as many copies as the point had ranks
   (``compute_NET_x2.json``); projections from the single-process profile.
"""

import argparse
import json
import os
import sys

from hpcnn.errors import HpcnnError, UsageError
from hpcnn.scaling import alphabeta as ab
from hpcnn.scaling import compute as cm

ASSUMPTIONS = __doc__.split("Assumptions (printed with every report):")[1].strip()
BUCKET_MB = 25.0


class NetShape:
    """What the model needs of a net: layer names and parts, parameter bytes, the head's FC widths
    and in-features, and the gradient buckets of data parallelism and of hybrid's features."""

    def __init__(self, model, bucket_mb=BUCKET_MB):
        from hpcnn.nn.layers import Linear
        from hpcnn.parallel.flatbuf import make_buckets

        self.name = model.name
        layers = model.layers
        self.head_start = model.head_start
        sizes, owner = [], []
        for li, layer in enumerate(layers):
            for p in layer.params():
                sizes.append(int(p.data.size))
                owner.append(li)
        cap = max(1, int(bucket_mb * 2**20) // 4)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.data_buckets = [(4 * (hi - lo), ready) for lo, hi, ready in
                             make_buckets(owner, sizes, cap)]
        nf = sum(1 for li in owner if li < self.head_start)
        self.feature_buckets = [(4 * (hi - lo), ready) for lo, hi, ready in
                                make_buckets(owner[:nf], sizes[:nf], cap)] if nf else []
        self.feature_bytes = 4 * sum(sizes[:nf])
        self.head_bytes = 4 * sum(sizes[nf:])
        head = [layer for layer in layers[self.head_start:] if isinstance(layer, Linear)]
        self.fc_out = [int(layer.weight.full_shape[0]) for layer in head]
        self.fc_in = [int(layer.weight.full_shape[1]) for layer in head]
        self.in_features = int(head[0].weight.full_shape[1]) if head else 0
        self.num_layers = len(layers)

    @classmethod
    def of(cls, net, **kwargs):
        from hpcnn.nn import NETS, build_net

        return cls(build_net(net, NETS[net][2], 10, seed=0, **kwargs))


def _blockdist(n, size, rank):
    from hpcnn.parallel.grid import blockdist

    return blockdist(n, size, rank)


def head_passes(scheme, M, n):
    """Rows of each pass of the head on a model group of ``M`` ranks with ``n`` examples per
    rank (hpcnn.parallel.hybrid): scheme a one pass over the group's ``M n`` examples, b ``M``
    passes of one rank's ``n``, c ``M`` passes of the r-th ``1/M`` of every rank's examples."""
    if scheme == "a":
        return [M * n]
    if scheme == "b":
        return [n] * M
    return [M * c for c in (_blockdist(n, M, r)[0] for r in range(M)) if c]


def collectives(shape, mode, p, n, grid=None, scheme="a"):
    """The collectives one rank (rank 0) runs per step, in order: a list of
    ``(kind, group size, bytes sent, bytes moved, phase)``; bytes sent as the strategies count
    them, bytes moved the collective's payload (a broadcast's non-root sends nothing but moves
    the root's block); phase ``("backward", layer)`` for the overlapped gradient buckets (the
    layer whose backward readies them), "step" otherwise.

    Kinds are the strategies' own (allreduce, allreduce_head, allreduce_loss, allgather,
    reduce_scatter, bcast, reduce), so summing the bytes per kind gives what
    ``Strategy.bytes_per_step`` says."""
    out = []

    def add(kind, group, sent, moved=None, phase="step"):
        out.append((kind, group, sent, sent if moved is None else moved, phase))

    if p <= 1:
        return out
    if mode == "data":
        for nbytes, ready in shape.data_buckets:
            add("allreduce", p, nbytes, phase=("backward", ready))
        return out
    D, M = grid or (1, p)
    if D * M != p:
        raise UsageError(f"grid {D}x{M} does not match {p} ranks")
    F = shape.in_features
    if M > 1:
        add("allgather", M, 8)  # the counts
        add("allgather", M, 8 * n)  # the labels
        counts = [[_blockdist(o, M, r)[0] for r in range(M)] for o in shape.fc_out]

        def head_pass(rows):
            for li in range(1, len(counts)):
                add("allgather", M, 4 * counts[li - 1][0] * rows)
            add("allreduce_loss", M, 8 * rows)
            add("allreduce_loss", M, 16 * rows)
            for li in range(len(counts) - 1, 0, -1):
                add("reduce_scatter", M, 4 * sum(counts[li - 1]) * rows)

        for r, rows in enumerate(head_passes(scheme, M, n)):
            if scheme == "b":
                add("bcast", M, 0 if r else 4 * n * F, 4 * n * F)  # rank r's block
            else:  # a: the whole group's features at once; c: the r-th 1/M of every rank's
                add("allgather", M, 4 * rows // M * F)
            head_pass(rows)
            if scheme == "b":
                add("reduce", M, 4 * n * F)
            else:
                add("reduce_scatter", M, 4 * rows * F)
    if D > 1 and shape.head_bytes:
        mine = sum(4 * _blockdist(o, M, 0)[0] * (i + 1) for o, i in zip(shape.fc_out, shape.fc_in))
        add("allreduce_head", D, mine, phase=("backward", shape.head_start))
    for nbytes, ready in shape.feature_buckets:
        add("allreduce", p, nbytes, phase=("backward", ready))
    return out


def predict_bytes(shape, mode, p, n, grid=None, scheme="a"):
    """Bytes rank 0 hands to each collective kind per step (Strategy.bytes_per_step's count)."""
    out = {}
    for kind, _, nbytes, _, _ in collectives(shape, mode, p, n, grid, scheme):
        out[kind] = out.get(kind, 0) + int(nbytes)
    return out


def _ab_kind(kind):
    return {"allreduce_head": "allreduce", "allreduce_loss": "allreduce"}.get(kind, kind)


def comm_cost(link, kind, group, nbytes):
    """Seconds of one collective of per-rank payload ``nbytes`` on ``link`` ({kind: (alpha,
    beta)}; a kind the link lacks costs as its allreduce). Where the link was also fitted on 2
    ranks alone ("KIND@2"), that fit is used for every group size: on these emulated links 4 and
    8 nodes share the machine's 2 cores (and their TCP stacks with them), so their own fits
    measure the oversubscribed machine more than the link (they are kept in the fit file and
    plotted against their points). A payload of ``ab.BIG`` bytes or more costs by the fit of
    such messages ("KIND@big", "KIND@2@big") where the link has one."""
    k = _ab_kind(kind)
    names = (f"{k}@2", k)
    if nbytes >= ab.BIG:
        names = tuple(f"{n}@big" for n in names) + names
    alpha, beta = next((link[n] for n in names if n in link), None) or link["allreduce"]
    return ab.cost(k, group, nbytes, alpha, beta)


def head_time(prof, rows, n, i, direction, shape_prof=None):
    """Seconds of head layer ``i`` on ``rows`` examples, from ``prof``; where ``prof`` does not
    hold ``rows`` but does hold ``n`` (a profile ``run`` took beside a cell holds that cell's
    batch only) and ``shape_prof`` is given (a profile of several batches: the study's one), its
    time at ``n`` scaled by how ``shape_prof``'s time grows from ``n`` to ``rows``. Scaling in
    proportion to the batch instead would miss that a large head at a small batch costs its
    weights' traffic, whatever the rows: hybrid a's one pass over a group's M n rows then looked
    M times its real cost (owt_cifar's 4096-wide layers at 16 and 32 rows, on an Intel Xeon)."""
    if shape_prof is None or str(rows) in prof["batches"] or str(n) not in prof["batches"]:
        return cm.layer_time(prof, rows, i, direction)
    base = cm.layer_time(shape_prof, n, i, direction)
    if base <= 0:
        return cm.layer_time(prof, rows, i, direction)
    return cm.layer_time(prof, n, i, direction) * cm.layer_time(shape_prof, rows, i,
                                                                  direction) / base


def predict(prof, shape, mode, nodes, ranks_per_node, n, link, overlap=0.0, grid=None,
            scheme="a", jitter=0.0, shape_prof=None):
    """Predicted step of ``mode`` ("data" or "hybrid") on ``nodes`` x ``ranks_per_node`` ranks with
    ``n`` examples per rank, over ``link`` ({kind: (alpha, beta)}). ``jitter``: seconds added at
    every point where the ranks wait for each other (each blocking collective, and the end of
    the overlapped reductions): on a shared machine a rank waits there for a peer that another
    process has preempted (assumption 6). ``shape_prof``: where ``prof`` holds only the batch
    ``n``, the profile whose batch dependence gives hybrid's head passes on other row counts
    (:func:`head_time`). Returns {"step_s", "compute_s", "exposed_s", "wait_s": {kind: s},
    "bytes": {kind: n}, "images_per_s"}."""
    p = nodes * ranks_per_node
    L = len(prof["layers"])
    hs = shape.head_start
    D, M = (grid or (1, p)) if mode == "hybrid" else (p, 1)
    fwd = [cm.layer_time(prof, n, i, "fwd") for i in range(L)]
    bwd = [cm.layer_time(prof, n, i, "bwd") for i in range(L)]
    if mode == "hybrid" and M > 1:  # each pass of the head on R rows, split M ways: 1/M of it
        passes = head_passes(scheme, M, n)
        for i in range(hs, L):
            fwd[i] = sum(head_time(prof, rows, n, i, "fwd", shape_prof) for rows in passes) / M
            bwd[i] = sum(head_time(prof, rows, n, i, "bwd", shape_prof) for rows in passes) / M
    params = (shape.feature_bytes + shape.head_bytes / (M if mode == "hybrid" else 1)) / 4
    loss = cm.loss_time(prof, n)
    opt = cm.optimizer_time(prof, params)
    compute = sum(fwd) + sum(bwd) + loss + opt
    wait, nbytes = {}, {}
    # backward timeline: layer i finishes at done[i]
    done, t = {}, 0.0
    for i in range(L - 1, -1, -1):
        t += bwd[i]
        done[i] = t
    t_end = t
    free = 0.0  # the overlapped reductions, one after another
    blocking = 0.0
    for kind, group, b, moved, phase in collectives(shape, mode, p, n, (D, M), scheme):
        nbytes[kind] = nbytes.get(kind, 0) + int(b)
        overlapped = isinstance(phase, tuple)
        # the buckets run Iallreduce: its own fit where the link has one
        c = comm_cost(link, "iallreduce" if overlapped and "iallreduce" in link else kind,
                      group, moved)
        if overlapped:
            launch = done.get(phase[1], t_end)
            start = max(launch, free)
            if start < t_end and overlap > 0:
                window = t_end - start
                end = start + c / overlap if overlap * window >= c else \
                    t_end + (c - overlap * window)
            else:
                end = max(start, t_end) + c
            free = end
            wait[kind] = wait.get(kind, 0.0) + c
        else:
            blocking += c + jitter
            wait[kind] = wait.get(kind, 0.0) + c + jitter
    exposed = max(0.0, free - t_end) + (jitter if free > 0 else 0.0)
    step = compute + blocking + exposed
    hidden = sum(c for k, c in wait.items()) - blocking - exposed
    return {"step_s": step, "compute_s": compute, "exposed_s": blocking + exposed,
            "hidden_s": max(0.0, hidden), "wait_s": wait, "bytes": nbytes,
            "images_per_s": p * n / step}


def efficiency(prof, shape, mode, nodes, ranks_per_node, n, link, overlap=0.0, grid=None,
               scheme="a"):
    """(speedup over one rank at the same per-rank batch, parallel efficiency)."""
    one = predict(prof, shape, "data", 1, 1, n, link)
    many = predict(prof, shape, mode, nodes, ranks_per_node, n, link, overlap, grid, scheme)
    s = many["images_per_s"] / one["images_per_s"]
    return s, s / (nodes * ranks_per_node)


# files ------------------------------------------------------------------------------------
def load_links(path):
    """{link: {"kinds": {kind: (alpha, beta)}, "overlap": w, "jitter": s}} from
    ``alphabeta.json`` plus the named interconnects (the same alpha and beta for every kind;
    overlap None: not measured, taken as 0; no jitter: dedicated nodes)."""
    links = {}
    if path and os.path.exists(path):
        try:
            with open(path) as f:
                doc = json.load(f)
            for name, v in doc["links"].items():
                links[name] = {"kinds": {k: tuple(x) for k, x in v["kinds"].items()},
                               "overlap": float(v.get("overlap", 0.0)),
                               "jitter": float(v.get("jitter_s", 0.0))}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HpcnnError(f"{path}: not an alpha-beta fit file ({e})") from None
    for name, (alpha, beta) in ab.INTERCONNECTS.items():
        links[name] = {"kinds": {k: (alpha, beta) for k in ab.KINDS}, "overlap": None,
                       "jitter": 0.0}
    return links


MAX_PROFILE_BYTES = 4 << 20  # a compute profile is a few KiB


def load_profile(path):
    """A compute profile (``model compute``'s JSON), checked: HpcnnError (one line) otherwise."""
    try:
        if os.path.getsize(path) > MAX_PROFILE_BYTES:
            raise ValueError(f"larger than {MAX_PROFILE_BYTES >> 20} MiB")
        with open(path) as f:
            prof = json.load(f)
        n = len(prof["layers"])
        if not isinstance(prof["net"], str) or not n or not prof["batches"]:
            raise ValueError("no net, layers or batches")
        if int(prof.get("concurrent", 1)) < 1:
            raise ValueError("concurrent must be a positive count")
        for b, v in prof["batches"].items():
            if int(b) < 1 or len(v["fwd"]) != n or len(v["bwd"]) != n:
                raise ValueError(f"batch {b}: not one time per layer")
            if not all(x >= 0 for x in (*v["fwd"], *v["bwd"], v["loss"], v["optimizer"])):
                raise ValueError(f"batch {b}: a negative time")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise HpcnnError(f"{path}: not a compute profile ({e})") from None
    return prof


def fit_links(comm_dir):
    """Fit every ``comm_<link>_<nodes>_<algo>.json`` of ``comm_dir``: {link: {kind: (a, b)}},
    all node counts of a link in one fit per kind, and the samples' worst relative error."""
    groups = {}
    for name in sorted(os.listdir(comm_dir)):
        if not (name.startswith("comm_") and name.endswith(".json")):
            continue
        with open(os.path.join(comm_dir, name)) as f:
            doc = json.load(f)
        algo = doc.get("allreduce_algorithm", "auto")
        kmap = {"allreduce": {"ring": "allreduce_ring",
                              "recursive_doubling": "allreduce_rd"}.get(algo, "allreduce")}
        for kind, rows in doc["results"].items():
            k = kmap.get(kind, kind)
            for r in rows:
                groups.setdefault(doc["link"], {}).setdefault(k, []).append(
                    (k, doc["ranks"], r["bytes"], r.get("median_us", r["avg_us"]) * 1e-6))
    fits = {}
    for link, kinds in groups.items():
        fits[link] = {}
        for k, samples in kinds.items():
            # one fit over every rank count, and one per rank count ("KIND@P"): on the emulated
            # links 8 ranks share 2 cores, and their TCP stacks with them
            sets = {k: samples}
            ranks = sorted({s[1] for s in samples})
            if len(ranks) > 1:
                sets.update({f"{k}@{p}": [s for s in samples if s[1] == p] for p in ranks})
            for name, sub in sets.items():
                alpha, beta = ab.fit(sub)
                big = ab.fit_big(sub, alpha)
                below = [x for x in sub if x[2] < ab.BIG] if big is not None else sub
                fits[link][name] = _fit_entry(alpha, beta, below)
                if big is not None:  # messages of BIG bytes and more: their own beta
                    fits[link][f"{name}@big"] = _fit_entry(
                        alpha, big, [x for x in sub if x[2] >= ab.BIG])
    return fits


def _fit_entry(alpha, beta, samples):
    worst = max((abs(ab.cost(k, p, n, alpha, beta) / t - 1) for k, p, n, t in samples
                 if t > 0), default=0.0)
    return {"alpha_s": alpha, "beta_s_per_byte": beta,
            "bandwidth_MBps": (1e-6 / beta) if beta else None, "samples": len(samples),
            "ranks": sorted({x[1] for x in samples}), "worst_rel_error": worst}


OVERLAPS = [k / 20 for k in range(21)]
JITTERS = [0.0, 1e-4, 2e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 8e-3]


def point_args(r):
    """(mode, grid, scheme) of a measured CSV row, as :func:`predict` takes them."""
    if r["parallel"] != "hybrid":
        return "data", None, "a"
    return "hybrid", tuple(int(x) for x in r["grid"].split("x")), r["scheme"]


def fit_link_constants(rows, profs, shapes, links):
    """{link: (overlap, jitter)}: the two calibrated constants of each link (assumptions 3 and
    6), by least squares of the relative step-time error over the link's measured points of
    several ranks (a grid search: :data:`OVERLAPS` x :data:`JITTERS`)."""
    out = {}
    for link in sorted({r["link"] for r in rows}):
        pts = [r for r in rows if r["link"] == link and r["ranks"] > 1 and r["net"] in shapes
               and link in links]
        if not pts:
            continue
        best = None
        per_point = [(r, point_args(r), point_profiles(profs, r)) for r in pts]
        for w in OVERLAPS:
            for j in JITTERS:
                err = 0.0
                for r, (mode, grid, scheme), (prof, study) in per_point:
                    pr = predict(prof, shapes[r["net"]],
                                 mode, r["nodes"], r["ranks_per_node"], r["batch_per_rank"],
                                 links[link]["kinds"], w, grid, scheme, j, study)
                    err += (pr["step_s"] / r["step_s_max"] - 1) ** 2
                if best is None or err < best[0] - 1e-12:
                    best = (err, w, j)
        out[link] = best[1:]
    return out


# command line ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def main(argv):
    from hpcnn import argtypes as at
    from hpcnn.nn import NETS

    p = _Parser(prog="python -m hpcnn.scaling model", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    f = sub.add_parser("fit", help="alpha-beta per kind and link from bench comm JSONs")
    f.add_argument("--comm-dir", default="results/scaling/comm")
    f.add_argument("--csv", default="results/scaling/points.csv",
                   help="measured points (the overlap fraction is fitted to them)")
    f.add_argument("--profiles", default="results/scaling")
    f.add_argument("--out", default="results/scaling/alphabeta.json")
    c = sub.add_parser("compute", help="per-layer compute time of a net (timed: take the lock)")
    c.add_argument("--net", required=True)
    c.add_argument("--batches", default="16,64,256")
    c.add_argument("--threads", type=at.thread_count, default=1)
    c.add_argument("--reps", type=at.positive_int, default=5)
    c.add_argument("--out", default=None, help="default results/scaling/compute_NET.json")
    q = sub.add_parser("predict", help="one prediction")
    q.add_argument("--net", required=True)
    q.add_argument("--parallel", default="data")
    q.add_argument("--scheme", default="a")
    q.add_argument("--grid", default=None)
    q.add_argument("--nodes", type=at.positive_int, default=2)
    q.add_argument("--ranks-per-node", type=at.positive_int, default=1)
    q.add_argument("--batch-per-rank", type=at.positive_int, default=64)
    q.add_argument("--link", default="1gbit")
    q.add_argument("--fits", default="results/scaling/alphabeta.json")
    q.add_argument("--profiles", default="results/scaling")
    try:
        a = p.parse_args(argv)
        if a.cmd is None:
            raise UsageError("python -m hpcnn.scaling model: choose fit, compute or predict")
        if getattr(a, "net", None) is not None and a.net not in NETS:
            raise UsageError(f"unknown --net {a.net!r}; choose from {', '.join(NETS)}")
        return {"fit": _cmd_fit, "compute": _cmd_compute, "predict": _cmd_predict}[a.cmd](a)
    except HpcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _write_json(path, doc):
    from hpcnn.atomic import atomic_path

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(doc, f, indent=1)


def _cmd_compute(a):
    import time

    from hpcnn import threads

    try:
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        raise UsageError(f"--batches takes comma-separated integers, got {a.batches!r}") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batches must be positive, got {a.batches!r}")
    threads.pin_env(a.threads)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD  # an entry point; under mpiexec -n K: K copies at once
    threads.apply(a.threads)
    size = comm.Get_size()
    comm.Barrier()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    prof = cm.measure_net(a.net, batches, a.threads, a.reps)
    profs = comm.gather(prof, root=0)
    if comm.Get_rank() != 0:
        return 0
    for b in prof["batches"]:  # the mean over the copies
        for key in ("fwd", "bwd"):
            prof["batches"][b][key] = [sum(q["batches"][b][key][i] for q in profs) / size
                                       for i in range(len(prof["layers"]))]
        for key in ("loss", "optimizer", "step"):
            prof["batches"][b][key] = sum(q["batches"][b][key] for q in profs) / size
    prof["concurrent"] = size
    prof["started_utc"] = started
    prof["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    prof["command"] = (f"{'mpiexec -n %d ' % size if size > 1 else ''}python -m hpcnn.scaling "
                       f"model compute --net {a.net} --batches {a.batches} --threads "
                       f"{a.threads} --reps {a.reps}")
    out = a.out or f"results/scaling/compute_{a.net}{'_x%d' % size if size > 1 else ''}.json"
    _write_json(out, prof)
    for b, v in prof["batches"].items():
        print(f"{a.net} batch {b} ({size} cop{'ies' if size > 1 else 'y'} at once): forward "
              f"{1e3 * sum(v['fwd']):.1f} ms, backward {1e3 * sum(v['bwd']):.1f} ms, optimizer "
              f"{1e3 * v['optimizer']:.1f} ms, whole step {1e3 * v['step']:.1f} ms -> {out}")
    return 0


class ProfileSet(dict):
    """{net: profile} (one process on the machine) and {(net, K): profile} (K at once), as
    :func:`load_profiles` reads them; ``timeline`` holds the profiles ``run`` took beside its
    cells: {(net, K): [(seconds since the epoch, profile), ...]} in time order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timeline = {}


def utc_seconds(text):
    """Seconds since the epoch of a ``2026-12-02T15:13:57Z`` time (ValueError otherwise)."""
    import calendar
    import time

    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def _profile_when(prof, path):
    """The middle of the profile's measurement, in seconds since the epoch."""
    try:
        end = utc_seconds(prof["time_utc"])
        start = utc_seconds(prof.get("started_utc", prof["time_utc"]))
    except (KeyError, TypeError, ValueError):
        raise HpcnnError(f"{path}: a profile beside the cells needs its started_utc and time_utc "
                         f"(YYYY-MM-DDTHH:MM:SSZ)") from None
    return (start + end) / 2


def load_profiles(folder):
    """A :class:`ProfileSet`: {net: profile} of ``compute_NET.json`` (one process on the
    machine), {(net, K): profile} of ``compute_NET_xK.json`` (K processes at once), and in its
    ``timeline`` the profiles of ``FOLDER/profiles/`` (taken by ``run`` beside its cells)."""
    profs = ProfileSet()
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.startswith("compute_") and name.endswith(".json"):
                prof = load_profile(os.path.join(folder, name))
                k = int(prof.get("concurrent", 1))
                profs[prof["net"] if k == 1 else (prof["net"], k)] = prof
    timed = os.path.join(folder, "profiles")
    if os.path.isdir(timed):
        for name in sorted(os.listdir(timed)):
            if name.startswith("compute_") and name.endswith(".json"):
                path = os.path.join(timed, name)
                prof = load_profile(path)
                key = (prof["net"], int(prof.get("concurrent", 1)))
                profs.timeline.setdefault(key, []).append((_profile_when(prof, path), prof))
        for v in profs.timeline.values():
            v.sort(key=lambda x: x[0])
    return profs


PICKS = ("nearest", "fastest")


def profile_for(profs, net, busy, when=None, batch=None, pick="nearest"):
    """The profile of ``net`` measured with ``busy`` processes on the machine, else the
    single-process one (None when there is none). With ``batch`` and ``when`` (a CSV row's
    ``time_utc``), a profile that ``run`` took beside the cells, holding that batch, where there
    is one: ``pick`` "nearest" the one taken nearest in time (a shared machine's speed moves
    between minutes), "fastest" the one with the shortest whole step (the least disturbed)."""
    if batch is not None:
        cands = beside_profiles(profs, net, busy, batch)
        if cands and pick == "fastest":
            return min(cands, key=lambda x: whole_step(x[1], batch))[1]
        near = nearest_profile(profs, net, busy, when, batch)
        if near is not None:
            return near[1]
    return profs.get((net, busy)) if busy > 1 and (net, busy) in profs else profs.get(net)


def point_profiles(profs, r, pick="nearest"):
    """(profile, study profile) of a measured row ``r``: the profile ``run`` took beside it
    (:func:`profile_for`, ``pick``; None: the study's one), and the study's one profile of its
    net and process count, whose batch dependence :func:`head_time` borrows."""
    study = profile_for(profs, r["net"], r["ranks"])  # all ranks on this one machine
    if pick is None:
        return study, study
    return profile_for(profs, r["net"], r["ranks"], r.get("time_utc"), r["batch_per_rank"],
                       pick), study


def whole_step(prof, batch):
    """Seconds of a whole training step at ``batch`` in ``prof`` (the sum of its parts where
    the profile has no whole step)."""
    v = prof["batches"][str(batch)]
    return v.get("step", sum(v["fwd"]) + sum(v["bwd"]) + v["loss"] + v["optimizer"])


def beside_profiles(profs, net, busy, batch):
    """[(seconds since the epoch, profile)] of the timeline's profiles holding ``batch``."""
    timeline = getattr(profs, "timeline", {}).get((net, busy), [])
    return [(w, p) for w, p in timeline if str(batch) in p["batches"]]


def nearest_profile(profs, net, busy, when, batch):
    """(seconds between, profile) of the timeline's profile holding ``batch`` nearest ``when``,
    or None."""
    cands = beside_profiles(profs, net, busy, batch) if when is not None else []
    if not cands:
        return None
    try:
        t = utc_seconds(when)
    except (TypeError, ValueError):
        raise HpcnnError(f"a point's time_utc {when!r} is not a time "
                         f"(YYYY-MM-DDTHH:MM:SSZ)") from None
    return min(((abs(t - w), p) for w, p in cands), key=lambda x: x[0])


def _cmd_fit(a):
    from hpcnn.scaling.csvio import read_rows

    if not os.path.isdir(a.comm_dir):
        raise UsageError(f"--comm-dir {a.comm_dir}: no such folder (run python -m "
                         f"hpcnn.scaling run --comm ... first)")
    fits = fit_links(a.comm_dir)
    links = {name: {"kinds": {k: (v["alpha_s"], v["beta_s_per_byte"]) for k, v in kinds.items()},
                    "overlap": 0.0} for name, kinds in fits.items()}
    consts = {}
    if a.csv and os.path.exists(a.csv):
        from hpcnn.scaling.csvio import best_rows

        rows = best_rows(read_rows(a.csv))
        profs = load_profiles(a.profiles)
        shapes = {n: NetShape.of(n) for n in profs if isinstance(n, str)}
        consts = fit_link_constants(rows, profs, shapes, links)
    doc = {"command": "python -m hpcnn.scaling model fit --comm-dir " + a.comm_dir,
           "links": {name: {"kinds": {k: [v["alpha_s"], v["beta_s_per_byte"]]
                                      for k, v in fits[name].items()},
                            "overlap": consts.get(name, (0.0, 0.0))[0],
                            "jitter_s": consts.get(name, (0.0, 0.0))[1], "detail": fits[name]}
                     for name in fits}}
    _write_json(a.out, doc)
    for name, kinds in fits.items():
        w, j = consts.get(name, (0.0, 0.0))
        print(f"link {name} (overlap {w:.2f}, jitter {1e3 * j:.1f} ms per wait):")
        for k, v in kinds.items():
            bw = f"{v['bandwidth_MBps']:.0f} MB/s" if v["bandwidth_MBps"] else "-"
            print(f"  {k:<15} alpha {1e6 * v['alpha_s']:9.2f} us  beta^-1 {bw:>12}  "
                  f"({v['samples']} samples on {v['ranks']} ranks, worst error "
                  f"{100 * v['worst_rel_error']:.0f}%)")
    print(f"-> {a.out}")
    return 0


def _cmd_predict(a):
    from hpcnn.parallel.factory import parse_grid

    links = load_links(a.fits)
    if a.link not in links:
        raise UsageError(f"unknown --link {a.link!r}; known: {', '.join(links)}")
    profs = load_profiles(a.profiles)
    if a.net not in profs:
        raise UsageError(f"no compute profile of {a.net} in {a.profiles} (run python -m "
                         f"hpcnn.scaling model compute --net {a.net})")
    if a.parallel not in ("data", "hybrid"):
        raise UsageError(f"--parallel takes data or hybrid, got {a.parallel!r}")
    grid = parse_grid(a.grid) if a.grid else None
    lk = links[a.link]
    w = lk["overlap"] if lk["overlap"] is not None else 0.0
    shape = NetShape.of(a.net)
    r = predict(profs[a.net], shape, a.parallel, a.nodes, a.ranks_per_node, a.batch_per_rank,
                lk["kinds"], w, grid, a.scheme)
    s, e = efficiency(profs[a.net], shape, a.parallel, a.nodes, a.ranks_per_node,
                      a.batch_per_rank, lk["kinds"], w, grid, a.scheme)
    print(f"{a.net} {a.parallel}{' ' + a.scheme if a.parallel == 'hybrid' else ''} on "
          f"{a.nodes} node(s) x {a.ranks_per_node} over {a.link}, batch {a.batch_per_rank}/rank: "
          f"{r['images_per_s']:.1f} img/s, step {1e3 * r['step_s']:.1f} ms (compute "
          f"{1e3 * r['compute_s']:.1f}, exposed comm {1e3 * r['exposed_s']:.1f}), speedup "
          f"{s:.2f}x, efficiency {100 * e:.0f}%")
    for k, v in r["wait_s"].items():
        print(f"  {k:<15} {1e3 * v:9.2f} ms  {r['bytes'][k] / 2**20:9.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
