"""The RNN's speed: ``python -m hpcnn.bench rnn [--threads 1,2] [--json PATH]``.

Two tables, each measured in this one invocation:

1. **hpcnn against torch.nn.RNN**: one window's forward and backward (the recurrent layer, the
   output layer at every step, the per-step softmax cross-entropy, all gradients; no optimizer
   step) of the same model: a tanh RNN with hidden size H over one-hot characters of a
   vocabulary V, B streams, T steps. PyTorch runs ``nn.RNN(V, H)`` on one-hot inputs (the same
   parameters, plus its second bias), ``nn.Linear(H, V)`` and ``F.cross_entropy``; a second
   PyTorch row feeds ``nn.RNN(H, H)`` from ``nn.Embedding(V, H)`` instead (a row lookup, as
   hpcnn's input, at the price of one more H x H matrix). Each (implementation, threads) runs
   in its own process, thread pools pinned before numpy, numba or torch load; they alternate,
   and the best of ``--rounds`` is kept.
2. **O(T) against O(T^2) backpropagation through time** at T = 10, 50, 100: the WildML tutorial's
   loop (from every output step back to the start, plain NumPy), the one reverse sweep in plain
   NumPy, and hpcnn's sweep kernel; the largest difference between their gradients (relative to
   the gradient's largest entry) and the speedups.

:func:`ops_rows` gives ``python -m hpcnn.bench ops`` the time per operation kind of a plain NumPy
RNN against hpcnn's kernels.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SIZES = {"hidden": 128, "batch": 32, "bptt": 50, "vocab": 113}  # vocab: the fortunes text's
SWEEP_T = (10, 50, 100)


def _best(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _data(rng, hidden, batch, bptt, vocab):
    import numpy as np

    ids = rng.integers(0, vocab, (batch, bptt))
    y = rng.integers(0, vocab, (batch, bptt))
    return ids, y, np.zeros((batch, hidden), np.float32)


# ---------------------------------------------------------------------------------------------
# workers: one implementation at one thread count


def _worker_hpcnn(hidden, batch, bptt, vocab, repeat):
    import numpy as np

    from hpcnn.nn.loss import SequenceCrossEntropy
    from hpcnn.nn.rnn import Windows, build_rnn

    ids, y, state = _data(np.random.default_rng(0), hidden, batch, bptt, vocab)
    model = build_rnn(vocab, hidden, bptt, seed=0)
    loss = SequenceCrossEntropy()

    def step():
        model.zero_grad()
        _, dz = loss(model.forward(Windows(ids, state.copy())), y)
        model.backward(dz)

    return {"seconds": _best(step, repeat)}


def _worker_torch(hidden, batch, bptt, vocab, repeat, embedding):
    import numpy as np
    import torch
    import torch.nn.functional as F

    ids, y, _ = _data(np.random.default_rng(0), hidden, batch, bptt, vocab)
    torch.manual_seed(0)
    if embedding:
        emb = torch.nn.Embedding(vocab, hidden)
        rnn = torch.nn.RNN(hidden, hidden, nonlinearity="tanh")
        x = torch.from_numpy(ids.T.copy())  # (T, B) ids
    else:
        emb = None
        rnn = torch.nn.RNN(vocab, hidden, nonlinearity="tanh")
        x = F.one_hot(torch.from_numpy(ids.T.copy()), vocab).float()  # (T, B, V)
    lin = torch.nn.Linear(hidden, vocab)
    target = torch.from_numpy(y.T.reshape(-1).copy())
    h0 = torch.zeros(1, batch, hidden)
    params = [*rnn.parameters(), *lin.parameters(), *(emb.parameters() if emb else [])]

    def step():
        for p in params:
            p.grad = None
        out, _ = rnn(emb(x) if emb else x, h0)
        F.cross_entropy(lin(out.reshape(-1, hidden)), target).backward()

    return {"seconds": _best(step, repeat), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def sweep(hidden, batch, vocab, repeat, steps=SWEEP_T):
    """O(T) against O(T^2) BPTT at each T: times, gradient differences, speedups."""
    import numpy as np

    from hpcnn.kernels import rnn as K

    rows = []
    for T in steps:
        rng = np.random.default_rng(T)
        ids = rng.integers(0, vocab, (batch, T))
        h0 = np.zeros((batch, hidden), np.float32)
        a = 1.0 / np.sqrt(hidden)
        emb, w = (rng.uniform(-a, a, s).astype(np.float32) for s in ((vocab, hidden),
                                                                        (hidden, hidden)))
        b = np.zeros(hidden, np.float32)
        hs = K.rnn_forward(ids, h0, emb, w, b)
        dh = (rng.standard_normal(hs.shape) * 0.01).astype(np.float32)
        args = (dh, ids, hs, h0, w, vocab)
        loop = K.rnn_backward_truncated_loop(*args)
        fast = K.rnn_backward(*args)
        ref = K.rnn_backward_reference(*args)
        diff = max(float(np.abs(g - r).max() / np.abs(r).max())
                   for got in (fast, ref) for g, r in zip(got[:3], loop[:3], strict=True))
        t_loop = _best(lambda a=args: K.rnn_backward_truncated_loop(*a), max(1, repeat // 4), 1)
        t_ref = _best(lambda a=args: K.rnn_backward_reference(*a), repeat)
        t_fast = _best(lambda a=args: K.rnn_backward(*a), repeat)
        rows.append({"T": T, "loop_s": t_loop, "numpy_sweep_s": t_ref, "hpcnn_sweep_s": t_fast,
                     "max_rel_diff": diff, "speedup_numpy_sweep": t_loop / t_ref,
                     "speedup_hpcnn": t_loop / t_fast})
    return rows


def _worker(argv):
    """``python -m hpcnn.bench.rnn _worker IMPL THREADS JSON-SIZES``: one measurement as JSON."""
    impl, threads, sizes = argv[0], int(argv[1]), json.loads(argv[2])
    from hpcnn import threads as thr

    thr.pin_env(threads)
    if impl.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        out = _worker_torch(**sizes, embedding=impl == "torch-embedding")
    else:
        threads = thr.apply(threads)
        out = _worker_hpcnn(**sizes)
        if impl == "hpcnn+sweep":
            out["sweep"] = sweep(sizes["hidden"], sizes["batch"], sizes["vocab"],
                                 sizes["repeat"])
    print(json.dumps(out))
    return 0


def _spawn(impl, threads, sizes):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-m", "hpcnn.bench.rnn", "_worker", impl, str(threads),
                        json.dumps(sizes)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{impl} worker failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# bench ops: a plain NumPy RNN against hpcnn's kernels, per operation kind


def ops_rows(threads, hidden=SIZES["hidden"], batch=SIZES["batch"], bptt=SIZES["bptt"],
             vocab=SIZES["vocab"], repeat=20):
    """Time per operation kind of one window (B x T characters) of the RNN: a plain NumPy
    implementation of the same algorithm (the kernels' NumPy twins, O(T) sweep) against hpcnn's
    kernels. Returns ``[{"workload": "rnn", "op", "numpy_s", "hpcnn_s"}]`` (best of
    ``repeat``), at ``threads`` threads (Numba's; BLAS as :func:`hpcnn.threads.apply` sets)."""
    import numpy as np

    from hpcnn import threads as thr
    from hpcnn.kernels import linear_backward, linear_forward
    from hpcnn.kernels import rnn as K

    thr.apply(threads)
    rng = np.random.default_rng(0)
    ids, y, h0 = _data(rng, hidden, batch, bptt, vocab)
    a = 1.0 / np.sqrt(hidden)
    emb, w, wy = (rng.uniform(-a, a, s).astype(np.float32)
                  for s in ((vocab, hidden), (hidden, hidden), (vocab, hidden)))
    b, by = np.zeros(hidden, np.float32), np.zeros(vocab, np.float32)
    hs = K.rnn_forward(ids, h0, emb, w, b)
    flat = hs.reshape(-1, hidden)
    z = linear_forward(flat, wy, by)
    labels = np.ascontiguousarray(y.T).reshape(-1)
    scale = 1.0 / labels.size
    _, dz = K.softmax_ce_steps(z, labels, scale)
    dh = np.ascontiguousarray(linear_backward(dz, flat, wy)[0]).reshape(hs.shape)

    def np_output():  # forward and backward: the same three GEMMs as hpcnn's
        return flat @ wy.T + by, dz @ wy, dz.T @ flat, dz.sum(axis=0)

    def hp_output():
        linear_forward(flat, wy, by)
        return linear_backward(dz, flat, wy)

    pairs = [
        ("rnn forward (cell steps)", lambda: K.rnn_forward_reference(ids, h0, emb, w, b),
         lambda: K.rnn_forward(ids, h0, emb, w, b)),
        ("output layer (GEMMs)", np_output, hp_output),
        ("softmax cross-entropy", lambda: K.softmax_ce_steps_reference(z, labels, scale),
         lambda: K.softmax_ce_steps(z, labels, scale)),
        ("bptt backward (O(T) sweep)",
         lambda: K.rnn_backward_reference(dh, ids, hs, h0, w, vocab),
         lambda: K.rnn_backward(dh, ids, hs, h0, w, vocab)),
    ]
    return [{"workload": "rnn", "op": op, "numpy_s": _best(f_np, repeat),
             "hpcnn_s": _best(f_hp, repeat)} for op, f_np, f_hp in pairs]


# ---------------------------------------------------------------------------------------------
# the command


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _have_torch():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv=None):
    from hpcnn import argtypes as at

    p = argparse.ArgumentParser(prog="python -m hpcnn.bench rnn",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--hidden", type=at.width, default=SIZES["hidden"])
    p.add_argument("--batch", type=at.positive_int, default=SIZES["batch"])
    p.add_argument("--bptt", type=at.positive_int, default=SIZES["bptt"])
    p.add_argument("--vocab", type=at.positive_int, default=SIZES["vocab"])
    p.add_argument("--repeat", type=at.positive_int, default=20, help="timed runs, best kept")
    p.add_argument("--rounds", type=at.positive_int, default=2,
                   help="alternating rounds of the workers, best kept")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    try:
        counts = [int(t) for t in args.threads.split(",")]
        if min(counts) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --threads must be positive integers, got {args.threads!r}",
              file=sys.stderr)
        return 2
    sizes = {"hidden": args.hidden, "batch": args.batch, "bptt": args.bptt,
             "vocab": args.vocab, "repeat": args.repeat}
    impls = ["hpcnn"] + (["torch", "torch-embedding"] if _have_torch() else [])
    best, sweep_rows, extra = {}, None, {}
    for rnd in range(args.rounds):
        for threads in counts:
            for impl in impls:
                name = "hpcnn+sweep" if impl == "hpcnn" and rnd == 0 and threads == counts[0] \
                    else impl
                out = _spawn(name, threads, sizes)
                if "sweep" in out:
                    sweep_rows = out["sweep"]
                key = (impl, threads)
                best[key] = min(best.get(key, float("inf")), out["seconds"])
                if "torch" in out:
                    extra["torch"] = out["torch"]
    chars = args.batch * args.bptt
    print(f"RNN forward+backward of one window: H {args.hidden}, V {args.vocab}, B "
          f"{args.batch} streams, T {args.bptt} steps ({chars} characters); best of "
          f"{args.repeat} x {args.rounds} rounds; {_cpu_name()}")
    print(f"{'implementation':<34}{'threads':>8}{'ms/window':>11}{'chars/s':>11}"
          f"{'hpcnn speedup':>15}")
    table = []
    for threads in counts:
        for impl in impls:
            s = best[(impl, threads)]
            ratio = s / best[("hpcnn", threads)]
            label = {"hpcnn": "hpcnn", "torch": f"torch {extra.get('torch', '')} nn.RNN one-hot",
                     "torch-embedding": "torch nn.Embedding + nn.RNN"}[impl]
            print(f"{label:<34}{threads:>8}{1e3 * s:>11.2f}{chars / s:>11,.0f}"
                  f"{ratio:>14.2f}x")
            table.append({"impl": impl, "threads": threads, "seconds": s,
                          "chars_per_second": chars / s, "hpcnn_speedup": ratio})
    if sweep_rows:
        print(f"\nBPTT backward of one window, O(T^2) WildML loop against the O(T) sweep (H "
              f"{args.hidden}, V {args.vocab}, B {args.batch}, {counts[0]} thread(s)); float32")
        print(f"{'T':>5}{'loop ms':>11}{'numpy sweep ms':>16}{'hpcnn ms':>10}"
              f"{'max rel diff':>14}{'speedup numpy':>15}{'speedup hpcnn':>15}")
        for r in sweep_rows:
            print(f"{r['T']:>5}{1e3 * r['loop_s']:>11.2f}{1e3 * r['numpy_sweep_s']:>16.2f}"
                  f"{1e3 * r['hpcnn_sweep_s']:>10.2f}{r['max_rel_diff']:>14.1e}"
                  f"{r['speedup_numpy_sweep']:>14.1f}x{r['speedup_hpcnn']:>14.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": _cpu_name(), "sizes": sizes, "rounds": args.rounds,
                       "forward_backward": table, "bptt_sweep": sweep_rows, **extra}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        sys.exit(_worker(sys.argv[2:]))
    sys.exit(main())
