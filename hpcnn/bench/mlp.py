"""The MLP width study of "R for Deep Learning (II)" (ParallelR): ``python -m hpcnn.bench mlp``.

784-H-10 (ReLU) on MNIST for hidden widths H in 32 .. 1024: seconds per training epoch
(evaluation excluded) and test accuracy after ``--epochs`` epochs, for

- ``hpcnn-1t``, ``hpcnn-2t``: ``python -m hpcnn.train --net mlp --hidden H`` with 1 and 2 threads;
- ``hpcnn-2r``: the same under ``mpiexec -n 2`` (1 thread per rank, same global batch);
- ``torch-1t``, ``torch-2t``: PyTorch, the same network (its initial weights copied from hpcnn's
  for the same seed), the same optimizer (SGD, momentum 0.9, weight decay 1e-4, biases at twice
  the rate, the "inv" schedule per step), batch and threads; skipped when torch is missing;

all in the same invocation, each in its own process (threads pinned before numpy, numba or torch
load). The blog compared R's H2O with its own R code; here PyTorch is the peer.

``--json PATH`` merges the new rows into PATH (so the study can run in several parts) and
``--markdown PATH`` writes the whole table of the JSON file as Markdown.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

WIDTHS = (32, 64, 128, 256, 512, 1024)
CONFIGS = ("hpcnn-1t", "hpcnn-2t", "hpcnn-2r", "torch-1t", "torch-2t")


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def run_hpcnn(hidden, threads, ranks, epochs, data_dir, seed):
    """One ``hpcnn.train`` run; returns its last epoch's seconds and test accuracy."""
    with tempfile.TemporaryDirectory(prefix="hpcnn-mlp-") as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        cmd = [sys.executable, "-m", "hpcnn.train", "--net", "mlp", "--hidden", str(hidden),
               "--dataset", "mnist", "--epochs", str(epochs), "--threads", str(threads),
               "--seed", str(seed), "--metrics", metrics, "--log-interval", "1000"]
        if data_dir:
            cmd += ["--data-dir", data_dir]
        if ranks > 1:
            cmd = [_mpiexec(), "-n", str(ranks), *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if r.returncode != 0:
            raise RuntimeError(f"hpcnn.train failed ({r.returncode}): {r.stderr[-2000:]}")
        records = [json.loads(line) for line in open(metrics) if line.strip()]
    rec = [x for x in records if "test_accuracy" in x and "epoch" in x][-1]
    batch = 64  # the mlp solver's batch (hpcnn.nn.nets.NETS["mlp"])
    images = rec["step"] * batch  # over all epochs so far; images_per_second is their mean
    return {"seconds_per_epoch": images / rec["images_per_second"] / rec["epoch"],
            "test_accuracy": rec["test_accuracy"]}


def torch_worker(hidden, threads, epochs, data_dir, seed):
    """Train the same MLP with PyTorch in this process; prints one RESULT line."""
    from hpcnn import threads as thr

    thr.pin_env(threads)
    import numpy as np
    import torch

    from hpcnn.data import load_dataset
    from hpcnn.nn import NETS, build_net

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(seed)
    solver = NETS["mlp"][1]
    ds = load_dataset("mnist", data_dir)
    ref = build_net("mlp", (1, 28, 28), 10, seed=seed, hidden=hidden)
    lin = [layer for layer in ref.layers if hasattr(layer, "weight")]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, hidden),
                                torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    with torch.no_grad():
        for mod, src in zip([model[1], model[3]], lin):
            mod.weight.copy_(torch.from_numpy(np.asarray(src.weight.data)))
            mod.bias.copy_(torch.from_numpy(np.asarray(src.bias.data)))
    weights = [model[1].weight, model[3].weight]
    biases = [model[1].bias, model[3].bias]
    opt = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 2 * solver.lr}],
                          lr=solver.lr, momentum=solver.momentum,
                          weight_decay=solver.weight_decay)
    g, p = solver.policy_args["gamma"], solver.policy_args["power"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 + g * it) ** (-p))
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(np.ascontiguousarray(ds.x_train, np.float32))
    y = torch.from_numpy(np.asarray(ds.y_train, np.int64))
    b = solver.batch_size
    steps = len(x) // b
    train_s = 0.0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        t = time.perf_counter()
        for i in range(steps):
            idx = order[i * b:(i + 1) * b]
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        train_s += time.perf_counter() - t
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(ds.x_test, np.float32))
        pred = model(xt).argmax(dim=1).numpy()
    acc = float(np.mean(pred == np.asarray(ds.y_test)))
    print("RESULT " + json.dumps({"seconds_per_epoch": train_s / epochs, "test_accuracy": acc}),
          flush=True)


def run_torch(hidden, threads, epochs, data_dir, seed):
    cmd = [sys.executable, "-m", "hpcnn.bench.mlp", "--worker", "--hidden", str(hidden),
           "--threads", str(threads), "--epochs", str(epochs), "--seed", str(seed)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"torch worker failed: {r.stderr[-2000:]}")


def run_config(config, hidden, epochs, data_dir, seed):
    impl, where = config.split("-")
    n = int(where[:-1])
    if impl == "hpcnn":
        return run_hpcnn(hidden, 1 if where.endswith("r") else n,
                         n if where.endswith("r") else 1, epochs, data_dir, seed)
    return run_torch(hidden, n, epochs, data_dir, seed)


def markdown(table):
    """The study as a Markdown table: one row per width, seconds per epoch (test accuracy)."""
    configs = [c for c in CONFIGS if any(c in row for row in table["rows"].values())]
    head = "| H | " + " | ".join(configs) + " |"
    lines = [head, "|" + "---|" * (len(configs) + 1)]
    for h in sorted(table["rows"], key=int):
        row = table["rows"][h]
        cells = [f"{row[c]['seconds_per_epoch']:.2f} s ({100 * row[c]['test_accuracy']:.2f}%)"
                 if c in row else "-" for c in configs]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(prog="python -m hpcnn.bench mlp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default=",".join(map(str, WIDTHS)))
    p.add_argument("--configs", default=",".join(CONFIGS), help=", ".join(CONFIGS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="default: $HPCNN_DATA or the cache")
    p.add_argument("--json", default=None, help="merge the rows into this JSON file")
    p.add_argument("--markdown", default=None, help="write the JSON file's table here")
    a = p.parse_args(argv)
    try:
        widths = [int(w) for w in a.widths.split(",")]
    except ValueError:
        widths = []
    configs = a.configs.split(",")
    if not widths or min(widths) < 1 or any(c not in CONFIGS for c in configs) or a.epochs < 1:
        print(f"error: --widths must be positive integers, --configs from {', '.join(CONFIGS)}"
              f", --epochs >= 1", file=sys.stderr)
        return 2
    from hpcnn.bench.ops import cpu_model
    from hpcnn.bench.train import have_torch

    if not have_torch():
        configs = [c for c in configs if not c.startswith("torch")]
        print("note: PyTorch is not installed: no torch columns")
    if "hpcnn-2r" in configs and _mpiexec() is None:
        print("note: no mpiexec: no hpcnn-2r column")
        configs.remove("hpcnn-2r")
    table = {"cpu": cpu_model(), "epochs": a.epochs, "rows": {}}
    if a.json and os.path.exists(a.json):
        table = json.load(open(a.json))
        if table.get("epochs") != a.epochs:
            print(f"error: {a.json} holds a {table.get('epochs')}-epoch study; this run is "
                  f"{a.epochs}", file=sys.stderr)
            return 2
    print(f"MLP 784-H-10 on MNIST, {a.epochs} epoch(s), batch 64, SGD momentum 0.9, on "
          f"{table['cpu']}; seconds per epoch (test accuracy)", flush=True)
    for h in widths:
        row = table["rows"].setdefault(str(h), {})
        for c in configs:
            r = run_config(c, h, a.epochs, a.data_dir, a.seed)
            row[c] = r
            print(f"H {h:5d} {c:9s} {r['seconds_per_epoch']:7.2f} s/epoch  "
                  f"{100 * r['test_accuracy']:.2f}%", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(table, f, indent=1)
    print()
    print(markdown(table))
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(table) + "\n")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    w = ap.parse_args()
    torch_worker(w.hidden, w.threads, w.epochs, w.data_dir, w.seed)
