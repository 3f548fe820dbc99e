"""``python -m hpcnn.scaling report``: the study's plots and ``report.md`` from the measured points
(CSV), the alpha-beta fits, the compute profiles and the model.

Plots need matplotlib (the optional extra ``plot``); without it the report is written without
them and says why.
"""

import argparse
import json
import os
import sys

from hpcnn.errors import HpcnnError, UsageError
from hpcnn.scaling import model as md
from hpcnn.scaling.csvio import best_rows, spreads

LINK_ORDER = ("shm", "10gbit", "1gbit")
NAMED = ("10GbE", "IB-EDR", "Tofu")
PAPER = {"nodes": 864, "speedup": 772, "efficiency": 0.89}  # Sakiyama et al.
MODE_NAMES = {"data": "data", "a": "hybrid a", "b": "hybrid b", "c": "hybrid c"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _mode(r):
    return r["scheme"] if r["parallel"] == "hybrid" else "data"


def _link_params(links, name):
    lk = links[name]
    return lk["kinds"], (lk["overlap"] if lk["overlap"] is not None else 0.0)


def predict_row(r, profs, shapes, links, pick="nearest"):
    """The model's prediction for a measured row (None when its net or link is unknown), from a
    compute profile that ``run`` took beside the row's net and batch where there is one (``pick``
    the one nearest in time, or the fastest: :func:`md.profile_for`), else (and with ``pick``
    None) from the study's one profile of the net."""
    prof, study = md.point_profiles(profs, r, pick)
    if prof is None or r["link"] not in links:
        return None
    kinds, w = _link_params(links, r["link"])
    par, grid, scheme = md.point_args(r)
    return md.predict(prof, shapes[r["net"]], par, r["nodes"], r["ranks_per_node"],
                      r["batch_per_rank"], kinds, w, grid, scheme,
                      links[r["link"]].get("jitter", 0.0), study)


def _timeline_lines(rows, every, shapes, links):
    """How the compute profiles were matched to the points, and the error with the other ways
    to match them (where ``run`` took profiles beside its cells)."""
    counts = [len(md.beside_profiles(every, r["net"], r["ranks"], r["batch_per_rank"]))
              for r in rows]
    if not any(counts):
        return []

    def within(pick):
        preds = [predict_row(r, every, shapes, links, pick) for r in rows]
        errs = [abs(p["images_per_s"] / r["images_per_s"] - 1) for r, p in zip(rows, preds) if p]
        return f"{sum(e <= 0.15 for e in errs)} of {len(errs)} within 15% (worst " \
               f"{100 * max(errs):.1f}%)"

    gaps = sorted(md.nearest_profile(every, r["net"], r["ranks"], r["time_utc"],
                                     r["batch_per_rank"])[0] for r, c in zip(rows, counts) if c)
    return [f"Compute profiles: {sum(c > 0 for c in counts)} of {len(rows)} points are "
            f"predicted from the compute profile that `run` took beside them (`profiles/`: the "
            f"same net and batch, as many processes at once as the point had ranks; of the "
            f"{min(c for c in counts if c)}-{max(counts)} such profiles the one taken nearest "
            f"in time: median {gaps[len(gaps) // 2]:.0f} s away, at most {gaps[-1]:.0f} s), "
            f"the rest from the study's one profile per net. From the fastest of those profiles "
            f"instead (the least disturbed): {within('fastest')}. From the study's one profile "
            f"per net (`compute_NET[_x2].json`) for every point: {within(None)}.", ""]


def best_hybrid(prof, shape, nodes, n, kinds, w, max_m=64):
    """The fastest hybrid (scheme, grid) at ``nodes`` ranks: M over powers of 2 dividing it."""
    best = None
    m = 2
    while m <= min(nodes, max_m):
        if nodes % m == 0:
            for s in ("a", "b", "c"):
                r = md.predict(prof, shape, "hybrid", nodes, 1, n, kinds, w, (nodes // m, m), s)
                if best is None or r["images_per_s"] > best[0]["images_per_s"]:
                    best = (r, s, (nodes // m, m))
        m *= 2
    return best


def crossover(prof, shape, n, kinds, w, max_nodes=1024):
    """Smallest power-of-2 node count where the best hybrid beats data parallelism (or None)."""
    nodes = 2
    while nodes <= max_nodes:
        d = md.predict(prof, shape, "data", nodes, 1, n, kinds, w)
        h = best_hybrid(prof, shape, nodes, n, kinds, w)
        if h and h[0]["images_per_s"] > d["images_per_s"]:
            return nodes, h
        nodes *= 2
    return None


def build(rows, profs, fits_path, out, comm_dir=None, plots=True):
    """Write ``out``/report.md (and the PNGs); returns the report's text."""
    measured = len(rows)
    spread = spreads(rows)
    rows = best_rows(rows)
    links = md.load_links(fits_path)
    every = profs
    profs = {k: v for k, v in every.items() if isinstance(k, str)}  # one process per machine
    shapes = {n: md.NetShape.of(n) for n in profs}
    os.makedirs(out, exist_ok=True)
    lines = ["# Scaling study", ""]
    cpus = sorted({r["cpu"] for r in rows})
    lines += [f"Measured on: {', '.join(cpus) or '-'} (2 cores, 24 GiB; every point 1 thread per "
              f"rank). {measured} rows in the CSV for {len(rows)} cells (a cell measured more "
              f"than once is shown by its fastest row); each row's exact command and seed are "
              f"in its `command` and `seed` columns.", ""]
    # measured against predicted ---------------------------------------------------------------
    base = {(r["net"], r["batch_per_rank"]): r for r in rows if r["ranks"] == 1}
    table, errors = [], []
    for r in sorted(rows, key=lambda r: (r["net"], r["ranks"], LINK_ORDER.index(r["link"])
                                         if r["link"] in LINK_ORDER else 9, r["batch_per_rank"],
                                         _mode(r))):
        pr = predict_row(r, every, shapes, links)
        b = base.get((r["net"], r["batch_per_rank"]))
        spd = r["images_per_s"] / b["images_per_s"] if b else float("nan")
        err = pr["images_per_s"] / r["images_per_s"] - 1 if pr else float("nan")
        if pr:
            errors.append((abs(err), err, r, pr))
        table.append(
            f"| {r['net']} | {MODE_NAMES[_mode(r)]} | {r['nodes']}x{r['ranks_per_node']} | "
            f"{r['link']} | {r['batch_per_rank']} | {r['images_per_s']:.1f} | "
            + (f"{pr['images_per_s']:.1f} | {100 * err:+.1f}% | " if pr else "- | - | ")
            + f"{spd:.2f}x | {100 * spd / r['ranks']:.0f}% | {1e3 * r['step_s_mean']:.1f} | "
            f"{1e3 * r['compute_s_mean']:.1f} | {1e3 * r['wait_s_mean']:.1f} | "
            + (f"{1e3 * pr['compute_s']:.1f} | {1e3 * pr['exposed_s']:.1f} | "
               if pr else "- | - | ")
            + f"{r['bytes_total'] / 2**20:.2f} |")
    lines += ["## Measured points and the model", "",
              "img/s: measured (the slowest rank's timed loop) and predicted; speedup and "
              "efficiency over 1 rank at the same per-rank batch (weak scaling); step, compute "
              "and wait: mean over ranks, ms; model compute and exposed communication, ms; "
              "MiB sent per step and rank.", "",
              "| net | mode | nodes x ranks | link | batch/rank | img/s | model img/s | error | "
              "speedup | eff. | step ms | compute | wait | model compute | model comm | MiB |",
              "|" + "---|" * 16] + table + [""]
    if errors:
        worst = max(errors, key=lambda e: e[0])
        within = sum(e[0] <= 0.15 for e in errors)
        r = worst[2]
        lines += [f"**Model error**: {within} of {len(errors)} points within 15%; the worst is "
                  f"{r['net']} {MODE_NAMES[_mode(r)]}, {r['nodes']}x{r['ranks_per_node']} over "
                  f"{r['link']}, batch {r['batch_per_rank']}/rank: measured "
                  f"{r['images_per_s']:.1f} img/s, predicted {worst[3]['images_per_s']:.1f} "
                  f"({100 * worst[1]:+.1f}%).", ""]
        lines += _timeline_lines(rows, every, shapes, links)
    if spread:
        top, r = spread[0]
        lines += [f"Repeatability: of the {len(spread)} cells measured more than once, "
                  f"{sum(x > 0.15 for x, _ in spread)} have rows more than 15% apart "
                  f"(fastest over slowest images/s; median {100 * spread[len(spread) // 2][0]:.1f}"
                  f"%, largest {100 * top:.1f}%: {r['net']} {MODE_NAMES[_mode(r)]}, "
                  f"{r['nodes']}x{r['ranks_per_node']} over {r['link']}, batch "
                  f"{r['batch_per_rank']}/rank). The model is compared with each cell's "
                  f"fastest row.", ""]
    # hybrid against data parallelism on owt_cifar over 1 Gbit/s -------------------------------
    lines += ["## Hybrid against data parallelism, 2 nodes", ""]
    for net in sorted({r["net"] for r in rows}):
        for link in [x for x in LINK_ORDER if any(r["link"] == x and r["net"] == net
                                                   and r["ranks"] == 2 for r in rows)]:
            for bsz in sorted({r["batch_per_rank"] for r in rows if r["net"] == net}):
                pts = {_mode(r): r for r in rows if r["net"] == net and r["link"] == link
                       and r["ranks"] == 2 and r["batch_per_rank"] == bsz}
                if "data" not in pts or len(pts) < 2:
                    continue
                hy = max((m for m in pts if m != "data"), key=lambda m: pts[m]["images_per_s"])
                meas = pts[hy]["images_per_s"] / pts["data"]["images_per_s"]
                pd = predict_row(pts["data"], every, shapes, links)
                ph = predict_row(pts[hy], every, shapes, links)
                pred = f"{ph['images_per_s'] / pd['images_per_s']:.2f}x" if pd and ph else "-"
                lines.append(f"- {net}, {link}, batch {bsz}/rank: best hybrid ({MODE_NAMES[hy]}) "
                             f"{pts[hy]['images_per_s']:.1f} img/s against data parallelism "
                             f"{pts['data']['images_per_s']:.1f}: **{meas:.2f}x** measured, "
                             f"{pred} predicted")
    lines.append("")
    # alpha-beta fits -------------------------------------------------------------------------
    lines += ["## Alpha-beta fits (from `python -m hpcnn.bench comm`)", "",
              "| link | kind | alpha (us) | 1/beta (MB/s) | samples | ranks | worst fit error |",
              "|---|---|---|---|---|---|---|"]
    fitdoc = {}
    if fits_path and os.path.exists(fits_path):
        with open(fits_path) as f:
            fitdoc = json.load(f)
    for name, v in fitdoc.get("links", {}).items():
        for k, d in v.get("detail", {}).items():
            bw = f"{d['bandwidth_MBps']:.0f}" if d.get("bandwidth_MBps") else "-"
            lines.append(f"| {name} | {k} | {1e6 * d['alpha_s']:.1f} | {bw} | {d['samples']} | "
                         f"{','.join(map(str, d['ranks']))} | {100 * d['worst_rel_error']:.0f}% |")
    lines.append("")
    ov = {n: (v.get("overlap", 0.0), v.get("jitter_s", 0.0))
          for n, v in fitdoc.get("links", {}).items()}
    if ov:
        lines += ["Calibrated constants, fitted to the measured points of each link (assumptions "
                  "3 and 6): " + ", ".join(f"{n}: overlap {w:.2f}, jitter {1e3 * j:.1f} ms per "
                                           f"wait" for n, (w, j) in ov.items()) + ".", ""]
    lines += ["Named interconnects (the same alpha and beta for every kind; sources in "
              "`hpcnn/scaling/alphabeta.py`): "
              + ", ".join(f"{n} alpha {1e6 * a:.1f} us, {1e-9 / b:.2f} GB/s"
                          for n, (a, b) in md.ab.INTERCONNECTS.items()) + ".", ""]
    # crossover and projection ---------------------------------------------------------------
    lines += ["## Where hybrid overtakes data parallelism (model)", "",
              "Smallest power-of-2 node count (1 rank per node, up to 1024) at which the best "
              "hybrid scheme and grid beats data parallelism, per-rank batch as given.", "",
              "| net | link | batch/rank | hybrid faster from | scheme, grid | speedup there |",
              "|---|---|---|---|---|---|"]
    for net, prof in sorted(profs.items()):
        for link in [x for x in (*LINK_ORDER, *NAMED) if x in links and x != "shm"]:
            kinds, w = _link_params(links, link)
            for bsz in (16, 64, 256):
                c = crossover(prof, shapes[net], bsz, kinds, w)
                if c is None:
                    lines.append(f"| {net} | {link} | {bsz} | never (<= 1024) | - | - |")
                else:
                    nodes, (r, s, g) = c
                    one = md.predict(prof, shapes[net], "data", 1, 1, bsz, kinds)
                    lines.append(f"| {net} | {link} | {bsz} | {nodes} | {s}, {g[0]}x{g[1]} | "
                                 f"{r['images_per_s'] / one['images_per_s']:.1f}x |")
    lines.append("")
    lines += ["## Projection to 864 nodes (model)", "",
              f"Sakiyama et al. scaled data parallelism {PAPER['speedup']}x on {PAPER['nodes']} "
              f"nodes of the K computer ({100 * PAPER['efficiency']:.0f}%). The model, with this "
              f"machine's compute per sample (1 thread) on 864 nodes of 1 rank, weak scaling "
              f"from the 1-node run at the same per-rank batch:", "",
              "| net | link | global batch | batch/rank | data speedup | data eff. | "
              "best hybrid | hybrid speedup |", "|---|---|---|---|---|---|---|---|"]
    proj = {}
    for net, prof in sorted(profs.items()):
        for link in [x for x in (*NAMED, "10gbit", "1gbit") if x in links]:
            kinds, w = _link_params(links, link)
            for gb in (864, 6912):
                n = gb // 864
                s, e = md.efficiency(prof, shapes[net], "data", 864, 1, n, kinds, w)
                h = best_hybrid(prof, shapes[net], 864, n, kinds, w)
                one = md.predict(prof, shapes[net], "data", 1, 1, n, kinds)["images_per_s"]
                hs = h[0]["images_per_s"] / one
                proj[(net, link, gb)] = (s, e, hs)
                lines.append(f"| {net} | {link} | {gb} | {n} | {s:.0f}x | {100 * e:.0f}% | "
                             f"{h[1]}, {h[2][0]}x{h[2][1]} | {hs:.0f}x |")
    lines += ["", f"Paper: {PAPER['speedup']}x ({100 * PAPER['efficiency']:.0f}%) at "
              f"{PAPER['nodes']} nodes.", ""]
    lines += ["## The model's assumptions", "", md.ASSUMPTIONS, ""]
    # plots -----------------------------------------------------------------------------------
    pngs, why = [], None
    if plots:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # noqa: F401
        except ImportError:
            why = "matplotlib is not installed (pip install 'hpcnn[plot]')"
        else:
            pngs = _plots(rows, every, shapes, links, out, comm_dir)
    else:
        why = "plots were not asked for (--no-plots)"
    lines += ["## Plots", ""]
    if why:
        lines.append(f"No PNGs: {why}.")
    for name, title in pngs:
        lines.append(f"![{title}]({name})")
    lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def _plots(rows, every, shapes, links, out, comm_dir):
    import matplotlib.pyplot as plt

    profs = {k: v for k, v in every.items() if isinstance(k, str)}
    made = []
    colors = {"data": "C0", "a": "C1", "b": "C2", "c": "C3"}
    # speedup and efficiency against nodes, model curves with the measured points
    for net, prof in sorted(profs.items()):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        nodes = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 864]
        bsz = 64
        for link, ls in (("shm", ":"), ("10gbit", "-"), ("1gbit", "--"), ("Tofu", "-.")):
            if link not in links:
                continue
            kinds, w = _link_params(links, link)
            for mode in ("data", "a"):
                sp = []
                for k in nodes:
                    if mode == "data":
                        s, _ = md.efficiency(prof, shapes[net], "data", k, 1, bsz, kinds, w)
                    else:
                        s, _ = md.efficiency(prof, shapes[net], "hybrid", k, 1, bsz, kinds, w,
                                             (1, k), "a") if k > 1 else (1.0, 1.0)
                    sp.append(s)
                axes[0].plot(nodes, sp, ls, color=colors[mode], label=f"{MODE_NAMES[mode]} {link}")
                axes[1].plot(nodes, [s / k for s, k in zip(sp, nodes)], ls, color=colors[mode])
        base = {(r["net"], r["batch_per_rank"]): r for r in rows if r["ranks"] == 1}
        for r in rows:
            if r["net"] != net or r["batch_per_rank"] != bsz:
                continue
            b = base.get((net, bsz))
            if not b:
                continue
            s = r["images_per_s"] / b["images_per_s"]
            m = _mode(r)
            axes[0].plot(r["ranks"], s, "o", color=colors[m], mfc="none")
            axes[1].plot(r["ranks"], s / r["ranks"], "o", color=colors[m], mfc="none")
            pr, pb = predict_row(r, every, shapes, links), predict_row(b, every, shapes, links)
            if pr and pb:  # the model at that point (the machine's cores shared as measured)
                ps = pr["images_per_s"] / pb["images_per_s"]
                axes[0].plot(r["ranks"], ps, "x", color=colors[m])
                axes[1].plot(r["ranks"], ps / r["ranks"], "x", color=colors[m])
        axes[0].set(xscale="log", yscale="log", xlabel="nodes (1 rank each)",
                    ylabel="speedup over 1 node", title=f"{net}, {bsz} images per rank")
        axes[1].set(xscale="log", xlabel="nodes", ylabel="efficiency", ylim=(0, 1.6),
                    title="lines: model, a node per machine (hybrid a, 1xN);\ncircles: "
                    "measured; x: model at the measured points")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        name = f"speedup_{net}.png"
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        made.append((name, f"speedup and efficiency, {net}"))
    # step-time breakdown bars: measured and predicted, 2-rank points
    two = [r for r in rows if r["ranks"] == 2]
    if two:
        two.sort(key=lambda r: (r["net"], LINK_ORDER.index(r["link"]) if r["link"] in
                                LINK_ORDER else 9, r["batch_per_rank"], _mode(r)))
        fig, ax = plt.subplots(figsize=(max(8, 0.32 * len(two)), 4.5))
        x = range(len(two))
        comp = [1e3 * r["compute_s_mean"] for r in two]
        wait = [1e3 * r["wait_s_mean"] for r in two]
        data = [1e3 * r["data_s_mean"] for r in two]
        ax.bar([i - 0.2 for i in x], comp, 0.4, label="compute", color="C0")
        ax.bar([i - 0.2 for i in x], wait, 0.4, bottom=comp, label="wait (collectives)",
               color="C3")
        ax.bar([i - 0.2 for i in x], data, 0.4, bottom=[c + w for c, w in zip(comp, wait)],
               label="data", color="C2")
        preds = [predict_row(r, every, shapes, links) for r in two]
        pc = [1e3 * p["compute_s"] if p else 0 for p in preds]
        pe = [1e3 * p["exposed_s"] if p else 0 for p in preds]
        ax.bar([i + 0.2 for i in x], pc, 0.4, label="model compute", color="C0", alpha=0.45)
        ax.bar([i + 0.2 for i in x], pe, 0.4, bottom=pc, label="model exposed comm",
               color="C3", alpha=0.45)
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{r['net'][:5]} {MODE_NAMES[_mode(r)]} {r['link']} "
                            f"b{r['batch_per_rank']}" for r in two], rotation=90, fontsize=6)
        ax.set(ylabel="ms per step", yscale="log", title="2 ranks: step time, measured (left) "
               "and model (right)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "breakdown.png"), dpi=90)
        plt.close(fig)
        made.append(("breakdown.png", "step-time breakdown"))
    # batch sweep: images/s against per-rank batch, 2 nodes, each link
    for net in sorted(profs):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        bs = [8, 16, 32, 64, 128, 256, 512]
        for link, ls in (("shm", ":"), ("10gbit", "-"), ("1gbit", "--")):
            if link not in links:
                continue
            kinds, w = _link_params(links, link)
            nodes, per = (1, 2) if link == "shm" else (2, 1)
            busy = md.profile_for(every, net, 2)  # both ranks on this machine, as measured
            for mode in ("data", "a", "b", "c"):
                par = "data" if mode == "data" else "hybrid"
                ips = [md.predict(busy, shapes[net], par, nodes, per, b, kinds, w, None,
                                  mode if par == "hybrid" else "a",
                                  links[link].get("jitter", 0.0))["images_per_s"] for b in bs]
                ax.plot(bs, ips, ls, color=colors[mode],
                        label=f"{MODE_NAMES[mode]} {link}" if mode in ("data", "a") else None)
            for r in rows:
                if r["net"] == net and r["link"] == link and r["ranks"] == 2:
                    ax.plot(r["batch_per_rank"], r["images_per_s"], "o", color=colors[_mode(r)],
                            mfc="none")
        ax.set(xscale="log", yscale="log", xlabel="batch per rank", ylabel="images/s",
               title=f"{net}, 2 ranks: batch sweep (lines model, circles measured)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"batch_{net}.png"
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
        made.append((name, f"batch-size sweep, {net}"))
    # communication-only points against the fits
    if comm_dir and os.path.isdir(comm_dir):
        docs = []
        for name in sorted(os.listdir(comm_dir)):
            if name.endswith(".json"):
                with open(os.path.join(comm_dir, name)) as f:
                    docs.append(json.load(f))
        kinds_all = sorted({k for d in docs for k in d["results"]})
        if docs:
            fig, axes = plt.subplots(2, (len(kinds_all) + 1) // 2, figsize=(13, 6.5),
                                     squeeze=False)
            for ax, kind in zip(axes.flat, kinds_all):
                for i, d in enumerate(d for d in docs if kind in d["results"]):
                    algo = d.get("allreduce_algorithm", "auto")
                    k = {"ring": "allreduce_ring", "recursive_doubling": "allreduce_rd"}.get(
                        algo, kind) if kind == "allreduce" else kind
                    rows_ = d["results"][kind]
                    xs = [r["bytes"] for r in rows_]
                    tag = algo if kind == "allreduce" else ""
                    ax.plot(xs, [r["avg_us"] for r in rows_], "o", ms=3, color=f"C{i % 10}",
                            label=f"{d['link']} {d['ranks']}r {tag}")
                    lk = links.get(d["link"], {}).get("kinds", {})
                    key = f"{k}@{d['ranks']}" if f"{k}@{d['ranks']}" in lk else k
                    if key in lk:  # the big messages' own fit past ab.BIG, where there is one
                        fit = [lk.get(f"{key}@big", lk[key]) if x >= md.ab.BIG else lk[key]
                               for x in xs]
                        ax.plot(xs, [1e6 * md.ab.cost(k, d["ranks"], x, *f)
                                     for x, f in zip(xs, fit)], "-", color=f"C{i % 10}", lw=0.8)
                ax.set(xscale="log", yscale="log", title=kind, xlabel="bytes", ylabel="us")
                ax.legend(fontsize=5)
            fig.tight_layout()
            fig.savefig(os.path.join(out, "comm.png"), dpi=90)
            plt.close(fig)
            made.append(("comm.png", "collectives: measured (points) and alpha-beta fits"))
    return made


def main(argv):
    from hpcnn.scaling.csvio import read_rows

    p = _Parser(prog="python -m hpcnn.scaling report", description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", default="results/scaling/points.csv")
    p.add_argument("--fits", default="results/scaling/alphabeta.json")
    p.add_argument("--profiles", default="results/scaling",
                   help="folder of compute_NET.json profiles")
    p.add_argument("--comm-dir", default="results/scaling/comm")
    p.add_argument("--out", default="results/scaling")
    p.add_argument("--no-plots", action="store_true")
    try:
        a = p.parse_args(argv)
        rows = read_rows(a.csv)
        profs = md.load_profiles(a.profiles)
        if not profs:
            raise UsageError(f"no compute profiles (compute_NET.json) in {a.profiles}: run "
                             f"python -m hpcnn.scaling model compute --net NET first")
        build(rows, profs, a.fits, a.out, a.comm_dir, plots=not a.no_plots)
    except HpcnnError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {os.path.join(a.out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
