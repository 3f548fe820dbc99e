"""Training throughput: ``python -m hpcnn.bench train --net cifar10_quick [--threads 1,2]``.

Each (implementation, thread count) runs in its own process, so that thread pools are pinned
before numpy, numba or torch load. hpcnn and PyTorch (when installed) train the identical network
with identical settings (synthetic data, the net's reference batch and solver) in the same
invocation, alternating, and the best of ``--rounds`` is kept for each: the machines are noisy, and
the best run is the one least disturbed. The hpcnn worker also times every layer's forward and
backward, to show where the time goes.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from hpcnn import heap


def _worker_hpcnn(net_name, batch, steps, warmup, seed):
    from functools import partial

    import numpy as np

    from hpcnn.data import load_dataset
    from hpcnn.nn import NETS, build_net
    from hpcnn.optim import SGD
    from hpcnn.parallel import DataParallel

    _, solver, shape = NETS[net_name]
    ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train=batch * 4,
                      synthetic_test=10, seed=seed)
    model = build_net(net_name, shape, 10, seed=seed)
    dp = DataParallel(None, model, partial(SGD, lr=solver.lr, momentum=solver.momentum,
                                           weight_decay=solver.weight_decay))
    batches = [(ds.x_train[i * batch:(i + 1) * batch], ds.y_train[i * batch:(i + 1) * batch])
               for i in range(4)]
    for i in range(warmup):
        dp.step(*batches[i % 4], solver.lr)
    t = time.perf_counter()
    for i in range(steps):
        dp.step(*batches[i % 4], solver.lr)
    ips = steps * batch / (time.perf_counter() - t)

    # Where the time goes: each layer's forward and backward, timed alone (median of reps).
    x = batches[0][0]
    acts = [x]
    for layer in model.layers:
        acts.append(layer.forward(acts[-1]))
    layers = []
    for li, layer in enumerate(model.layers):
        fw, bw = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            y = layer.forward(acts[li])
            t1 = time.perf_counter()
            layer.backward(np.ones_like(y), li > 0)  # as in training: no image gradient
            t2 = time.perf_counter()
            fw.append(t1 - t0)
            bw.append(t2 - t1)
        layers.append({"layer": layer.name, "forward_ms": 1e3 * float(np.median(fw)),
                       "backward_ms": 1e3 * float(np.median(bw))})
    return {"images_per_second": ips, "layers": layers}


def _torch_net(net_name, shape, torch):
    """The same architecture in torch.nn (Caffe ceil-mode pooling)."""
    from hpcnn.nn import build_net
    from hpcnn.nn.layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU

    nn = torch.nn
    mods = []
    for layer in build_net(net_name, shape, 10).layers:
        if isinstance(layer, Conv2d):
            k, c, r, s = layer.weight.data.shape
            mods.append(nn.Conv2d(c, k, (r, s), layer.stride, layer.padding))
        elif isinstance(layer, AvgPool2d):
            mods.append(nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                     ceil_mode=True))
        elif isinstance(layer, MaxPool2d):
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding,
                                     ceil_mode=True))
        elif isinstance(layer, ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, Linear):
            o, i = layer.weight.data.shape
            mods.append(nn.Linear(i, o))
    return nn.Sequential(*mods)


def _worker_torch(net_name, batch, steps, warmup, seed):
    import torch

    from hpcnn.data import load_dataset
    from hpcnn.nn import NETS

    _, solver, shape = NETS[net_name]
    torch.manual_seed(seed)
    ds = load_dataset("synthetic", synthetic_shape=shape, synthetic_train=batch * 4,
                      synthetic_test=10, seed=seed)
    model = _torch_net(net_name, shape, torch)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 2 * solver.lr}],
                          lr=solver.lr, momentum=solver.momentum,
                          weight_decay=solver.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [(torch.from_numpy(ds.x_train[i * batch:(i + 1) * batch]),
                torch.from_numpy(ds.y_train[i * batch:(i + 1) * batch])) for i in range(4)]

    def step(x, y):
        opt.zero_grad(set_to_none=False)
        loss_fn(model(x), y).backward()
        opt.step()

    for i in range(warmup):
        step(*batches[i % 4])
    t = time.perf_counter()
    for i in range(steps):
        step(*batches[i % 4])
    return {"images_per_second": steps * batch / (time.perf_counter() - t)}


def worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["hpcnn", "torch"])
    p.add_argument("--net")
    p.add_argument("--batch", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from hpcnn import threads

    threads.pin_env(a.threads)
    if a.impl == "torch":
        import torch

        torch.set_num_threads(a.threads)
        torch.set_num_interop_threads(1)
        res = _worker_torch(a.net, a.batch, a.steps, a.warmup, a.seed)
    else:
        threads.apply(a.threads)
        res = _worker_hpcnn(a.net, a.batch, a.steps, a.warmup, a.seed)
    print("RESULT " + json.dumps(res), flush=True)


def _spawn(impl, net, batch, steps, warmup, threads, torch_heap="as-shipped"):
    cmd = [sys.executable, "-m", "hpcnn.bench", "_train_worker", "--impl", impl, "--net", net,
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
           "--threads", str(threads)]
    env = dict(os.environ)
    if impl == "torch":
        heap.peer_env(env, torch_heap)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{impl} worker failed:\n{r.stderr[-2000:]}")


def have_torch():
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except Exception:
        return False


def main(argv):
    from hpcnn.nn import NETS

    p = argparse.ArgumentParser(prog="python -m hpcnn.bench train", description=__doc__)
    p.add_argument("--net", default="cifar10_quick", choices=list(NETS))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batch-size", type=int, default=None, help="default: the net's reference")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs; best is kept")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    p.add_argument("--json", default=None, help="write the results here")
    heap.add_option(p)
    a = p.parse_args(argv)
    batch = a.batch_size or NETS[a.net][1].batch_size
    impls = ["hpcnn"] + (["torch"] if have_torch() and not a.no_torch else [])
    thread_counts = [int(t) for t in a.threads.split(",")]

    print(f"train benchmark: {a.net}, batch {batch}, synthetic data, {a.steps} timed steps "
          f"after {a.warmup} warm-up, best of {a.rounds} alternating rounds"
          + (f"; PyTorch's heap: {a.torch_heap}" if "torch" in impls else ""))
    results = []
    for t in thread_counts:
        best = {}
        for _ in range(a.rounds):
            for impl in impls:
                r = _spawn(impl, a.net, batch, a.steps, a.warmup, t, a.torch_heap)
                if impl not in best or r["images_per_second"] > best[impl]["images_per_second"]:
                    best[impl] = r
        row = {"threads": t, "hpcnn_images_per_second": best["hpcnn"]["images_per_second"],
               "layers": best["hpcnn"]["layers"]}
        line = f"threads {t}: hpcnn {row['hpcnn_images_per_second']:8.1f} img/s"
        if "torch" in best:
            row["torch_images_per_second"] = best["torch"]["images_per_second"]
            row["ratio_vs_torch"] = row["hpcnn_images_per_second"] / row["torch_images_per_second"]
            line += (f" | PyTorch {row['torch_images_per_second']:8.1f} img/s"
                     f" | ratio {row['ratio_vs_torch']:.2f}x")
        print(line, flush=True)
        results.append(row)

    for row in results:
        total = sum(lr["forward_ms"] + lr["backward_ms"] for lr in row["layers"])
        print(f"\nwhere the time goes, hpcnn, {row['threads']} thread(s), batch {batch} "
              f"(each layer timed alone, median of 5):")
        print(f"  {'layer':<10} {'forward ms':>11} {'backward ms':>12} {'share':>7}")
        for lr in row["layers"]:
            share = (lr["forward_ms"] + lr["backward_ms"]) / total
            print(f"  {lr['layer']:<10} {lr['forward_ms']:11.2f} {lr['backward_ms']:12.2f} "
                  f"{100 * share:6.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"net": a.net, "batch": batch, "torch_heap": a.torch_heap,
                       "results": results}, f, indent=1)
    return 0
