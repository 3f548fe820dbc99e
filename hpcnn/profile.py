"""Op-level profiler: where a training step's time goes, by op kind and by layer.

Off by default, and then nearly free: :func:`region` returns one shared do-nothing context manager
(about 0.2 us per use), and the kernels skip their timers. Once enabled, every region records its
start and end (``time.perf_counter_ns``, i.e. CLOCK_MONOTONIC) on the calling thread's track; the
chunked and pipelined convolutions also record their lowering / GEMM / col2im / layout phases
from inside Numba, on the tracks of the threads that ran them (``numba worker N``).

How to use it (what ``hpcnn.train --profile`` / ``--trace FILE`` should do)::

    from hpcnn import profile

    profile.enable()                          # start recording (clears earlier records)
    for step in ...:
        with profile.region("data"):          # a region: kind, optional layer
            x, y = next_batch()
        logits = model.forward(x)             # layers record themselves (see KINDS)
        with profile.region("loss"):
            loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits)               # DataParallel should wrap its waits in
        with profile.region("optimizer"):     #   profile.region("allreduce_wait")
            opt.step(lr)
    profile.disable()                         # stop recording (records are kept)
    if rank == 0:
        print(profile.report())               # summaryRprof-like tables
    profile.write_trace(f"{path}.{rank}.json", rank=rank)   # one file per rank

Without a ``with`` block: ``tok = profile.start("data")`` ... ``profile.stop(tok)``.
``profile.record(kind, t0_ns, t1_ns)`` adds an already-timed region (as the kernels do).

Self time is a region's time minus that of the regions nested in it on the same thread; total
time is the time a kind (or layer) was open at all, counted once when regions of the same kind
nest. Times add up per thread: when worker threads run (the pipelined convolution's lowering
thread), the report's total is thread time, which can exceed wall time. :func:`write_trace`
writes Chrome trace-event JSON: open it at https://ui.perfetto.dev (or chrome://tracing); each
rank is a process (``pid`` = rank), each thread a track, and several ranks' files can be
loaded together (the timestamps share the node's monotonic clock).
"""

import json
import threading
import time

KINDS = ("data", "conv", "lowering", "gemm", "col2im", "layout", "pooling", "activation",
         "loss", "optimizer", "allreduce_wait", "comm_wait")
"""Op kinds used by hpcnn: "conv" is a convolution layer's own time outside its lowering, GEMM,
col2im and layout (transposes, bias) phases; Linear layers record as "gemm"; any other string
works too."""

MAX_TRACE_EVENTS = 2_000_000
"""Events kept for :func:`write_trace`; beyond it the tables stay exact but the trace stops."""

_enabled = False
_lock = threading.Lock()
_events = []  # (track, kind, layer, t0, t1)
_by_kind = {}  # kind -> [self_ns, total_ns, calls]
_by_layer = {}
_dropped = 0
_local = threading.local()


class _Null:
    """The disabled region: enters and exits doing nothing."""

    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _Null()


def enabled():
    """True while recording."""
    return _enabled


def enable(clear=True):
    """Start recording (dropping earlier records unless ``clear=False``)."""
    global _enabled
    if clear:
        reset()
    _enabled = True


def disable():
    """Stop recording; what was recorded stays for :func:`report` and :func:`write_trace`."""
    global _enabled
    _enabled = False


def reset():
    """Forget every record."""
    global _dropped
    with _lock:
        _events.clear()
        _by_kind.clear()
        _by_layer.clear()
        _dropped = 0


def _state():
    st = getattr(_local, "st", None)
    if st is None:
        t = threading.current_thread()
        track = "main" if t is threading.main_thread() else t.name
        # stack of open regions: [kind, layer, t0, child_ns]; open counts for "total" times
        st = _local.st = {"track": track, "stack": [], "kinds": {}, "layers": {}}
    return st


def _add(table, key, self_ns, total_ns):
    row = table.get(key)
    if row is None:
        row = table[key] = [0, 0, 0]
    row[0] += self_ns
    row[1] += total_ns
    row[2] += 1


def _finish(track, kind, layer, t0, t1, self_ns, kind_outer, layer_outer):
    global _dropped
    dur = t1 - t0
    with _lock:
        _add(_by_kind, kind, self_ns, dur if kind_outer else 0)
        _add(_by_layer, layer, self_ns, dur if layer_outer else 0)
        if len(_events) < MAX_TRACE_EVENTS:
            _events.append((track, kind, layer, t0, t1))
        else:
            _dropped += 1


class _Region:
    __slots__ = ("kind", "layer", "tok")

    def __init__(self, kind, layer):
        self.kind, self.layer = kind, layer

    def __enter__(self):
        self.tok = start(self.kind, self.layer)
        return self

    def __exit__(self, *exc):
        stop(self.tok)
        return False


def region(kind, layer=None):
    """Context manager timing its block as op ``kind`` of ``layer`` (inherited when None)."""
    if not _enabled:
        return _NULL
    return _Region(kind, layer)


def start(kind, layer=None):
    """Open a region; returns the token to pass to :func:`stop` (None while disabled)."""
    if not _enabled:
        return None
    st = _state()
    stack = st["stack"]
    if layer is None and stack:
        layer = stack[-1][1]
    for table, key in ((st["kinds"], kind), (st["layers"], layer)):
        table[key] = table.get(key, 0) + 1
    entry = [kind, layer, time.perf_counter_ns(), 0]
    stack.append(entry)
    return entry


def stop(tok):
    """Close the region opened by :func:`start` (and any left open inside it)."""
    if tok is None:
        return
    t1 = time.perf_counter_ns()
    st = _state()
    stack = st["stack"]
    while stack:
        entry = stack.pop()
        kind, layer, t0, child = entry
        kinds, layers = st["kinds"], st["layers"]
        kinds[kind] -= 1
        layers[layer] -= 1
        dur = t1 - t0
        if stack:
            stack[-1][3] += dur
        _finish(st["track"], kind, layer, t0, t1, dur - child, kinds[kind] == 0,
                layers[layer] == 0)
        if entry is tok:
            break


def record(kind, t0, t1, layer=None, worker=None):
    """Add a region timed elsewhere (ns of ``time.perf_counter_ns``), e.g. inside a kernel.

    ``worker``: the Numba thread that ran it; 0 (or None) is the calling thread, whose open
    region becomes its parent; other workers get their own tracks.
    """
    if not _enabled:
        return
    st = _state()
    stack = st["stack"]
    if layer is None and stack:
        layer = stack[-1][1]
    if not worker:
        if stack:
            stack[-1][3] += t1 - t0
        _finish(st["track"], kind, layer, t0, t1, t1 - t0, st["kinds"].get(kind, 0) == 0,
                st["layers"].get(layer, 0) == 0)
    else:
        _finish(f"numba worker {worker}", kind, layer, t0, t1, t1 - t0, True, True)


# ---------------------------------------------------------------------------------------------
# output


def stats():
    """The report's numbers: {"by_kind": {kind: {...}}, "by_layer": {layer: {...}},
    "total_s": sum of all self times, "wall_s": first start to last end, "tracks": n}.

    Each row: self_s, self_pct, total_s, total_pct, calls (percentages of "total_s")."""
    with _lock:
        kinds = {k: list(v) for k, v in _by_kind.items()}
        layers = {k: list(v) for k, v in _by_layer.items()}
        wall = (max(e[4] for e in _events) - min(e[3] for e in _events)) if _events else 0
        tracks = len({e[0] for e in _events})
    grand = sum(v[0] for v in kinds.values())

    def rows(table):
        out = {}
        for key, (self_ns, total_ns, calls) in table.items():
            out[key] = {"self_s": self_ns / 1e9, "total_s": total_ns / 1e9, "calls": calls,
                        "self_pct": 100.0 * self_ns / grand if grand else 0.0,
                        "total_pct": 100.0 * total_ns / grand if grand else 0.0}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["self_s"]))

    return {"by_kind": rows(kinds), "by_layer": rows(layers), "total_s": grand / 1e9,
            "wall_s": wall / 1e9, "tracks": tracks}


def report():
    """Tables like R's ``summaryRprof``: self and total time by op kind and by layer."""
    s = stats()
    lines = [f"profile: {s['total_s']:.3f} s of thread time on {s['tracks']} track(s), "
             f"wall {s['wall_s']:.3f} s (self = time in a region minus its sub-regions; "
             f"total = time it was open)"]
    for title, table in (("by kind", s["by_kind"]), ("by layer", s["by_layer"])):
        lines.append("")
        lines.append(f"{title:<16} {'self_s':>9} {'self_%':>7} {'total_s':>9} {'total_%':>8} "
                     f"{'calls':>8}")
        for key, r in table.items():
            name = "-" if key is None else str(key)
            lines.append(f"{name:<16} {r['self_s']:9.4f} {r['self_pct']:7.2f} "
                         f"{r['total_s']:9.4f} {r['total_pct']:8.2f} {r['calls']:8d}")
    if _dropped:
        lines.append(f"({_dropped} events beyond MAX_TRACE_EVENTS are counted above but not "
                     f"in the trace)")
    return "\n".join(lines)


def write_trace(path, rank=0, events=None):
    """Write the recorded regions as Chrome trace-event JSON (Perfetto, chrome://tracing).

    ``events``: trace events of several ranks (:func:`trace_events` of each, concatenated) to
    write instead of this process's own."""
    if events is None:
        events = trace_events(rank)
    with open(path, "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)


def trace_events(rank=0):
    """This process's regions as Chrome trace events: process ``rank``, a track per thread."""
    with _lock:
        events = list(_events)
    tracks = {}
    out = [{"name": "process_name", "ph": "M", "pid": rank, "tid": 0,
            "args": {"name": f"rank {rank}"}},
           {"name": "process_sort_index", "ph": "M", "pid": rank, "tid": 0,
            "args": {"sort_index": rank}}]
    for track, kind, layer, t0, t1 in events:
        tid = tracks.get(track)
        if tid is None:
            tid = tracks[track] = len(tracks)
            out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid,
                        "args": {"name": track}})
        ev = {"name": kind if layer is None else f"{layer} {kind}", "cat": kind, "ph": "X",
              "ts": t0 / 1e3, "dur": (t1 - t0) / 1e3, "pid": rank, "tid": tid}
        if layer is not None:
            ev["args"] = {"layer": layer}
        out.append(ev)
    return out
