"""Compute time per layer, measured: the model's compute side.

For each batch size, every layer's forward and backward is timed alone on this machine (median of
``reps``, after one untimed call; the first layer's backward skips the image gradient, as in
training), and the optimizer's step over the whole model; the per-sample time of the feature stage
and the head then follows at any batch by interpolation (:func:`layer_time`).
"""

import time


def measure_net(net, batches, threads=1, reps=5, seed=0):
    """``{"net", "threads", "cpu", "layers": [{name, part, params}], "batches": {b: {"fwd":
    [s per layer], "bwd": [...], "loss": s, "optimizer": s}}, "params_feature", "params_head"}``.
    """
    from functools import partial

    import numpy as np

    from hpcnn.kernels import softmax_cross_entropy
    from hpcnn.kernels.autotune import cpu_model
    from hpcnn.nn import NETS, build_net
    from hpcnn.optim import SGD
    from hpcnn.parallel import DataParallel

    _, solver, shape = NETS[net]
    model = build_net(net, shape, 10, seed=seed)
    dp = DataParallel(None, model, partial(SGD, lr=solver.lr, momentum=solver.momentum,
                                           weight_decay=solver.weight_decay))
    layers = [{"name": layer.name, "part": "feature" if i < model.head_start else "head",
               "params": int(sum(p.data.size for p in layer.params()))}
              for i, layer in enumerate(model.layers)]
    out = {"net": net, "threads": threads, "cpu": cpu_model(), "layers": layers,
           "params_feature": sum(x["params"] for x in layers if x["part"] == "feature"),
           "params_head": sum(x["params"] for x in layers if x["part"] == "head"),
           "batches": {}}
    rng = np.random.default_rng(seed)
    for b in batches:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        y = rng.integers(0, 10, b)
        dp.step(x, y, solver.lr)  # compile, tune, first-touch
        acts = [x]
        for layer in model.layers:
            acts.append(layer.forward(acts[-1]))
        fwd, bwd = [], []
        for li, layer in enumerate(model.layers):
            tf, tb = [], []
            for r in range(reps + 1):
                t0 = time.perf_counter()
                z = layer.forward(acts[li])
                t1 = time.perf_counter()
                layer.backward(np.ones_like(z), li > 0)
                t2 = time.perf_counter()
                if r:
                    tf.append(t1 - t0)
                    tb.append(t2 - t1)
            fwd.append(float(np.median(tf)))
            bwd.append(float(np.median(tb)))
        tl, to = [], []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            softmax_cross_entropy(acts[-1], y)
            t1 = time.perf_counter()
            dp.opt.step(solver.lr)
            t2 = time.perf_counter()
            if r:
                tl.append(t1 - t0)
                to.append(t2 - t1)
        ts = []
        for r in range(2 * reps + 1):  # whole training steps, as the loop runs them
            t0 = time.perf_counter()
            dp.step(x, y, solver.lr)
            if r:
                ts.append(time.perf_counter() - t0)
        model.zero_grad()
        out["batches"][str(b)] = {"fwd": fwd, "bwd": bwd, "loss": float(np.median(tl)),
                                  "optimizer": float(np.median(to)),
                                  "step": float(np.median(ts))}
    return out


def calibration(prof, b):
    """The factor on every layer's (and the loss's) time at batch ``b`` that makes the parts
    add up to the whole training step measured at that batch (interpolated), the optimizer's
    time kept: layers timed alone run with their inputs in cache, a training step does not.
    1 when the profile holds no whole steps."""
    if not all("step" in v for v in prof["batches"].values()):
        return 1.0
    parts = sum(_interp(prof, b, d, i) for d in ("fwd", "bwd")
                for i in range(len(prof["layers"]))) + _interp(prof, b, "loss")
    whole = _interp(prof, b, "step") - optimizer_time(prof, prof["params_feature"]
                                                      + prof["params_head"])
    return whole / parts if parts > 0 and whole > 0 else 1.0


def _interp(prof, b, key, i=None):
    """Seconds of ``key`` (layer ``i``) at batch ``b``: piecewise linear in the batch between
    the measured batches, proportional to the batch beyond them (per-sample time of the nearest
    measured batch)."""
    pts = sorted((int(k), (v[key][i] if i is not None else v[key]))
                 for k, v in prof["batches"].items())
    if b <= pts[0][0]:
        return pts[0][1] * b / pts[0][0]
    if b >= pts[-1][0]:
        return pts[-1][1] * b / pts[-1][0]
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if b0 <= b <= b1:
            return t0 + (t1 - t0) * (b - b0) / (b1 - b0)
    raise AssertionError("unreachable")


def layer_time(prof, b, i, direction, calibrate=True):
    """Seconds of layer ``i``'s forward or backward (``"fwd"``/``"bwd"``) at batch ``b``,
    scaled by :func:`calibration` unless ``calibrate`` is false."""
    if b <= 0:
        return 0.0
    return _interp(prof, b, direction, i) * (calibration(prof, b) if calibrate else 1.0)


def stage_time(prof, b, part, direction):
    """Seconds of the feature stage's or the head's forward or backward at batch ``b``."""
    return sum(layer_time(prof, b, i, direction) for i, x in enumerate(prof["layers"])
               if x["part"] == part)


def loss_time(prof, b):
    return _interp(prof, b, "loss") * calibration(prof, b) if b > 0 else 0.0


def optimizer_time(prof, params):
    """Seconds of an optimizer step over ``params`` parameters (the whole model's step, scaled;
    its median over the batches: it does not depend on the batch)."""
    total = prof["params_feature"] + prof["params_head"]
    t = sorted(v["optimizer"] for v in prof["batches"].values())[len(prof["batches"]) // 2]
    return t * params / total
