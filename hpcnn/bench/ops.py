"""The op table of "Deep Learning Benchmarks" (Vauhkonen, Vohra, Madaan, Coates):
``python -m hpcnn.bench ops [--threads 1,2] [--json PATH]``.

Each workload is profiled by operation kind (GEMM, sigmoid, KL, soft-threshold, conv, ...), once
on hpcnn's kernels and once on a plain NumPy implementation of the same algorithm, and the table
gives the time per op kind of each, and the speedup. Workloads:

- ``sae-8x8``: the UFLDL sparse autoencoder, 10,000 patches 8x8, 25 hidden units (one loss and
  gradient evaluation); ``sae-28x28``: UFLDL's MNIST one, 784 visible, 196 hidden;
- ``fista``: 20 FISTA iterations, 10,000 patches 8x8, 256 atoms (4x overcomplete);
- ``cnn``: cifar10_quick's conv2 layer (batch 100, 32x16x16, 32 filters 5x5, pad 2) forward and
  backward, then ReLU and 3x3/2 max-pool, on hpcnn.kernels against NumPy im2col/col2im;
- ``rnn``: the rows of ``hpcnn.bench.rnn.ops_rows`` where that module exists.

The GEMMs are numpy's BLAS in both implementations (the paper's point: the speedup is in the
ops around them). Each thread count runs in its own process (threads pinned before numpy and
numba load); each workload is timed ``--reps`` times after a warm-up, and each op kind's least
time is kept (the total is their sum).
"""

import argparse
import json
import os
import subprocess
import sys
import time

# ---------------------------------------------------------------------------------------------
# workloads: each returns {"unit": what one repetition is, "ops": {impl: {kind: seconds}}}


def _best(run, reps):
    """Run ``run()`` -> {kind: s} ``reps`` times; keep each kind's least time (on a shared
    machine one descheduled thread stalls a whole parallel op now and then; the least time is
    the op undisturbed, and both implementations are treated alike)."""
    best = {}
    for _ in range(reps):
        for kind, s in run().items():
            best[kind] = min(s, best.get(kind, s))
    return best


def sae_workload(reps, visible=64, hidden=25, n=10000, seed=0):
    import numpy as np

    from hpcnn.kernels.sparse import KERNEL_OPS, NUMPY_OPS
    from hpcnn.unsup import autoencoder as ae
    from hpcnn.unsup.timing import OpTimer

    cfg = ae.SAEConfig(visible=visible, hidden=hidden)
    rng = np.random.default_rng(seed)
    x = (rng.random((n, visible)) * 0.8 + 0.1).astype(np.float32)
    theta = ae.init_params(cfg, seed)
    out = {}
    for ops in (NUMPY_OPS, KERNEL_OPS):
        model = ae.SparseAutoencoder(cfg, None, np.float32, ops)
        model.loss_and_grad(theta, x, n)  # warm-up (compiles)

        def run(model=model):
            t = OpTimer()
            model.loss_and_grad(theta, x, n, timer=t)
            return t.seconds

        out[ops.name] = _best(run, reps)
    return {"unit": f"one loss+gradient, {n} x {visible} -> {hidden}", "ops": out}


def fista_workload(reps, visible=64, atoms=256, n=10000, iters=20, seed=0):
    import numpy as np

    from hpcnn.kernels.sparse import KERNEL_OPS, NUMPY_OPS
    from hpcnn.unsup import fista as fi
    from hpcnn.unsup.timing import OpTimer

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, visible)).astype(np.float32)
    D = fi.random_dictionary(visible, atoms, seed)
    L = fi.spectral_norm_sq(D)
    out = {}
    for ops in (NUMPY_OPS, KERNEL_OPS):
        fi.fista(X[:10], D, 0.1, 2, L=L, ops=ops)  # warm-up

        def run(ops=ops):
            t = OpTimer()
            fi.fista(X, D, 0.1, iters, L=L, ops=ops, timer=t)
            return t.seconds

        out[ops.name] = _best(run, reps)
    return {"unit": f"{iters} iterations, {n} x {visible}, {atoms} atoms", "ops": out}


def _np_im2col(xp, R, S, P, Q):
    """(N, C, Hp, Wp) padded -> (C*R*S, N*P*Q) by a strided view (stride 1)."""
    import numpy as np

    N, C = xp.shape[:2]
    win = np.lib.stride_tricks.sliding_window_view(xp, (R, S), axis=(2, 3))  # N,C,P,Q,R,S
    return np.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3)).reshape(C * R * S, N * P * Q)


def _np_conv_forward(x, w, b, pad, t):
    import numpy as np

    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = H + 2 * pad - R + 1, W + 2 * pad - S + 1
    with t("im2col"):
        col = _np_im2col(np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))), R, S, P, Q)
    with t("gemm"):
        y = w.reshape(K, -1) @ col  # (K, N*P*Q)
    with t("bias"):
        y = y.reshape(K, N, P, Q).transpose(1, 0, 2, 3) + b[None, :, None, None]
    return np.ascontiguousarray(y), col


def _np_conv_backward(dy, x, w, col, pad, t):
    import numpy as np

    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    with t("bias"):
        db = dy.sum(axis=(0, 2, 3))
        dyk = dy.transpose(1, 0, 2, 3).reshape(K, -1)
    with t("gemm"):
        dw = (dyk @ col.T).reshape(w.shape)
        dcol = w.reshape(K, -1).T @ dyk  # (C*R*S, N*P*Q)
    with t("col2im"):
        dcol = dcol.reshape(C, R, S, N, P, Q)
        dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), x.dtype)
        for r in range(R):
            for s in range(S):
                dxp[:, :, r:r + P, s:s + Q] += dcol[:, r, s].transpose(1, 0, 2, 3)
    return dxp[:, :, pad:pad + H, pad:pad + W], dw, db


def _np_maxpool(x, k, s):
    """Caffe ceil-mode k x k / s max-pool of (N, C, H, W): output and the winners' mask."""
    import numpy as np

    N, C, H, W = x.shape
    P, Q = -(-(H - k) // s) + 1, -(-(W - k) // s) + 1
    xp = np.full((N, C, (P - 1) * s + k, (Q - 1) * s + k), -np.inf, x.dtype)
    xp[:, :, :H, :W] = x
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    flat = win.reshape(N, C, P, Q, k * k)
    return flat.max(axis=-1), flat.argmax(axis=-1)


def _np_maxpool_backward(dy, arg, x_shape, k, s):
    import numpy as np

    N, C, H, W = x_shape
    P, Q = dy.shape[2:]
    dxp = np.zeros((N, C, (P - 1) * s + k, (Q - 1) * s + k), dy.dtype)
    r, c = np.divmod(arg, k)
    pp, qq = np.meshgrid(np.arange(P) * s, np.arange(Q) * s, indexing="ij")
    n, ch = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    np.add.at(dxp, (n[:, :, None, None], ch[:, :, None, None], pp + r, qq + c), dy)
    return dxp[:, :, :H, :W]


def cnn_workload(reps, n=100, c=32, hw=16, k=32, r=5, pad=2, seed=0):
    import numpy as np

    from hpcnn import kernels as K
    from hpcnn.unsup.timing import OpTimer

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
    w = (0.05 * rng.standard_normal((k, c, r, r))).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)

    def numpy_run():
        t = OpTimer()
        y, col = _np_conv_forward(x, w, b, pad, t)
        with t("relu"):
            a = np.maximum(y, 0)
        with t("maxpool"):
            p, arg = _np_maxpool(a, 3, 2)
        dp = np.ones_like(p)
        with t("maxpool"):
            da = _np_maxpool_backward(dp, arg, a.shape, 3, 2)
        with t("relu"):
            dy = da * (y > 0)
        _np_conv_backward(dy, x, w, col, pad, t)
        return t.seconds

    def hpcnn_run():
        t = OpTimer()
        with t("conv"):
            y = K.conv2d_forward(x, w, b, 1, pad)
        with t("relu"):
            a = K.relu_forward(y)
        with t("maxpool"):
            p, arg = K.maxpool2d_forward(a, 3, 2)
        dp = np.ones_like(p)
        with t("maxpool"):
            da = K.maxpool2d_backward(dp, arg, a.shape)
        with t("relu"):
            dy = K.relu_backward(da, a)
        with t("conv"):
            K.conv2d_backward(dy, x, w, 1, pad)
        return t.seconds

    # the two agree (a check, not a timing): the conv output and the weight gradient
    t = OpTimer()
    y_np, col = _np_conv_forward(x, w, b, pad, t)
    np.testing.assert_allclose(K.conv2d_forward(x, w, b, 1, pad), y_np, rtol=1e-3, atol=1e-3)
    out = {}
    for name, run in (("numpy", numpy_run), ("hpcnn", hpcnn_run)):
        run()  # warm-up (compiles; "auto" picks its algorithm)
        out[name] = _best(run, reps)
    # hpcnn's conv is one call per direction: NumPy's im2col, gemm, bias and col2im together
    conv = sum(out["numpy"].pop(kind, 0.0) for kind in ("im2col", "gemm", "bias", "col2im"))
    out["numpy"] = {"conv": conv, **out["numpy"]}
    return {"unit": f"conv {c}->{k} {r}x{r} pad {pad} + relu + maxpool 3/2, fwd+bwd, batch {n}, "
                    f"{hw}x{hw}", "ops": out}


WORKLOADS = {
    "sae-8x8": lambda reps: sae_workload(reps),
    "sae-28x28": lambda reps: sae_workload(reps, visible=784, hidden=196),
    "fista": lambda reps: fista_workload(reps),
    "cnn": lambda reps: cnn_workload(reps),
}


def rows_of(workload, res):
    """Table rows: one per op kind, then the total."""
    np_ops, hp_ops = res["ops"]["numpy"], res["ops"]["hpcnn"]
    kinds = list(dict.fromkeys([*np_ops, *hp_ops]))
    rows = []
    for kind in [*kinds, "total"]:
        a = sum(np_ops.values()) if kind == "total" else np_ops.get(kind, 0.0)
        b = sum(hp_ops.values()) if kind == "total" else hp_ops.get(kind, 0.0)
        rows.append({"workload": workload, "op": kind, "numpy_ms": 1e3 * a, "hpcnn_ms": 1e3 * b,
                     "speedup": a / b if b > 0 else None, "unit": res["unit"]})
    return rows


def _ms_row(r):
    """A row of another benchmark (seconds: ``numpy_s``, ``hpcnn_s``) in this table's units,
    with a total row's speedup computed the same way."""
    out = {"workload": r.get("workload", "rnn"), "op": r["op"], "unit": r.get("unit", "")}
    for impl in ("numpy", "hpcnn"):
        out[f"{impl}_ms"] = r[f"{impl}_ms"] if f"{impl}_ms" in r else 1e3 * r[f"{impl}_s"]
    out["speedup"] = out["numpy_ms"] / out["hpcnn_ms"] if out["hpcnn_ms"] > 0 else None
    return out


def cpu_model():
    """The first "model name" of /proc/cpuinfo, and the core count."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int)
    p.add_argument("--reps", type=int)
    p.add_argument("--workloads")
    a = p.parse_args(argv)
    from hpcnn import threads

    threads.pin_env(a.threads)
    threads.apply(a.threads)
    rows, notes = [], []
    for name in a.workloads.split(","):
        if name == "rnn":
            try:
                from hpcnn.bench.rnn import ops_rows
            except ImportError:
                notes.append("rnn: hpcnn.bench.rnn.ops_rows is not available; no RNN rows")
                continue
            rnn = [_ms_row(r) for r in ops_rows(a.threads)]
            total = {k: sum(r[k] for r in rnn) for k in ("numpy_ms", "hpcnn_ms")}
            rows += [dict(r, unit="one window of B x T characters (hpcnn.bench.rnn sizes)")
                     for r in rnn]
            rows.append(_ms_row({"workload": "rnn", "op": "total", "unit": rnn[0]["unit"],
                                 **total}))
            continue
        rows += rows_of(name, WORKLOADS[name](a.reps))
    print("RESULT " + json.dumps({"rows": rows, "notes": notes}), flush=True)
    return 0


def _spawn(threads, reps, workloads):
    cmd = [sys.executable, "-m", "hpcnn.bench.ops", "--threads", str(threads), "--reps",
           str(reps), "--workloads", ",".join(workloads)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"ops worker failed (threads {threads}):\n{r.stderr[-3000:]}")


def format_table(rows):
    lines = [f"  {'workload':<10} {'op':<28} {'NumPy ms':>10} {'hpcnn ms':>10} {'speedup':>8}"]
    last = None
    for r in rows:
        if r["workload"] != last:
            lines.append(f"  {r['workload']}: {r.get('unit', '')}")
            last = r["workload"]
        sp = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"  {'':<10} {r['op']:<28} {r['numpy_ms']:10.2f} {r['hpcnn_ms']:10.2f} "
                     f"{sp:>8}")
    return "\n".join(lines)


def main(argv):
    from hpcnn import argtypes as at

    p = argparse.ArgumentParser(prog="python -m hpcnn.bench ops", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--reps", type=at.positive_int, default=5, help="timed repetitions; best kept")
    p.add_argument("--workloads", default=",".join([*WORKLOADS, "rnn"]),
                   help=f"comma-separated, from {', '.join([*WORKLOADS, 'rnn'])}")
    p.add_argument("--json", default=None, help="write the table here")
    a = p.parse_args(argv)
    workloads = [w for w in a.workloads.split(",") if w]
    bad = [w for w in workloads if w not in WORKLOADS and w != "rnn"]
    try:
        counts = [at.thread_count(t) for t in a.threads.split(",")]
    except argparse.ArgumentTypeError as e:
        print(f"error: --threads: {e}", file=sys.stderr)
        return 2
    if bad or not workloads:
        print(f"error: unknown workload(s) {', '.join(bad) or '(none)'}; choose from "
              f"{', '.join([*WORKLOADS, 'rnn'])}", file=sys.stderr)
        return 2
    cpu = cpu_model()
    print(f"op benchmark on {cpu}: hpcnn kernels vs plain NumPy, best of {a.reps}")
    results = []
    for t in counts:
        t0 = time.perf_counter()
        res = _spawn(t, a.reps, workloads)
        print(f"\n{t} thread(s) ({time.perf_counter() - t0:.0f} s):")
        print(format_table(res["rows"]))
        for note in res["notes"]:
            print(f"  note: {note}")
        results.append({"threads": t, **res})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu, "reps": a.reps, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
