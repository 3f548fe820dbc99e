"""The whole node, best layout against best layout: ``python -m hpcnn.bench node``.

A node of ``--cores`` cores can train as R ranks x T threads for every R*T = cores (on our
2-core machines: 1 rank x 2 threads, or 2 ranks x 1 thread). This benchmark runs every layout for
hpcnn and for PyTorch (threads in one process, or DistributedDataParallel over gloo with R ranks:
PyTorch's own best ways to fill a node), in alternating rounds in one invocation, keeps each
configuration's best round (the machines are noisy; the best run is the least disturbed), and
compares hpcnn's best layout with PyTorch's best layout.

Each process trains with ``--batch-per-rank`` images per step (default: the net's reference
batch), so every layout runs the same per-process work; the workers are those of
``python -m hpcnn.bench scaling`` (synthetic data, the net's solver, rank 0's convolution
choices shared by all ranks).
"""

import argparse
import copy
import json
import os
import sys

from hpcnn import heap
from hpcnn.bench import scaling


def layouts(cores):
    """[(ranks, threads)] with ranks * threads == cores, fewest ranks first."""
    return [(r, cores // r) for r in range(1, cores + 1) if cores % r == 0]


def main(argv):
    from hpcnn.nn import NETS

    p = argparse.ArgumentParser(prog="python -m hpcnn.bench node",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="cifar10_quick", choices=list(NETS))
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                   help="cores of the node to fill (default: all)")
    p.add_argument("--batch-per-rank", type=int, default=None,
                   help="images per process and step (default: the net's reference batch)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (JIT, caches)")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="gradient bucket cap (MiB)")
    p.add_argument("--rounds", type=int, default=3, help="alternating runs; best is kept")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    heap.add_option(p)
    p.add_argument("--timeout", type=int, default=600, help="seconds per launch")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.cores < 1 or a.rounds < 1 or a.steps < 1:
        p.error("--cores, --rounds and --steps must be >= 1")
    if scaling._mpiexec() is None:
        print("error: no mpiexec found (beside python or on PATH)", file=sys.stderr)
        return 2
    if a.batch_per_rank is None:
        a.batch_per_rank = NETS[a.net][1].batch_size
    impls = ["hpcnn"] + (["torch"] if scaling._have_torch() and not a.no_torch else [])
    lays = layouts(a.cores)
    print(f"node benchmark: {a.net}, {a.cores} cores as {', '.join(f'{r}x{t}' for r, t in lays)}"
          f" (ranks x threads), {a.batch_per_rank} images per process and step, {a.steps} timed "
          f"steps after {a.warmup} warm-up, best of {a.rounds} alternating rounds"
          + (f"; PyTorch's heap: {a.torch_heap}" if "torch" in impls else ""), flush=True)
    best = {}
    for rnd in range(a.rounds):
        for r, t in lays:
            for impl in impls:
                run = copy.copy(a)
                run.threads = t
                res = scaling._spawn(run, r, impl)
                key = (impl, r, t)
                if key not in best or res["images_per_second"] > best[key]["images_per_second"]:
                    best[key] = res
        print(f"  round {rnd + 1}: done", flush=True)

    print(f"\n{'layout':>8} " + " ".join(f"{i + ' img/s':>12}" for i in impls)
          + (f" {'hpcnn/torch':>12}" if "torch" in impls else ""))
    rows = []
    for r, t in lays:
        row = {"ranks": r, "threads": t}
        line = f"{f'{r}x{t}':>8} "
        for impl in impls:
            row[impl] = best[(impl, r, t)]["images_per_second"]
            line += f"{row[impl]:>12.1f} "
        if "torch" in impls:
            row["ratio_vs_torch"] = row["hpcnn"] / row["torch"]
            line += f"{row['ratio_vs_torch']:>11.2f}x"
        rows.append(row)
        print(line)
    summary = {}
    for impl in impls:
        top = max(rows, key=lambda w, i=impl: w[i])
        summary[impl] = {"layout": f"{top['ranks']}x{top['threads']}",
                         "images_per_second": top[impl]}
    line = (f"\nbest layout: hpcnn {summary['hpcnn']['layout']} "
            f"{summary['hpcnn']['images_per_second']:.1f} img/s")
    if "torch" in summary:
        summary["ratio_best_vs_best"] = (summary["hpcnn"]["images_per_second"]
                                         / summary["torch"]["images_per_second"])
        line += (f" | PyTorch {summary['torch']['layout']} "
                 f"{summary['torch']['images_per_second']:.1f} img/s | best against best "
                 f"{summary['ratio_best_vs_best']:.2f}x")
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"net": a.net, "cores": a.cores, "batch_per_rank": a.batch_per_rank,
                       "steps": a.steps, "rounds": a.rounds, "torch_heap": a.torch_heap,
                       "layouts": rows,
                       "summary": summary}, f, indent=1)
    return 0
