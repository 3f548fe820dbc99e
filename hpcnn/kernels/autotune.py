"""``algo="auto"``: time the convolution strategies once per layer shape, then keep the fastest.

An :class:`Autotuner` holds the choices. On the first forward (or backward) call for a key

    (x shape, w shape, stride, padding, dtype, Numba thread count, CPU model)

every candidate strategy its caller names runs on the call's own arrays: an untimed warm-up on
the first image only (it loads or compiles the kernels), then timed rounds in which the
candidates take turns, one run each: two rounds for all of them, and a third for those within
2x of the best (by their fastest runs). Taking turns puts a slow spell of the machine (another
tenant, the first touches of fresh memory, which cost tens of microseconds a page in some
virtual machines) on one run of each of several candidates rather than on every run of one:
timed back to back, a candidate once lost every run to such a spell, and a layer ran at half
speed ever after. The two fastest, and any other within 10% of the best, then run three more
alternating rounds, and the candidate with the smallest median over all its rounds wins (the
recorded time of every candidate is its median).
Forward, backward and "wgrad" (backward without the data gradient, as in a network's first
layer) are tuned separately, each on first use. The winner's result of its last run is what
the call returns, so "auto" gives exactly what the chosen strategy gives, from the first call
on. Later calls cost a key and a dict lookup.

This module knows no strategy: the tuner is given the valid strategy names when it is made, and
the candidates of each call (:func:`hpcnn.kernels.conv.candidates` skips strategies that would
only run another one's code on a shape and direction, and "pipelined" at one thread).
:data:`hpcnn.kernels.conv.DEFAULT_TUNER` is the tuner of calls that name none; ``hpcnn.train``
makes one per run, with its cache file in the user cache.

Environment (read at every call, so tests can switch them):

``HPCNN_AUTOTUNE``
    unset, ``on`` or ``auto``: tune. ``off``: always "lowering". The name of a strategy: always
    that one (for tests and for reproducing a run). Anything else is a
    :class:`hpcnn.errors.UsageError` (one line, exit status 2).
``HPCNN_AUTOTUNE_CACHE``
    path of a JSON file of choices; when set it replaces the tuner's own ``cache`` (empty: no
    file). Choices found there for this key are used without timing
    (so a run with the same file makes the same choices: bitwise the same results); new choices
    are merged in and written back atomically. A file that cannot be parsed (not UTF-8, not
    JSON, nested too deep, larger than 16 MiB), or is not such a file, never stops a run and is
    never overwritten: "auto" warns once, ignores it and keeps its choices in memory. Entries for
    another CPU model, vector ISA or thread count do not match the key and are left alone; an
    entry naming an unknown strategy is ignored (warned once) and retuned, and so is an entry
    whose timings lack a candidate of today (it was tuned by an hpcnn without that strategy).

Reproducibility: without a cache file two runs can choose differently when two strategies are
close, and the strategies round differently (each is deterministic by itself). Use a cache file,
or ``HPCNN_AUTOTUNE=<name>``, for bitwise-reproducible training; under MPI, share one file, or
send rank 0's :meth:`Autotuner.choices` to the other ranks and :meth:`Autotuner.set_choices`
there.
"""

import json
import os
import platform
import threading
import time
import warnings

import numba
import numpy as np

from hpcnn.atomic import atomic_path, temporary_name
from hpcnn.errors import UsageError
from hpcnn.kernels import isa as isa_mod

FORMAT = "hpcnn-autotune"
VERSION = 1
DIRECTIONS = ("forward", "backward", "wgrad")
"""What is tuned apart: forward, backward, and backward without the data gradient."""
WARMUP_LIMIT = 2.0  # a candidate slower than this multiple of the best stops after ALL_ROUNDS
ALL_ROUNDS = 2  # timed rounds every candidate runs, taking turns
REPEATS = 3  # ... and the rounds of the candidates within WARMUP_LIMIT of the best
CLOSE = 1.10  # candidates within this factor of the best get CLOSE_ROUNDS more runs each
CLOSE_ROUNDS = 3
FINALISTS = 2  # ... and so do the fastest FINALISTS, however far apart
MAX_CACHE_BYTES = 16 << 20  # a cache file larger than this is not read


class AutotuneWarning(UserWarning):
    """A cache file could not be used (the tuner then keeps its choices in memory)."""


class AutotuneCacheError(UsageError):
    """The autotune cache file cannot be read or understood (checked before a run starts)."""


class AutotuneModeError(UsageError, ValueError):
    """HPCNN_AUTOTUNE has a value that is not a mode: one line and exit status 2 from the
    command-line tools (a ValueError too, as it was before)."""


def cpu_model():
    """The CPU model string that keys the cache (first "model name" of /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


_CPU = cpu_model()


def make_key(x_shape, w_shape, stride, padding, dtype, threads=None):
    """The cache key of one layer shape, as a readable string."""

    def dims(t):
        return "x".join(str(int(v)) for v in t)

    threads = numba.get_num_threads() if threads is None else int(threads)
    return (f"cpu={_CPU};isa={isa_mod.select().name};threads={threads};"
            f"dtype={np.dtype(dtype).name};x={dims(x_shape)};"
            f"w={dims(w_shape)};stride={dims(stride)};pad={dims(padding)}")


def _time(run, reps):
    """(the reps' times, the last result)."""
    ts, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = run()
        ts.append(time.perf_counter() - t0)
    return ts, out


class Autotuner:
    """The choices of strategy of one owner (a training run; :data:`conv.DEFAULT_TUNER` for
    everyone else), with their timings, the cache file they are kept in and its warnings.

    ``names``: the valid strategy names (the keys of :data:`hpcnn.kernels.conv.ALGOS`).
    ``cache``: the JSON file of choices, or None (in memory only); HPCNN_AUTOTUNE_CACHE, when
    set, replaces it. Thread-safe.
    """

    repeats = REPEATS  # timed rounds of the first pass (ALL_ROUNDS of them for every candidate)
    close_rounds = CLOSE_ROUNDS  # extra rounds of a close finish

    def __init__(self, names, cache=None):
        self.names = tuple(names)
        self.cache = cache
        self._lock = threading.Lock()
        self._choices = {}  # key -> {"forward": name, "backward": name}
        self._times = {}  # key -> {"forward": {name: seconds}, ...} (benchmarks, cache file)
        self._file = {"path": None, "writable": False, "entries": {}}
        self._warned = set()

    def __repr__(self):
        return f"Autotuner(cache={self.cache!r}, {len(self._choices)} keys chosen)"

    def _warn_once(self, msg):
        if msg not in self._warned:
            self._warned.add(msg)
            warnings.warn(msg, AutotuneWarning, stacklevel=4)

    def mode(self):
        """"tune", "lowering" (HPCNN_AUTOTUNE=off) or a forced strategy name."""
        v = os.environ.get("HPCNN_AUTOTUNE", "").strip()
        if v in ("", "on", "auto", "1"):
            return "tune"
        if v in ("off", "0"):
            return "lowering"
        if v in self.names:
            return v
        valid = ", ".join(["on", "off", *self.names])
        raise AutotuneModeError(f"HPCNN_AUTOTUNE={v!r} is not one of {valid}")

    def reset(self):
        """Forget all choices, timings, the loaded cache file and the warnings already given."""
        with self._lock:
            self._choices.clear()
            self._times.clear()
            self._file.update(path=None, writable=False, entries={})
            self._warned.clear()

    def choices(self):
        """{key: {"forward": name, "backward": name}} chosen so far (a copy)."""
        with self._lock:
            return {k: dict(v) for k, v in self._choices.items()}

    def set_choices(self, table):
        """Adopt choices made elsewhere (e.g. on rank 0); unknown strategy names raise
        ValueError."""
        for key, entry in table.items():
            for direction, name in entry.items():
                if direction not in DIRECTIONS or name not in self.names:
                    raise ValueError(f"set_choices: bad entry {key!r}: {direction!r} -> {name!r}")
        with self._lock:
            for key, entry in table.items():
                self._choices.setdefault(key, {}).update(entry)

    def timings(self):
        """{key: {direction: {name: seconds}}} measured by this tuner (a copy)."""
        with self._lock:
            return {k: {d: dict(t) for d, t in v.items()} for k, v in self._times.items()}

    def cache_path(self):
        """The cache file in force: HPCNN_AUTOTUNE_CACHE when set (empty: none), else
        ``cache``."""
        return os.environ.get("HPCNN_AUTOTUNE_CACHE", self.cache) or None

    # -----------------------------------------------------------------------------------------
    # the cache file

    def _valid_entries(self, data, path):
        """The usable {key: {direction: name, direction_ms: [candidates timed]}} of a parsed
        cache file; warns about the rest."""
        out = {}
        for key, entry in data["entries"].items():
            if not isinstance(entry, dict):
                self._warn_once(f"autotune cache {path}: ignoring malformed entry {key!r}")
                continue
            good = {}
            for d in DIRECTIONS:
                name = entry.get(d)
                if name is None:
                    continue
                if isinstance(name, str) and name in self.names:
                    good[d] = name
                    if isinstance(entry.get(f"{d}_ms"), dict):  # the candidates it was tuned among
                        good[f"{d}_ms"] = sorted(entry[f"{d}_ms"])
                else:
                    self._warn_once(f"autotune cache {path}: ignoring unknown strategy {name!r} "
                                    f"for {key!r}; retuning")
            if good:
                out[key] = good
        return out

    def check_cache(self):
        """Load the cache file in force now, and raise :class:`AutotuneCacheError` (one line, exit
        status 2) when it cannot be read or understood. A training run calls it up front on
        every rank; later, an unusable file is only warned about and ignored."""
        with self._lock:
            path = self.cache_path()
            self._file.update(path=None)
            if path is not None:
                self._load(path, strict=True)

    def _unusable(self, strict, msg, hint):
        if strict:
            raise AutotuneCacheError(f"{msg}; delete it (it is only a cache of choices) or set "
                                     f"HPCNN_AUTOTUNE_CACHE to another file")
        self._warn_once(f"{msg}; {hint}")

    def _load(self, path, strict=False):
        """Read the cache file at ``path`` (caller holds the lock)."""
        f_ = self._file
        f_.update(path=path, writable=True, entries={})
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_CACHE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as e:
            f_["writable"] = False
            self._unusable(strict, f"autotune cache {path} cannot be read ({e.strerror or e})",
                           "tuning in memory only")
            return
        try:
            if len(raw) > MAX_CACHE_BYTES:
                raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
            data = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            if (not isinstance(data, dict) or data.get("format") != FORMAT
                    or not isinstance(data.get("entries"), dict)):
                raise ValueError("not an hpcnn autotune cache")
        except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
            why = " ".join(str(e).split()) or type(e).__name__
            f_["writable"] = False  # never clobber a file we do not understand
            self._unusable(strict, f"autotune cache {path} is unusable ({why})",
                           "tuning in memory only, the file is left as it is (delete it to "
                           "start a new one)")
            return
        f_["entries"] = self._valid_entries(data, path)
        if f_["entries"] and not any(f"cpu={_CPU};" in k for k in f_["entries"]):
            self._warn_once(f"autotune cache {path} holds no entries for this CPU ({_CPU}); "
                            "retuning")

    def _sync_file(self):
        """Load the cache file in force when it changed (caller holds the lock)."""
        path = self.cache_path()
        if path != self._file["path"]:
            if path is None:
                self._file.update(path=None, writable=False, entries={})
            else:
                self._load(path)
        return path

    def _save(self, path, key):
        """Merge this key's choice into the file, atomically (caller holds the lock)."""
        if not self._file["writable"]:
            return
        entries = {}
        try:  # merge with what other processes wrote meanwhile
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("format") == FORMAT:
                entries = data.get("entries") if isinstance(data.get("entries"), dict) else {}
        except (OSError, ValueError, RecursionError):
            pass
        entry = dict(entries[key]) if isinstance(entries.get(key), dict) else {}
        entry.update(self._choices[key])
        for d, t in self._times.get(key, {}).items():
            entry[f"{d}_ms"] = {name: round(s * 1e3, 4) for name, s in t.items()}
        entries[key] = entry
        # the thread in the name too: two tuners of one process may share a file
        tmp = temporary_name(path, prefix=f".{threading.get_ident()}-")
        try:
            with atomic_path(path, tmp=tmp) as t, open(t, "w") as f:
                json.dump({"format": FORMAT, "version": VERSION, "entries": entries}, f,
                          indent=1, sort_keys=True)
        except OSError as e:
            self._file["writable"] = False
            self._warn_once(f"autotune cache {path} cannot be written ({e}); tuning in memory "
                            "only")

    # -----------------------------------------------------------------------------------------
    # choosing

    def lookup(self, direction, x_shape, w_shape, stride, padding, dtype, candidates):
        """The strategy "auto" runs for this call, or None when it still has to be tuned.

        ``candidates``: the strategies :meth:`tune` would time for this call (a cache-file
        entry tuned without one of them is tuned again).
        """
        m = self.mode()
        if m != "tune":
            return m
        key = make_key(x_shape, w_shape, stride, padding, dtype)
        name = self._choices.get(key, {}).get(direction)
        if name is not None:
            return name
        with self._lock:
            self._sync_file()
            entry = self._file["entries"].get(key, {})
            name = entry.get(direction)
            timed = entry.get(f"{direction}_ms")
            if timed is not None and set(candidates) - set(timed):
                return None  # tuned before a candidate existed (an older hpcnn): tune again
            if name is not None:
                self._choices.setdefault(key, {})[direction] = name
        return name

    def tune(self, direction, run, x_shape, w_shape, stride, padding, dtype, candidates,
             warmup=None):
        """Time ``run(name)`` for every name of ``candidates``; record and return (winner,
        winner's result).

        ``warmup(name)``, when given, runs the candidate on a small problem of the same types
        first (it compiles or loads the kernels without costing a full-size run); otherwise
        ``run`` is called once untimed.
        """
        key = make_key(x_shape, w_shape, stride, padding, dtype)
        samples, outs = {name: [] for name in candidates}, {}
        for name in candidates:
            (warmup or run)(name)
        # rounds in which the candidates take turns (see the module's docstring)
        for rnd in range(max(self.repeats, 1)):
            times = {name: min(ts) for name, ts in samples.items() if ts}
            cut = WARMUP_LIMIT * min(times.values()) if times else None
            for name in candidates:
                if rnd < ALL_ROUNDS or times[name] < cut:
                    t, outs[name] = _time(lambda name=name: run(name), 1)
                    samples[name] += t
        times = {name: min(ts) for name, ts in samples.items()}
        best = min(times, key=times.__getitem__)
        # a close finish is decided by more rounds, alternating, and by each candidate's median
        # over all its rounds: neither a slow spell of a noisy machine nor one lucky round can
        # hand the win to a strategy that is slower most of the time
        ranked = sorted(times, key=times.__getitem__)
        close = [n for i, n in enumerate(ranked)
                 if i < FINALISTS or times[n] <= CLOSE * times[best]]
        if len(close) > 1:
            for _ in range(self.close_rounds):
                for name in close:
                    t, outs[name] = _time(lambda name=name: run(name), 1)
                    samples[name] += t
            # every candidate is then ranked by its median (the others' over their fewer rounds):
            # ranking the finalists by median and the rest by their best run could record a
            # loser faster than the winner after a slow spell
            for name in samples:
                times[name] = float(np.median(samples[name]))
            best = min(times, key=times.__getitem__)
        result = outs[best]
        outs.clear()
        with self._lock:
            self._choices.setdefault(key, {})[direction] = best
            self._times.setdefault(key, {})[direction] = times
            path = self._sync_file()
            if path is not None:
                self._save(path, key)
        return best, result
