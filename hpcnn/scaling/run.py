"""The study's driver: ``python -m hpcnn.scaling run`` launches one ``point`` per cell of a matrix
and appends them all to one CSV; ``--comm`` adds communication-only points (``hpcnn.bench comm``).

A layout is ``NODESxRANKS_PER_NODE:LINK``. ``1xR:shm`` runs ``mpiexec -n R`` on this machine
(ranks talk through shared memory); a layout with several nodes brings up an emulated cluster
(``jobs/cluster-local.sh up --nodes K --link LINK``: network namespaces joined by a bridge, each
node's link shaped with tc tbf; root only), runs every point of that layout through
``jobs/cluster-local.sh mpiexec``, and always tears it down. One rank runs data parallelism only
(the serial baseline).

Before the cells of each (layout, net, batch) the net's compute profile is taken at that batch,
with as many copies at once as the layout has ranks (``model compute``, into ``--profile-dir``):
the model predicts each point from the profile taken nearest in time to it, since a shared
machine's speed moves between minutes. Every point and profile of the study shares one autotune
cache (``--autotune-cache``), so all of them run the same kernels.

``--skip-done`` skips cells the CSV already holds and ``--max-seconds`` stops before starting a
cell past that time, so a long study runs in chunks::

    flock /tmp/hpcnn-timing.lock python -m hpcnn.scaling run --max-seconds 420 --skip-done ...
"""

import argparse
import itertools
import os
import re
import subprocess
import sys
import time

from hpcnn.errors import HpcnnError, UsageError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(REPO, "jobs", "cluster-local.sh")
MODES = ("data", "a", "b", "c")  # data parallelism, hybrid schemes a, b, c


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def parse_layout(text):
    """``"2x1:1gbit"`` -> (2, 1, "1gbit"); UsageError otherwise."""
    m = re.fullmatch(r"(\d+)x(\d+):([A-Za-z0-9.]+)", text.strip())
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise UsageError(f"a layout looks like NODESxRANKS_PER_NODE:LINK (1x2:shm, 2x1:1gbit), "
                         f"got {text!r}")
    nodes, per, link = int(m[1]), int(m[2]), m[3]
    if nodes == 1 and link != "shm":
        raise UsageError(f"layout {text!r}: one node has no link; write 1x{per}:shm")
    if nodes > 1 and link == "shm":
        raise UsageError(f"layout {text!r}: several nodes need a link rate (1gbit, 10gbit, ...)")
    return nodes, per, link


def _csv_list(text, what, allowed=None, cast=str):
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UsageError(f"{what} is empty")
    try:
        items = [cast(t) for t in items]
    except ValueError:
        raise UsageError(f"{what}: expected a comma-separated list, got {text!r}") from None
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise UsageError(f"{what}: unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    if cast is int and min(items) < 1:
        raise UsageError(f"{what}: every value must be positive, got {text!r}")
    return items


def build_parser():
    from hpcnn import argtypes as at

    p = _Parser(prog="python -m hpcnn.scaling run", description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", default="1x1:shm,1x2:shm,2x1:10gbit,2x1:1gbit",
                   help="NODESxRANKS_PER_NODE:LINK, comma-separated")
    p.add_argument("--nets", default="cifar10_quick,owt_cifar")
    p.add_argument("--modes", default="data,a,b,c", help="data and/or hybrid schemes a, b, c")
    p.add_argument("--batches", default="16,64,256", help="per-rank batch sizes")
    p.add_argument("--global-batches", default=None,
                   help="global batch sizes instead (each split over the ranks)")
    p.add_argument("--steps", type=at.positive_int, default=5)
    p.add_argument("--warmup", type=at.nonneg_int, default=2)
    p.add_argument("--min-seconds", type=at.nonneg_float, default=3.0,
                   help="each point times at least this long (more steps than --steps)")
    p.add_argument("--threads", type=at.thread_count, default=1)
    p.add_argument("--seed", type=at.seed_int, default=0)
    p.add_argument("--csv", default="results/scaling/points.csv")
    p.add_argument("--only", default=None,
                   help="run only cells whose label matches this regular expression "
                        "(labels: NET/MODE/bBATCH/NODESxPER:LINK)")
    p.add_argument("--skip-done", action="store_true",
                   help="skip cells the CSV already holds --repeat times")
    p.add_argument("--repeat", type=at.positive_int, default=1,
                   help="rows wanted per cell with --skip-done (the report keeps each cell's "
                        "fastest: the least disturbed run on a shared machine)")
    p.add_argument("--max-seconds", type=at.positive_float, default=None,
                   help="start no cell after this many seconds (run again to go on)")
    p.add_argument("--comm", default=None,
                   help="communication-only points instead: NODES:LINK,... (e.g. 2:1gbit,"
                        "4:1gbit,8:1gbit,2:shm); bench comm JSON files go to --comm-dir")
    p.add_argument("--comm-dir", default="results/scaling/comm")
    p.add_argument("--comm-max-bytes", type=at.positive_int, default=64 << 20,
                   help="largest message (past data parallelism's 25 MiB gradient buckets)")
    p.add_argument("--comm-budget", type=at.positive_float, default=0.3,
                   help="seconds per size and kind")
    p.add_argument("--profile-dir", default=None,
                   help="compute profiles taken beside the cells (default: the CSV's folder's "
                        "profiles/)")
    p.add_argument("--no-profiles", action="store_true",
                   help="take no compute profiles beside the cells")
    p.add_argument("--profile-reps", type=at.positive_int, default=3,
                   help="timed repetitions of each layer in a profile")
    p.add_argument("--autotune-cache", default=None,
                   help="the autotune cache every point and profile shares (default: "
                        "$HPCNN_AUTOTUNE_CACHE, else autotune.json beside the CSV)")
    p.add_argument("--cluster-name", default=None, help="emulated cluster name (default sc<pid>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--timeout", type=at.positive_int, default=900, help="seconds per launch")
    return p


def parse_args(argv):
    a = build_parser().parse_args(argv)
    from hpcnn.nn import NETS

    a.layouts = [parse_layout(t) for t in _csv_list(a.layouts, "--layouts")]
    a.nets = _csv_list(a.nets, "--nets", list(NETS))
    a.modes = _csv_list(a.modes, "--modes", MODES)
    if a.global_batches is not None:
        a.global_batches = _csv_list(a.global_batches, "--global-batches", cast=int)
        a.batches = None
    else:
        a.batches = _csv_list(a.batches, "--batches", cast=int)
    if a.only is not None:
        try:
            a.only = re.compile(a.only)
        except re.error as e:
            raise UsageError(f"--only is not a regular expression: {e}") from None
    if a.comm is not None:
        a.comm = [_comm_spec(t) for t in _csv_list(a.comm, "--comm")]
    a.cluster_name = a.cluster_name or f"sc{os.getpid() % 100000}"
    folder = os.path.dirname(os.path.abspath(a.csv))
    a.profile_dir = os.path.abspath(a.profile_dir or os.path.join(folder, "profiles"))
    if a.autotune_cache is None:
        a.autotune_cache = os.environ.get("HPCNN_AUTOTUNE_CACHE",
                                          os.path.join(folder, "autotune.json"))
    if a.autotune_cache:  # the points run in the repository: a path from here, made absolute
        a.autotune_cache = os.path.abspath(a.autotune_cache)  # (empty: no cache file at all)
    return a


def _comm_spec(text):
    m = re.fullmatch(r"(\d+):([A-Za-z0-9.]+)", text)
    if not m or int(m[1]) < 2:
        raise UsageError(f"--comm takes NODES:LINK with NODES >= 2 (2:1gbit, 2:shm), got {text!r}")
    return int(m[1]), m[2]


def cells(a):
    """(label, layout, net, mode, batch argument) of every point, grouped by layout, then net,
    then batch (the cells that share a compute profile run one after another)."""
    out = []
    batches = a.batches or a.global_batches
    for (nodes, per, link), net, b, mode in itertools.product(a.layouts, a.nets, batches,
                                                              a.modes):
        ranks = nodes * per
        if ranks == 1 and mode != "data":
            continue  # one rank: the serial baseline only
        if a.global_batches and b % ranks:
            continue
        label = f"{net}/{mode}/{'g' if a.global_batches else 'b'}{b}/{nodes}x{per}:{link}"
        if a.only is not None and not a.only.search(label):
            continue
        out.append((label, (nodes, per, link), net, mode, b))
    return out


def done_labels(path, global_batches):
    """{label: rows} of the cells a CSV already holds."""
    from hpcnn.scaling.csvio import read_rows

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    out = {}
    for r in read_rows(path):
        mode = r["scheme"] if r["parallel"] == "hybrid" else "data"
        b = f"g{r['global_batch']}" if global_batches else f"b{r['batch_per_rank']}"
        label = f"{r['net']}/{mode}/{b}/{r['nodes']}x{r['ranks_per_node']}:{r['link']}"
        out[label] = out.get(label, 0) + 1
    return out


def point_argv(a, net, mode, b, link):
    argv = ["--net", net, "--parallel", "data" if mode == "data" else "hybrid"]
    if mode != "data":
        argv += ["--scheme", mode]
    argv += ["--global-batch" if a.global_batches else "--batch-per-rank", str(b),
             "--steps", str(a.steps), "--warmup", str(a.warmup),
             "--min-seconds", f"{a.min_seconds:g}", "--seed", str(a.seed),
             "--link", link, "--csv", _repo_path(a.csv), "--threads", str(a.threads)]
    return argv


def _repo_path(path):
    """``path`` relative to the repository when inside it (the points run there), else absolute;
    the CSV's command column then reads the same on every machine."""
    full = os.path.abspath(path)
    return os.path.relpath(full, REPO) if full.startswith(REPO + os.sep) else full


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def launch(layout, a, cmd):
    """The full command line running ``cmd`` (a list) on ``layout``'s ranks."""
    nodes, per, _ = layout
    if nodes == 1:
        return [mpiexec(), "-n", str(per), *cmd]
    return [CLUSTER, "--name", a.cluster_name, "mpiexec", "-ppn", str(per), "-n",
            str(nodes * per), "--", *cmd]


class Cluster:
    """``jobs/cluster-local.sh up`` on entry (for a layout of several nodes), ``down`` always."""

    def __init__(self, a, nodes, link):
        self.a, self.nodes, self.link = a, nodes, link

    def __enter__(self):
        if self.nodes > 1 and not self.a.dry_run:
            if os.geteuid() != 0:
                raise UsageError(f"{self.nodes} emulated nodes need root (network namespaces); "
                                 f"run as root or use layouts of one node (1xR:shm)")
            self._cmd(["up", "--nodes", str(self.nodes), "--link", self.link])
        return self

    def __exit__(self, *exc):
        if self.nodes > 1 and not self.a.dry_run:
            self._cmd(["down"], check=False)
        return False

    def _cmd(self, args, check=True):
        r = subprocess.run([CLUSTER, "--name", self.a.cluster_name, *args], capture_output=True,
                           text=True)
        if check and r.returncode:
            raise HpcnnError(f"cluster-local.sh {' '.join(args)} failed (exit {r.returncode}): "
                             f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")


def profile_cmd(a, net, b, copies):
    """The command that takes ``net``'s compute profile at per-rank batch ``b`` with ``copies``
    processes at once, into a new file of ``--profile-dir``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = os.path.join(a.profile_dir, f"compute_{net}_x{copies}_b{b}_{stamp}.json")
    cmd = [sys.executable, "-m", "hpcnn.scaling", "model", "compute", "--net", net,
           "--batches", str(b), "--threads", str(a.threads), "--reps", str(a.profile_reps),
           "--out", _repo_path(out)]
    return launch((1, copies, "shm"), a, cmd)


def _run_one(cmd, a, label):
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {' '.join(cmd)}", flush=True)
    if a.dry_run:
        return True
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HPCNN_AUTOTUNE_CACHE=a.autotune_cache)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout, env=env,
                           cwd=REPO)
    except subprocess.TimeoutExpired:
        print(f"  {label}: timed out after {a.timeout} s", flush=True)
        return False
    out = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode:
        print(f"  {label}: failed (exit {r.returncode}): {r.stderr.strip()[-600:]}", flush=True)
        return False
    print(f"  {out}", flush=True)
    return True


def check_autotune_cache(path):
    """An unusable autotune cache file is one line and exit 2 before any cell runs (each point
    would only warn and tune in memory, and the study's cells would not share their kernels)."""
    if not path or not os.path.exists(path):
        return
    from hpcnn.kernels import autotune, conv

    old = os.environ.get("HPCNN_AUTOTUNE_CACHE")
    os.environ["HPCNN_AUTOTUNE_CACHE"] = path
    try:
        autotune.Autotuner(conv.ALGOS).check_cache()
    finally:
        if old is None:
            os.environ.pop("HPCNN_AUTOTUNE_CACHE")
        else:
            os.environ["HPCNN_AUTOTUNE_CACHE"] = old


def run_points(a):
    check_autotune_cache(a.autotune_cache)
    t0 = time.monotonic()
    todo = cells(a)
    if a.skip_done:
        done = done_labels(a.csv, bool(a.global_batches))
        todo = [c for c in todo if done.get(c[0], 0) < a.repeat]
    print(f"{len(todo)} point(s) to run -> {a.csv}", flush=True)
    failed = ran = 0
    for layout, group in itertools.groupby(todo, key=lambda c: c[1]):
        group = list(group)
        if a.max_seconds and time.monotonic() - t0 > a.max_seconds:
            break
        ranks = layout[0] * layout[1]
        with Cluster(a, layout[0], layout[2]):
            profiled = None
            for label, _, net, mode, b in group:
                if a.max_seconds and time.monotonic() - t0 > a.max_seconds:
                    print(f"stopping: --max-seconds {a.max_seconds:g} reached", flush=True)
                    break
                per_rank = b if a.batches else b // ranks
                if not a.no_profiles and profiled != (net, per_rank):
                    profiled = (net, per_rank)
                    failed += not _run_one(profile_cmd(a, net, per_rank, ranks), a,
                                           f"profile {net} b{per_rank} x{ranks}")
                cmd = [sys.executable, "-m", "hpcnn.scaling", "point",
                       *point_argv(a, net, mode, b, layout[2])]
                ok = _run_one(launch(layout, a, cmd), a, label)
                ran += 1
                failed += not ok
    left = len(todo) - ran
    print(f"ran {ran} point(s), {failed} failed, {left} left", flush=True)
    return 1 if failed else 0


def run_comm(a):
    os.makedirs(a.comm_dir, exist_ok=True)
    failed = 0
    for nodes, link in a.comm:
        layout = (1, nodes, "shm") if link == "shm" else (nodes, 1, link)
        with Cluster(a, layout[0], link):
            for algo in ("auto", "ring", "recursive_doubling"):
                kinds = ",".join(("allreduce", "iallreduce", "reduce_scatter", "allgather",
                                  "bcast", "reduce", "alltoall")) if algo == "auto" else "allreduce"
                out = os.path.abspath(os.path.join(a.comm_dir, f"comm_{link}_{nodes}_{algo}.json"))
                cmd = [sys.executable, "-m", "hpcnn.bench", "comm", "--kinds", kinds,
                       "--allreduce-algorithm", algo, "--factor", "4",
                       "--max-bytes", str(a.comm_max_bytes), "--budget", str(a.comm_budget),
                       "--iter-scale", "0.2", "--link", link, "--json", out]
                failed += not _run_one(launch(layout, a, cmd), a, f"comm {nodes}:{link} {algo}")
    return 1 if failed else 0


def main(argv):
    try:
        a = parse_args(argv)
        return run_comm(a) if a.comm else run_points(a)
    except HpcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
