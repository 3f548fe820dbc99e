"""Convolution layers: ``python -m hpcnn.bench conv [--set cifar10_quick|googlenet|all]``.

For every reference layer (hpcnn/bench/conv_layers.json: cifar10_quick at batch 100 and the 20
GoogLeNet layers of Sakiyama et al.), every thread count and every strategy of
:data:`hpcnn.kernels.conv.ALGOS` plus "auto", forward and backward apart: the best (``--stat
min``, default) or median time of ``--repeats`` interleaved rounds after one warm-up, GFLOP/s
on two counts: the nominal one (forward 2*N*K*P*Q*C*R*S flops, backward twice that: data and
weight gradients) and the real one, without the multiply-adds of taps that fall on the zero
border (:func:`hpcnn.kernels.direct.real_macs`: what "direct" and oneDNN do); the fraction of the
core's FMA peak on the real count (:func:`hpcnn.kernels.peak.fma_peak`: independent FMAs in
registers, measured in the same process at the same thread count for the ISA in force) and of
an SGEMM ceiling (a 2048^3 SGEMM, likewise); the strategy's workspace (computed from the shapes and
its chunk plan, see :func:`hpcnn.kernels.conv.workspace_bytes`), and, when PyTorch is importable,
``torch.nn.functional.conv2d`` forward and backward on the same arrays and threads, and the ratio
PyTorch time / hpcnn time (1.0 = parity, above 1 = hpcnn faster). GoogLeNet rows also show the
pipelined/lowering speedup (forward + backward) beside the paper's figure, and every layer the
share of plain lowering's time spent lowering and folding back (im2col + col2im, from the
profiler). "auto" reports the times of the strategies it chose, from the same rounds.

Thread counts are set in-process for Numba (``numba.set_num_threads``), for every BLAS and
OpenMP pool (threadpoolctl, through :func:`hpcnn.threads.apply`) and for PyTorch
(``torch.set_num_threads``): the same count for both libraries. "auto" is tuned (untimed) on its
first call; its tuning time is reported apart.

The header and the JSON name the CPU model and the vector ISA the kernels run
(:mod:`hpcnn.kernels.isa`); ``--isa avx512,avx2`` measures every path the CPU runs, one after
the other, in the same run (as ``HPCNN_ISA`` would force each).
"""

import argparse
import json
import os
import statistics
import time

from hpcnn.errors import HpcnnError

DEFAULT_LAYERS = os.path.join(os.path.dirname(__file__), "conv_layers.json")
SETS = ("cifar10_quick", "googlenet")


def _set_threads(n, torch):
    from hpcnn import threads

    got = threads.apply(n)
    if torch is not None:
        torch.set_num_threads(got)
    return got


STATS = {"min": min, "median": statistics.median}
STAT = "min"
"""How the rounds of one measurement are summarized (``--stat``): the best round by default, as
the other benchmarks keep the best run: on these shared machines noise only ever adds time, and
PyTorch is timed in rounds of its own, which a slow spell can hit and spare hpcnn's (or the
reverse); the median is kept in the JSON too."""


def _set_stat(stat):
    global STAT
    STAT = stat


def _interleaved_ms(runs, repeats, stat=None):
    """{label: (forward ms, backward ms)}: the ``stat`` (default :data:`STAT`) of ``repeats``
    rounds, each round timing every label's forward and backward once, in turn, so that a slow
    spell of a noisy machine hits all of them alike instead of whichever ran then. One untimed
    warm-up of each first. The other statistic is under the key ``(label, "other")``."""
    for fwd, bwd in runs.values():
        fwd()
        bwd()
    ts = {label: ([], []) for label in runs}
    for _ in range(repeats):
        for label, pair in runs.items():
            for run, into in zip(pair, ts[label], strict=True):
                t0 = time.perf_counter()
                run()
                into.append(time.perf_counter() - t0)
    stat = stat or STAT
    other = "median" if stat == "min" else "min"
    out = {}
    for label, (f, b) in ts.items():
        out[label] = (1e3 * STATS[stat](f), 1e3 * STATS[stat](b))
        out[(label, "other")] = (1e3 * STATS[other](f), 1e3 * STATS[other](b))
    return out


def sgemm_ceiling(n=2048, repeats=3):
    """GFLOP/s of the best of ``repeats`` n^3 float32 GEMMs through numpy's BLAS, on all the
    threads in force (BLAS is otherwise kept on one: see :func:`hpcnn.threads.apply`)."""
    import numba

    from hpcnn.kernels.pipelined import _BlasThreads

    with _BlasThreads(numba.get_num_threads()):
        return _sgemm_ceiling(n, repeats)


def _sgemm_ceiling(n, repeats):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    np.dot(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.dot(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def load_layers(path, which, batch=None):
    """[(set name, layer dict with N)] of the chosen sets (``which``: a set name or "all")."""
    with open(path) as f:
        data = json.load(f)
    names = [s for s in SETS if s in data] if which == "all" else [which]
    out = []
    for name in names:
        if name not in data:
            raise SystemExit(f"{path} has no layer set {name!r} (has: "
                             f"{', '.join(k for k in data if k != 'about')})")
        for layer in data[name]["layers"]:
            out.append((name, dict(layer, N=batch or data[name]["batch"])))
    return out


def _torch_timers(torch, x, w, b, dy, stride, pad):
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    dyt = torch.from_numpy(dy)
    conv = torch.nn.functional.conv2d

    def fwd():
        with torch.no_grad():
            conv(xt, wt, bt, stride, pad)

    yt = conv(xt, wt, bt, stride, pad)

    def bwd():
        torch.autograd.grad(yt, (xt, wt, bt), dyt, retain_graph=True)

    return fwd, bwd


def _rates(row, flops, real, peak, ceiling):
    """GFLOP/s on the nominal and the real counts, and the fractions of the FMA peak (real
    count) and of the SGEMM ceiling (nominal count), forward and backward (twice the flops)."""
    for d, k in (("forward", 1), ("backward", 2)):
        ms = row[f"{d}_ms"]
        row[f"{d}_gflops"] = k * flops / ms / 1e6
        row[f"{d}_real_gflops"] = k * real / ms / 1e6
        row[f"{d}_frac_fma_peak"] = row[f"{d}_real_gflops"] / peak
        row[f"{d}_frac_peak"] = row[f"{d}_gflops"] / ceiling


def bench_layer(layer, algos, repeats, threads, ceiling, torch, seed=0, peak=None):
    """One layer at the thread count in force: {"algos": {name: {...}}, "torch": {...}}.
    ``peak``: the FMA peak (GFLOP/s) at this thread count; ``ceiling``: the SGEMM ceiling."""
    import numpy as np

    from hpcnn.kernels import autotune, conv, direct

    peak = peak or ceiling

    N, C, H, W, K, R = (layer[k] for k in ("N", "C", "H", "W", "K", "R"))
    S = layer.get("S", R)
    s, p = layer.get("stride", 1), layer.get("pad", 0)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = (rng.standard_normal((K, C, R, S), dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(K, dtype=np.float32)
    P, Q = (H + 2 * p - R) // s + 1, (W + 2 * p - S) // s + 1
    dy = rng.standard_normal((N, K, P, Q), dtype=np.float32)
    flops = 2.0 * N * K * P * Q * C * R * S
    real_flops = 2.0 * direct.real_macs(x.shape, w.shape, (s, s), (p, p))
    out = {"layer": layer["name"], "shape": {"N": N, "C": C, "H": H, "W": W, "K": K, "R": R,
                                             "S": S, "stride": s, "pad": p},
           "threads": threads, "gflop_forward": flops / 1e9, "real_gflop_forward": real_flops / 1e9,
           "algos": {}}
    if "paper_speedup" in layer:
        out["paper_speedup"] = layer["paper_speedup"]
    runs = {}  # label -> (forward, backward) callables; timed interleaved below
    for name in algos:
        row = {}
        if name == "auto":
            t0 = time.perf_counter()
            conv.conv2d_forward(x, w, b, s, p, algo="auto")
            conv.conv2d_backward(dy, x, w, s, p, algo="auto")
            row["tune_s"] = time.perf_counter() - t0
            key_args = (x.shape, w.shape, (s, s), (p, p))
            row["chose"] = {d: conv.resolve_algo("auto", *key_args, "bench", x.dtype, d)
                            for d in autotune.DIRECTIONS}
        runs[name] = (lambda n=name: conv.conv2d_forward(x, w, b, s, p, algo=n),
                      lambda n=name: conv.conv2d_backward(dy, x, w, s, p, algo=n))
        out["algos"][name] = row
    times = _interleaved_ms(runs, repeats)
    if "lowering" in algos:
        out["lowering_share"] = lowering_share(runs["lowering"], repeats)
    if torch is not None:  # apart: interleaved, one library's idle threads spin against the other
        times.update(_interleaved_ms({"torch": _torch_timers(torch, x, w, b, dy, s, p)}, repeats))
    for name in algos:
        row = out["algos"][name]
        fwd_ms, bwd_ms = times[name]
        if name == "auto":
            # "auto" runs exactly the strategies it chose (after a dict lookup): its figures are
            # theirs, from the same interleaved rounds; timing the dispatch again only adds noise
            row["dispatch_forward_ms"], row["dispatch_backward_ms"] = fwd_ms, bwd_ms
            chose = row["chose"]
            if chose["forward"] in times and chose["backward"] in times:
                fwd_ms, bwd_ms = times[chose["forward"]][0], times[chose["backward"]][1]
        other = "median" if STAT == "min" else "min"
        row[f"forward_ms_{other}"], row[f"backward_ms_{other}"] = times[(name, "other")]
        row.update(forward_ms=fwd_ms, backward_ms=bwd_ms)
        _rates(row, flops, real_flops, peak, ceiling)
        ws = {}
        for d, bwd in (("forward", False), ("backward", True)):
            real = row["chose"][d] if name == "auto" else name
            total, low = conv.workspace_bytes(real, x.shape, w.shape, s, p, 4, threads, bwd)
            ws[d] = {"total_bytes": total, "lowering_bytes": low}
        row["workspace"] = ws
    if torch is not None:
        t = dict(zip(("forward_ms", "backward_ms"), times["torch"], strict=True))
        other = "median" if STAT == "min" else "min"
        t[f"forward_ms_{other}"], t[f"backward_ms_{other}"] = times[("torch", "other")]
        _rates(t, flops, real_flops, peak, ceiling)
        out["torch"] = t
        for row in out["algos"].values():  # PyTorch time / hpcnn time: > 1 = hpcnn faster
            row["ratio_vs_torch_forward"] = t["forward_ms"] / row["forward_ms"]
            row["ratio_vs_torch_backward"] = t["backward_ms"] / row["backward_ms"]
            row["ratio_vs_torch_total"] = ((t["forward_ms"] + t["backward_ms"])
                                           / (row["forward_ms"] + row["backward_ms"]))
    low, pipe = out["algos"].get("lowering"), out["algos"].get("pipelined")
    if low and pipe:
        out["pipelined_speedup"] = ((low["forward_ms"] + low["backward_ms"])
                                    / (pipe["forward_ms"] + pipe["backward_ms"]))
        out["pipelined_speedup_forward"] = low["forward_ms"] / pipe["forward_ms"]
    return out


def lowering_share(pair, repeats):
    """Share of plain lowering's forward + backward wall time spent lowering (im2col) and
    folding back (col2im), from the profiler's regions over ``repeats`` runs."""
    from hpcnn import profile

    fwd, bwd = pair
    profile.enable()
    try:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fwd()
            bwd()
        wall = time.perf_counter() - t0
    finally:
        profile.disable()
    kinds = profile.stats()["by_kind"]
    profile.reset()
    return sum(kinds[k]["self_s"] for k in ("lowering", "col2im") if k in kinds) / wall


def _print_layer(r):
    sh = r["shape"]
    head = (f"{r['layer']} N={sh['N']} C={sh['C']} {sh['H']}x{sh['W']} K={sh['K']} "
            f"{sh['R']}x{sh['S']}/s{sh['stride']}/p{sh['pad']}, {r['threads']} thread(s), "
            f"{r['gflop_forward']:.3f} GFLOP fwd "
            f"({100 * r['real_gflop_forward'] / r['gflop_forward']:.0f}% on real pixels)")
    if "lowering_share" in r:
        head += f" | lowering+col2im {100 * r['lowering_share']:.0f}% of lowering's time"
    if "pipelined_speedup" in r:
        head += f" | pipelined/lowering {r['pipelined_speedup']:.2f}x"
        if "paper_speedup" in r:
            head += f" (paper {r['paper_speedup']:.2f}x)"
    print(head)
    print(f"  {'algo':<16} {'fwd ms':>8} {'GF/s':>6} {'real':>6} {'FMA%':>5} {'bwd ms':>8} "
          f"{'GF/s':>6} {'real':>6} {'FMA%':>5} {'ws MiB':>7} {'vs torch f/b/tot':>17}")
    for name, a in r["algos"].items():
        label = name
        if name == "auto":
            label = f"auto({a['chose']['forward'][:4]}/{a['chose']['backward'][:4]})"
        ws = max(a["workspace"]["forward"]["total_bytes"],
                 a["workspace"]["backward"]["total_bytes"]) / 2 ** 20
        line = f"  {label:<16} {_rate_cols(a)} {ws:7.2f}"
        if "ratio_vs_torch_total" in a:
            line += (f" {a['ratio_vs_torch_forward']:5.2f}/{a['ratio_vs_torch_backward']:4.2f}/"
                     f"{a['ratio_vs_torch_total']:4.2f}")
        print(line)
    if "torch" in r:
        t = r["torch"]
        print(f"  {'torch':<16} {_rate_cols(t)}")


def _rate_cols(a):
    return " ".join(f"{a[f'{d}_ms']:8.2f} {a[f'{d}_gflops']:6.1f} {a[f'{d}_real_gflops']:6.1f} "
                    f"{100 * a[f'{d}_frac_fma_peak']:4.0f}%" for d in ("forward", "backward"))


SHARE_BAR = 0.25
"""Layers whose lowering + col2im take at least this share of plain lowering's time are where
pipelined lowering must beat plain lowering (at 2 threads and more)."""


def _total_ms(row):
    return row["forward_ms"] + row["backward_ms"]


MID_CHANNELS = range(32, 65)
"""The "32-64 channel" layers (input and output channels both in this range), where the
summary lists auto's fraction of the FMA peak on the real count."""


def summarize(results):
    """Per (set, threads): over the layers, auto's fwd+bwd ratio to PyTorch (median, minimum),
    auto's speedup over plain lowering (minimum), and pipelined's speedup over plain lowering on
    the layers where lowering + col2im take >= SHARE_BAR of plain lowering's time."""
    groups = {}
    for r in results:
        groups.setdefault((r["set"], r["threads"], r.get("isa")), []).append(r)
    out = []
    for (name, t, isa), rs in groups.items():
        s = {"set": name, "threads": t, "isa": isa, "layers": len(rs)}
        mid = [r for r in rs if r["shape"]["C"] in MID_CHANNELS
               and r["shape"]["K"] in MID_CHANNELS and "auto" in r["algos"]]
        if mid:
            s["fma_peak_mid_layers"] = {
                r["layer"]: {d: r["algos"]["auto"][f"{d}_frac_fma_peak"]
                             for d in ("forward", "backward")} for r in mid}
        vs_torch = [(r["algos"]["auto"]["ratio_vs_torch_total"], r["layer"]) for r in rs
                    if "ratio_vs_torch_total" in r["algos"].get("auto", {})]
        if vs_torch:
            worst = min(vs_torch)
            s.update(median_ratio_auto_vs_torch=statistics.median(v for v, _ in vs_torch),
                     min_ratio_auto_vs_torch=worst[0], min_layer=worst[1])
        vs_low = [(_total_ms(r["algos"]["lowering"]) / _total_ms(r["algos"]["auto"]), r["layer"])
                  for r in rs if "auto" in r["algos"] and "lowering" in r["algos"]]
        if vs_low:
            worst = min(vs_low)
            s.update(min_auto_vs_lowering=worst[0], min_auto_vs_lowering_layer=worst[1],
                     auto_below_lowering=[n for v, n in vs_low if v < 1.0])
        heavy = [r for r in rs if r.get("lowering_share", 0) >= SHARE_BAR
                 and "pipelined_speedup" in r]
        if heavy and t >= 2:
            s["lowering_heavy_layers"] = [r["layer"] for r in heavy]
            worst = min((r["pipelined_speedup"], r["layer"]) for r in heavy)
            s.update(min_pipelined_vs_lowering_heavy=worst[0],
                     min_pipelined_vs_lowering_heavy_layer=worst[1])
        out.append(s)
    return out


def _print_summary(summary):
    print("\nsummary (fwd+bwd; ratios above 1 favour the first named)")
    for s in summary:
        head = (f"  {s['set']:<14} {s['isa'] or ''} {s['threads']} thread(s), {s['layers']} "
                "layers:")
        if "median_ratio_auto_vs_torch" in s:
            print(f"{head} auto vs PyTorch median {s['median_ratio_auto_vs_torch']:.2f}x, min "
                  f"{s['min_ratio_auto_vs_torch']:.2f}x ({s['min_layer']})")
            head = " " * len(head)
        if "min_auto_vs_lowering" in s:
            below = ", ".join(s["auto_below_lowering"]) or "none"
            print(f"{head} auto vs lowering min {s['min_auto_vs_lowering']:.2f}x "
                  f"({s['min_auto_vs_lowering_layer']}); below 1.0x: {below}")
            head = " " * len(head)
        if "lowering_heavy_layers" in s:
            print(f"{head} pipelined vs lowering where lowering+col2im >= "
                  f"{100 * SHARE_BAR:.0f}% ({len(s['lowering_heavy_layers'])} layers): min "
                  f"{s['min_pipelined_vs_lowering_heavy']:.2f}x "
                  f"({s['min_pipelined_vs_lowering_heavy_layer']})")
            head = " " * len(head)
        if "fma_peak_mid_layers" in s:
            cells = ", ".join(f"{n} {100 * v['forward']:.0f}%/{100 * v['backward']:.0f}%"
                              for n, v in s["fma_peak_mid_layers"].items())
            print(f"{head} auto, FMA peak on real multiply-adds (fwd/bwd), 32-64 channel "
                  f"layers: {cells}")


def main(argv=None):
    from hpcnn.kernels import conv

    p = argparse.ArgumentParser(prog="python -m hpcnn.bench conv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="layer file (JSON)")
    p.add_argument("--set", default="cifar10_quick", choices=[*SETS, "all"])
    p.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement")
    p.add_argument("--stat", choices=list(STATS), default=STAT,
                   help="summary of the rounds: min (the least disturbed; default) or median")
    p.add_argument("--batch", type=int, default=None, help="override the sets' batch sizes")
    p.add_argument("--algos", default=None,
                   help=f"comma-separated strategies (default: all of {', '.join(conv.ALGOS)} "
                        "and auto)")
    p.add_argument("--isa", default=None,
                   help="comma-separated vector ISAs to measure in turn (of avx512, avx2, "
                        "generic; default: $HPCNN_ISA, else the widest this CPU runs)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when installed")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)

    algos = a.algos.split(",") if a.algos else [*conv.ALGOS, "auto"]
    bad = [n for n in algos if n != "auto" and n not in conv.ALGOS]
    if bad:
        p.error(f"unknown algos {bad}; valid: {', '.join([*conv.ALGOS, 'auto'])}")
    if a.repeats < 1:
        p.error("--repeats must be >= 1")
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    _set_stat(a.stat)
    layers = load_layers(a.layers, a.set, a.batch)
    from hpcnn import threads as thr
    from hpcnn.kernels import _native, autotune, peak
    from hpcnn.kernels import isa as isa_mod

    try:
        isas = [isa_mod.select(n) for n in a.isa.split(",")] if a.isa else [isa_mod.select()]
    except HpcnnError as e:
        p.error(str(e))
    host = isa_mod.host_isa()
    results, ceilings, peaks = [], {}, {}
    for isa in isas:
        os.environ[isa_mod.ENV] = isa.name  # every kernel, and the autotuner's keys, follow it
        for t in (int(v) for v in a.threads.split(",")):
            t = _set_threads(t, torch)
            if t not in ceilings:
                ceilings[t] = sgemm_ceiling()
            pk = peaks.setdefault(isa.name, {})[t] = peak.fma_peak(isa, t)
            print(f"== CPU {autotune.cpu_model()} | ISA {isa.name} ({isa.lanes} lanes; host "
                  f"{host.name}) | {t} thread(s): FMA peak {pk:.1f} GFLOP/s, SGEMM ceiling "
                  f"{ceilings[t]:.1f} | threads {thr.current()} | BLAS {_native.BLAS_INFO}",
                  flush=True)
            for set_name, layer in layers:
                r = bench_layer(layer, algos, a.repeats, t, ceilings[t], torch, peak=pk)
                r["set"], r["isa"] = set_name, isa.name
                _print_layer(r)
                results.append(r)
    summary = summarize(results)
    if summary:
        _print_summary(summary)
    if a.json:
        meta = {"cpu": autotune.cpu_model(), "host_isa": host.name,
                "isas": [i.name for i in isas], "blas": _native.BLAS_INFO, "repeats": a.repeats,
                "stat": a.stat, "fma_peak_gflops": peaks,
                "sgemm_ceiling_gflops": ceilings, "torch": getattr(torch, "__version__", None)}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": results, "summary": summary}, f, indent=1)
    return 0
