"""Chunked and pipelined lowering convolutions (strategies "chunked" and "pipelined").

Both cut the batch into the same chunks (:func:`hpcnn.kernels.nhwc.make_plan`) and run the same
per-chunk steps, so for one shape and thread count they give bit-identical results; they differ
only in how the steps are put on the cores:

- **chunked** (batch-parallel): the chunks are dealt out in T contiguous groups, one per Numba
  thread; each thread lowers, multiplies (BLAS on 1 thread) and folds back its own chunks, in a
  column buffer that stays in its core's L2.
- **pipelined** (Sakiyama et al.'s pipelined lowering): a *memory* thread lowers chunk i+1 (and
  folds back chunk i-1) while a *compute* thread runs chunk i's GEMMs, with BLAS on T-1 threads,
  so that at T threads in all no core is oversubscribed. The two hand chunks over through
  acquire/release counters (:mod:`~._native`); the column buffers are double-buffered (three in
  backward, where chunk i-1's gradient columns wait for col2im), so lowering memory is two or
  three chunks, never the batch. At T = 1 it is the chunked schedule (lowering, then GEMM, chunk
  by chunk).

The weight gradient is accumulated per group (one partial per group, summed in group order after
the pass) and every image's data gradient is folded by one thread only: no races, and the same
numbers whichever schedule ran.

Chunk size: the lowered matrix of one chunk is about :data:`CHUNK_BYTES` (default: half the L2
cache of one core, read from sysfs; 1 MiB when unknown), overridden by the environment variable
``HPCNN_CONV_CHUNK`` (bytes, ``K``/``M`` suffixes allowed, e.g. ``768K``) or the ``chunk_bytes``
argument of :func:`forward` / :func:`backward`.
"""

import os
import threading

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import _native, nhwc
from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels._native import (
    NO_TRANS,
    ROW_MAJOR,
    TRANS,
    atomic_add,
    atomic_load,
    atomic_store,
    cpu_relax,
)

SCHEDULES = ("chunked", "pipelined")
AVAILABLE = bool(_native.GEMM)
"""False when numpy's BLAS offers no CBLAS gemm to call from Numba (the strategies are hidden)."""


def _l2_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip()
        return _parse_bytes(text)
    except (OSError, ValueError):
        return 1 << 20


def _parse_bytes(text):
    """'768K' -> 786432; '1M', '1048576' likewise. Raises ValueError."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    value = int(float(t[:-1] if mult > 1 else t) * mult)
    if value <= 0:
        raise ValueError(f"chunk size must be positive, got {text!r}")
    return value


L2_BYTES = _l2_bytes()
CHUNK_BYTES = None
"""Target bytes of one chunk's lowered matrix; None = HPCNN_CONV_CHUNK or L2/2."""


def chunk_bytes(override=None):
    """The chunk size in force: ``override``, else :data:`CHUNK_BYTES`, else HPCNN_CONV_CHUNK,
    else half of one core's L2."""
    if override is not None:
        return int(override)
    if CHUNK_BYTES is not None:
        return int(CHUNK_BYTES)
    env = os.environ.get("HPCNN_CONV_CHUNK")
    if env:
        try:
            return _parse_bytes(env)
        except (ValueError, IndexError):
            raise ValueError(f"HPCNN_CONV_CHUNK must be a size such as 768K or 1M, "
                             f"got {env!r}") from None
    return L2_BYTES // 2


# ---------------------------------------------------------------------------------------------
# per-chunk phases (geo: N, C, H, W, K, R, S, sh, sw, ph, pw, P, Q, RSC, ldcol, input_grad)

LOWER, GEMM, FOLD, LAYOUT = 0, 1, 2, 3
"""Phase codes in the kernels' event records; their profile kinds are :data:`EVENT_KINDS`."""
EVENT_KINDS = ("lowering", "gemm", "col2im", "layout")


@njit
def _now(clock, ts):
    clock(1, ts.ctypes.data)  # CLOCK_MONOTONIC, the clock of time.perf_counter_ns
    return ts[0] * 1000000000 + ts[1]


@njit
def _record(ev, cnt, slot, kind, c, t0, t1):
    i = cnt[slot]
    if i < ev.shape[1]:
        ev[slot, i, 0] = kind
        ev[slot, i, 1] = c
        ev[slot, i, 2] = t0
        ev[slot, i, 3] = t1
        ev[slot, i, 4] = numba.get_thread_id()
        cnt[slot] = i + 1


@njit
def _fwd_phase(phase, c, gemm, x, wt, b, y, plan, geo, xp, colT):
    """One forward phase of chunk c: LOWER (pack + lower), GEMM (into y), or LAYOUT (+ bias)."""
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    C, K, R, S, sh, sw = geo[1], geo[4], geo[5], geo[6], geo[7], geo[8]
    ph, pw, P, Q, RSC, ldcol = geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]
    if phase == LOWER:
        if p0 == 0:
            nhwc.pack_x(x, n0, n1, ph, pw, xp)
        nhwc.lower(xp, n0, n1, p0, p1, R, S, sh, sw, Q, C, colT)
    elif phase == GEMM:
        rows, isz = (p1 - p0) * Q, y.itemsize
        for i in range(n1 - n0):  # y[n][:, band] (K, rows), leading dimension P*Q
            gemm(ROW_MAJOR, NO_TRANS, TRANS, K, rows, RSC, 1.0, wt.ctypes.data, RSC,
                 colT.ctypes.data + i * rows * ldcol * isz, ldcol, 0.0,
                 y.ctypes.data + ((n0 + i) * K * P * Q + p0 * Q) * isz, P * Q)
    else:
        nhwc.add_bias(y.reshape(y.shape[0], K, -1), n0, n1, p0, p1, Q, b)


@njit
def _bwd_phase(phase, c, gemm, dy, x, wt, dx, plan, geo, xp, colT, dxp, dwp, db):
    """One backward phase of chunk c.

    LOWER: pack x, lower, db += sums of dy; GEMM (per image, dy read in place as (K, rows)):
    dW' += dy[n] colT, then dcolT = dy[n].T W' over colT; FOLD: col2im into dxp, and dx for
    images whose last band it was. Without input_grad (geo[15] == 0) only dW' and db are made.
    """
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    C, K, R, S, sh, sw = geo[1], geo[4], geo[5], geo[6], geo[7], geo[8]
    ph, pw, P, Q, RSC, ldcol = geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]
    input_grad = geo[15] != 0
    if phase == LOWER:
        if p0 == 0:
            nhwc.pack_x(x, n0, n1, ph, pw, xp)
        nhwc.lower(xp, n0, n1, p0, p1, R, S, sh, sw, Q, C, colT)
        nhwc.sum_dy(dy.reshape(dy.shape[0], K, -1), n0, n1, p0, p1, Q, db)
    elif phase == GEMM:
        rows, isz = (p1 - p0) * Q, x.itemsize
        for i in range(n1 - n0):
            dyp = dy.ctypes.data + ((n0 + i) * K * P * Q + p0 * Q) * isz
            ci = colT.ctypes.data + i * rows * ldcol * isz
            gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, K, RSC, rows, 1.0, dyp, P * Q, ci, ldcol, 1.0,
                 dwp.ctypes.data, RSC)
            if input_grad:
                gemm(ROW_MAJOR, TRANS, NO_TRANS, rows, RSC, K, 1.0, dyp, P * Q, wt.ctypes.data,
                     RSC, 0.0, ci, ldcol)
    elif input_grad:
        if p0 == 0:
            nhwc.zero_images(dxp, n1 - n0)
        nhwc.col2im(colT, n0, n1, p0, p1, R, S, sh, sw, Q, C, dxp)
        if p1 == P:
            nhwc.unpack_dx(dxp, n0, n1, ph, pw, dx)


@njit
def _fwd_timed(phase, c, slot, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo, xp, colT):
    if ev.shape[1] == 0:
        _fwd_phase(phase, c, gemm, x, wt, b, y, plan, geo, xp, colT)
        return
    t0 = _now(clock, ts[slot])
    _fwd_phase(phase, c, gemm, x, wt, b, y, plan, geo, xp, colT)
    _record(ev, cnt, slot, LAYOUT if phase == FOLD else phase, c, t0, _now(clock, ts[slot]))


@njit
def _bwd_timed(phase, c, slot, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo, xp, colT,
               dxp, dwp, db):
    if ev.shape[1] == 0:
        _bwd_phase(phase, c, gemm, dy, x, wt, dx, plan, geo, xp, colT, dxp, dwp, db)
        return
    t0 = _now(clock, ts[slot])
    _bwd_phase(phase, c, gemm, dy, x, wt, dx, plan, geo, xp, colT, dxp, dwp, db)
    _record(ev, cnt, slot, phase, c, t0, _now(clock, ts[slot]))


# ---------------------------------------------------------------------------------------------
# schedules


@pnjit
def _chunked_forward(gemm, clock, ts, ev, cnt, x, wt, b, y, plan, gstart, geo, xp, colT):
    """Group g's chunks on thread g: lower, GEMM, bias, chunk after chunk."""
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            for phase in (LOWER, GEMM, FOLD):
                _fwd_timed(phase, c, g, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo,
                           xp[g], colT[g])


@pnjit
def _chunked_backward(gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, gstart, geo, xp, colT, dxp,
                      dwp, db):
    """Group g's chunks on thread g, into the group's own dW and db partials."""
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            for phase in (LOWER, GEMM, FOLD):
                _bwd_timed(phase, c, g, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                           xp[g], colT[g], dxp[g], dwp[g], db[g])


# hand-off counters of the pipelined schedules
F_LOW, F_GEMM, F_JOIN = 0, 1, 2
JOIN_GAVE_UP = 100
JOIN_SPINS = 20_000_000  # ~0.5 s of pause: the partner thread never came (roles serialized)


@njit
def _join(flags):
    """Both roles must run at once. True when they do; False (for both) when the partner did not
    arrive in time, e.g. if the runtime ran the two iterations on one thread: then the caller
    falls back to the chunked schedule instead of deadlocking."""
    old = atomic_add(flags, F_JOIN, 1)
    if old >= JOIN_GAVE_UP:
        return False
    if old == 1:
        return True
    spins = 0
    while atomic_load(flags, F_JOIN) < 2:
        spins += 1
        if spins > JOIN_SPINS:
            return atomic_add(flags, F_JOIN, JOIN_GAVE_UP) >= 2
        cpu_relax()
    return True


@njit
def _wait(flags, i, target):
    while atomic_load(flags, i) < target:
        cpu_relax()


@pnjit
def _pipelined_forward(gemm, clock, ts, ev, cnt, flags, x, wt, b, y, plan, geo, xp, colT):
    """Role 0 lowers chunk c+1 and adds the bias to chunk c-1 while role 1 multiplies chunk c.

    colT is double-buffered: lowering c waits for GEMM c-2 (frees colT[c%2]); GEMM c waits for
    lowering c. The GEMMs write y in place, so no output buffer is handed over.
    """
    nch = plan.shape[0]
    for role in prange(2):
        if _join(flags):
            if role == 0:
                for c in range(nch + 1):
                    if c < nch:
                        _wait(flags, F_GEMM, c - 1)
                        _fwd_timed(LOWER, c, 0, gemm, clock, ts, ev, cnt, x, wt, b, y, plan,
                                   geo, xp[0], colT[c % 2])
                        atomic_store(flags, F_LOW, c + 1)
                    if c >= 1:
                        _wait(flags, F_GEMM, c)
                        _fwd_timed(FOLD, c - 1, 0, gemm, clock, ts, ev, cnt, x, wt, b, y, plan,
                                   geo, xp[0], colT[0])
            else:
                for c in range(nch):
                    _wait(flags, F_LOW, c + 1)
                    _fwd_timed(GEMM, c, 1, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo,
                               xp[0], colT[c % 2])
                    atomic_store(flags, F_GEMM, c + 1)


@pnjit
def _pipelined_backward(gemm, clock, ts, ev, cnt, flags, dy, x, wt, dx, plan, cgroup, geo, xp,
                        colT, dxp, dwp, db):
    """Role 0 lowers chunk c+1 and folds chunk c-1 back while role 1 runs chunk c's GEMMs.

    Three column buffers: chunk c-1's gradient columns wait in its buffer for col2im while c and
    c+1 use the other two (lowering c waits for GEMM c-2).
    """
    nch = plan.shape[0]
    for role in prange(2):
        if _join(flags):
            if role == 0:
                for c in range(nch + 1):
                    if c < nch:
                        _wait(flags, F_GEMM, c - 1)
                        g = cgroup[c]
                        _bwd_timed(LOWER, c, 0, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan,
                                   geo, xp[0], colT[c % 3], dxp[0], dwp[g], db[g])
                        atomic_store(flags, F_LOW, c + 1)
                    if c >= 1:
                        _wait(flags, F_GEMM, c)
                        g = cgroup[c - 1]
                        _bwd_timed(FOLD, c - 1, 0, gemm, clock, ts, ev, cnt, dy, x, wt, dx,
                                   plan, geo, xp[0], colT[(c - 1) % 3], dxp[0], dwp[g], db[g])
            else:
                for c in range(nch):
                    _wait(flags, F_LOW, c + 1)
                    g = cgroup[c]
                    _bwd_timed(GEMM, c, 1, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                               xp[0], colT[c % 3], dxp[0], dwp[g], db[g])
                    atomic_store(flags, F_GEMM, c + 1)


# ---------------------------------------------------------------------------------------------
# Python side: geometry, plans, workspaces, BLAS threads, profiling


class _Geometry:
    """Shapes of one convolution call and its chunk plan for ``groups`` threads."""

    def __init__(self, x_shape, w_shape, stride, padding, itemsize, groups, chunk,
                 input_grad=True):
        N, C, H, W = x_shape
        K, _, R, S = w_shape
        (sh, sw), (ph, pw) = stride, padding
        self.N, self.C, self.K, self.R, self.S = N, C, K, R, S
        self.P = (H + 2 * ph - R) // sh + 1
        self.Q = (W + 2 * pw - S) // sw + 1
        self.Hp, self.Wp = H + 2 * ph, W + 2 * pw
        self.RSC = R * S * C
        self.ldcol = -(-self.RSC // 16) * 16  # 64-byte rows
        self.itemsize = itemsize
        self.groups = groups
        self.plan, self.gstart = nhwc.make_plan(N, self.P, self.Q, self.RSC, itemsize, groups,
                                                chunk)
        self.rows = nhwc.chunk_rows(self.plan, self.Q)
        self.images = nhwc.chunk_images(self.plan)
        self.input_grad = bool(input_grad)
        self.geo = np.array([N, C, H, W, K, R, S, sh, sw, ph, pw, self.P, self.Q, self.RSC,
                             self.ldcol, int(input_grad)], dtype=np.int64)

    def buffers(self, schedule, backward):
        """{name: shape} of the workspace of one pass."""
        G = self.groups
        lanes = G if schedule == "chunked" else 1  # per-thread buffers, or the memory role's
        ncol = G if schedule == "chunked" else (3 if backward else 2)
        img = (lanes, self.images, self.Hp, self.Wp * self.C)
        out = {"xp": img, "colT": (ncol, self.rows, self.ldcol)}
        if backward:
            out["dxp"] = img if self.input_grad else (lanes, 0, 0, 0)
            out["dwp"] = (G, self.K, self.RSC)
        return out

    def workspace_bytes(self, schedule, backward):
        """(total, lowering) bytes: all scratch buffers, and the column buffers alone."""
        b = self.buffers(schedule, backward)
        total = sum(int(np.prod(s)) for s in b.values()) * self.itemsize
        if backward:
            total += self.groups * self.K * 8  # float64 db partials
        return total, int(np.prod(b["colT"])) * self.itemsize


_ws = threading.local()  # per Python thread: {(name, shape, dtype): array}, reused across calls


def _workspace(shapes, dtype):
    cache = getattr(_ws, "cache", None)
    if cache is None:
        cache = _ws.cache = {}
    out = {}
    for name, shape in shapes.items():
        key = (name, shape, np.dtype(dtype).str)
        a = cache.get(key)
        if a is None:
            if len(cache) > 64:  # many shapes seen: forget them rather than grow without bound
                cache.clear()
            a = cache[key] = np.empty(shape, dtype=dtype)
        out[name] = a
    return out


def _threads():
    return numba.get_num_threads()


class _BlasThreads:
    """Context manager: OpenBLAS on ``n`` threads inside, as before outside."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = _native.blas_threads()
        if self.old != self.n:
            _native.set_blas_threads(self.n)

    def __exit__(self, *exc):
        if self.old != self.n:
            _native.set_blas_threads(self.old)


def _noclock(clk, ptr):
    return 0


_CLOCK = _native.CLOCK
if _CLOCK is None:  # never called: profiling inside kernels is off without a clock
    import ctypes

    _CLOCK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)(_noclock)

_NO_EVENTS = np.zeros((2, 0, 5), dtype=np.int64)


def _events(slots, n_chunks):
    """Event buffers for the kernels: recording only while the profiler is on."""
    if not (profile.enabled() and _native.CLOCK is not None):
        return _NO_EVENTS, np.zeros(2, dtype=np.int64), np.zeros((2, 2), dtype=np.int64)
    slots = max(slots, 2)
    return (np.zeros((slots, 3 * n_chunks + 3, 5), dtype=np.int64),
            np.zeros(slots, dtype=np.int64), np.zeros((slots, 2), dtype=np.int64))


def _report_events(ev, cnt):
    if ev.shape[1] == 0:
        return
    for slot in range(ev.shape[0]):
        for kind, _, t0, t1, tid in ev[slot, :cnt[slot]]:
            profile.record(EVENT_KINDS[kind], int(t0), int(t1), worker=int(tid))


def _setup(x, w, stride, padding, schedule, chunk, input_grad=True):
    T = _threads()
    geom = _Geometry(x.shape, w.shape, stride, padding, x.dtype.itemsize, T, chunk_bytes(chunk),
                     input_grad)
    # W' (K, R*S*C): the weights in the order of a lowered row
    wt = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)
    if schedule == "pipelined" and T > 1:
        blas = max(1, T - 1)
    else:
        blas = 1
    return T, geom, wt, blas


def forward(x, w, b, stride, padding, schedule="chunked", chunk=None):
    """y (N, K, P, Q) of checked arguments (see :mod:`hpcnn.kernels.conv`), by ``schedule``."""
    gemm = _native.GEMM[x.dtype]
    T, geom, wt, blas = _setup(x, w, stride, padding, schedule, chunk)
    bias = np.zeros(0, dtype=x.dtype) if b is None else b
    y = np.empty((geom.N, geom.K, geom.P, geom.Q), dtype=x.dtype)
    pipelined = schedule == "pipelined" and T > 1
    ws = _workspace(geom.buffers("pipelined" if pipelined else "chunked", False), x.dtype)
    ev, cnt, ts = _events(T, len(geom.plan))
    with _BlasThreads(blas):
        if pipelined:
            flags = np.zeros(4, dtype=np.int64)
            _pipelined_forward(gemm, _CLOCK, ts, ev, cnt, flags, x, wt, bias, y, geom.plan,
                               geom.geo, ws["xp"], ws["colT"])
            if flags[F_JOIN] >= JOIN_GAVE_UP:
                pipelined = False
                ws = _workspace(geom.buffers("chunked", False), x.dtype)
        if not pipelined:
            _chunked_forward(gemm, _CLOCK, ts, ev, cnt, x, wt, bias, y, geom.plan, geom.gstart,
                             geom.geo, ws["xp"], ws["colT"])
    _report_events(ev, cnt)
    return y


def backward(dy, x, w, stride, padding, input_grad=True, schedule="chunked", chunk=None):
    """(dx, dw, db) of checked arguments, by ``schedule``; see :func:`forward`. dx is None
    without ``input_grad``."""
    gemm = _native.GEMM[x.dtype]
    T, geom, wt, blas = _setup(x, w, stride, padding, schedule, chunk, input_grad)
    G = geom.groups
    dx = np.empty_like(x) if input_grad else np.empty((0, 0, 0, 0), dtype=x.dtype)
    dwp = np.zeros((G, geom.K, geom.RSC), dtype=x.dtype)
    db = np.zeros((G, geom.K), dtype=np.float64)
    pipelined = schedule == "pipelined" and T > 1
    shapes = geom.buffers("pipelined" if pipelined else "chunked", True)
    del shapes["dwp"]
    ws = _workspace(shapes, x.dtype)
    ev, cnt, ts = _events(T, len(geom.plan))
    with _BlasThreads(blas):
        if pipelined:
            flags = np.zeros(4, dtype=np.int64)
            cgroup = np.repeat(np.arange(G), np.diff(geom.gstart))
            _pipelined_backward(gemm, _CLOCK, ts, ev, cnt, flags, dy, x, wt, dx, geom.plan,
                                cgroup, geom.geo, ws["xp"], ws["colT"], ws["dxp"], dwp, db)
            if flags[F_JOIN] >= JOIN_GAVE_UP:
                pipelined = False
                shapes = geom.buffers("chunked", True)
                del shapes["dwp"]
                ws = _workspace(shapes, x.dtype)
                dwp[...] = 0
                db[...] = 0
        if not pipelined:
            _chunked_backward(gemm, _CLOCK, ts, ev, cnt, dy, x, wt, dx, geom.plan, geom.gstart,
                              geom.geo, ws["xp"], ws["colT"], ws["dxp"], dwp, db)
    _report_events(ev, cnt)
    dw_rsc = dwp[0]
    for g in range(1, G):  # the groups' partials, always in group order
        dw_rsc = dw_rsc + dwp[g]
    K, C, R, S = w.shape
    dw = np.ascontiguousarray(dw_rsc.reshape(K, R, S, C).transpose(0, 3, 1, 2))
    return (dx if input_grad else None), dw, db.sum(axis=0).astype(x.dtype)


def workspace_bytes(schedule, x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                    backward=False, chunk=None, input_grad=True):
    """(total, lowering) scratch bytes of one pass of ``schedule`` on these shapes."""
    T = threads or _threads()
    geom = _Geometry(x_shape, w_shape, stride, padding, itemsize, T, chunk_bytes(chunk),
                     input_grad)
    pipelined = schedule == "pipelined" and T > 1
    return geom.workspace_bytes("pipelined" if pipelined else "chunked", backward)
