"""Chunked and pipelined lowering convolutions (strategies "chunked" and "pipelined").

Both cut the batch into the same chunks (:func:`hpcnn.kernels.nhwc.make_plan`) and run the same
per-chunk steps, so for one shape and thread count they give bit-identical results; they differ
only in how the steps are put on the cores:

- **chunked** (batch-parallel): the chunks are dealt out in T contiguous groups, one per Numba
  thread; each thread lowers, multiplies (BLAS on 1 thread) and folds back its own chunks, in a
  column buffer of its own.
- **pipelined** (Sakiyama et al.'s pipelined lowering): a *memory* thread lowers chunk i+1 while
  a *compute* thread runs chunk i's GEMMs, with BLAS on T-1 threads, so that at T threads in all
  no core is oversubscribed. The two hand chunks over through acquire/release counters
  (:mod:`~._native`); the column buffers are double-buffered, so lowering memory is two chunks,
  never the batch. Where lowering is the smaller part, a fixed split of the cores would leave the
  memory thread idle (this is what makes the paper's pipelining lose on GoogLeNet's late layers):
  so at T = 2, once chunk i+1 is lowered, the memory thread claims pieces of chunk i's
  output GEMM (forward y, backward dcol; pieces of >= 64 lowered rows, claimed one at a time
  through an atomic counter) alongside the compute thread, then folds chunk i back (bias, or
  col2im). At T = 1 it is the chunked schedule (lowering, then GEMM, chunk by chunk).

The weight gradient is one GEMM per chunk over all its rows (dy of the chunk packed as one (K,
rows) matrix), accumulated per group (one partial per group, summed in group order after the
pass) on one thread only; every image's data gradient is folded by one thread only; and the
output GEMMs are cut into the same pieces whichever thread runs them: no races, and the same
numbers whichever schedule ran.

Chunk size: the lowered matrix of one chunk is about :data:`CHUNK_BYTES` (default: half the L2
cache of one core, read from sysfs, 1 MiB when unknown; and at least :data:`MIN_ROWS` rows),
overridden by the environment variable
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


MIN_ROWS = 256
"""Lowered rows per chunk, at least, when the chunk size is the default: the weight-gradient GEMM
runs over a chunk's rows as its inner dimension, and layers with large weights (GoogLeNet's 3x3
layers: R*S*C up to 1728) would otherwise get chunks of under 100 rows, where that GEMM spends its
time reading and writing dW (measured: 56 GFLOP/s at 49 rows against 86 at 392, 1 thread)."""


def min_rows(override=None):
    """:data:`MIN_ROWS` when the chunk size is the default one, else 0 (a size set by the
    caller, :data:`CHUNK_BYTES` or HPCNN_CONV_CHUNK is taken as it is)."""
    if override is not None or CHUNK_BYTES is not None or os.environ.get("HPCNN_CONV_CHUNK"):
        return 0
    return MIN_ROWS


# ---------------------------------------------------------------------------------------------
# per-chunk phases (geo: N, C, H, W, K, R, S, sh, sw, ph, pw, P, Q, RSC, ldcol, input_grad, ldd)
#
# A chunk's lowered rows are its "units" u = i*rows + r (image i of the chunk, output pixel r of
# its band). The GEMMs that produce outputs (forward y, backward dcol) are cut into pieces of
# contiguous units (:func:`_npieces`), so that two threads can share one chunk's GEMM; the same
# pieces run whichever thread runs them, so every schedule makes the same calls.

LOWER, GEMM, FOLD, LAYOUT, WGRAD = 0, 1, 2, 3, 4
"""Phase codes in the kernels' event records; their profile kinds are :data:`EVENT_KINDS`."""
EVENT_KINDS = ("lowering", "gemm", "col2im", "layout", "gemm")
PIECE_ROWS = 64  # lowered rows per GEMM piece, at least (smaller GEMMs lose efficiency)
MAX_PIECES = 4


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
def _units(plan, c, Q):
    return (plan[c, 1] - plan[c, 0]) * (plan[c, 3] - plan[c, 2]) * Q


@njit
def _npieces(U):
    return max(1, min(MAX_PIECES, U // PIECE_ROWS))


@njit
def _fwd_lower(c, x, plan, geo, xp, colT):
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    if p0 == 0:
        nhwc.pack_x(x, n0, n1, geo[9], geo[10], xp)
    nhwc.lower(xp, n0, n1, p0, p1, geo[5], geo[6], geo[7], geo[8], geo[12], geo[1], colT)


@njit
def _fwd_piece(c, j, gemm, wt, plan, geo, colT, yT):
    """yT[u:u1] = colT[u:u1] W'.T for units [j*U/np, (j+1)*U/np) of chunk c: one GEMM."""
    K, RSC, ldcol = geo[4], geo[13], geo[14]
    U = _units(plan, c, geo[12])
    n = _npieces(U)
    u, u1 = j * U // n, (j + 1) * U // n
    isz = yT.itemsize
    gemm(ROW_MAJOR, NO_TRANS, TRANS, u1 - u, K, RSC, 1.0, colT.ctypes.data + u * ldcol * isz,
         ldcol, wt.ctypes.data, RSC, 0.0, yT.ctypes.data + u * K * isz, K)


@njit
def _fwd_fold(c, b, y, plan, geo, yT):
    K, Q = geo[4], geo[12]
    nhwc.unpack_y(yT, plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3], Q, b,
                  y.reshape(y.shape[0], K, -1))


@njit
def _bwd_lower(c, dy, x, plan, geo, xp, colT, dyc, db):
    """Pack x, lower; db += sums of dy; dyc (K, U) = the chunk's dy as one matrix."""
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    K, Q = geo[4], geo[12]
    if p0 == 0:
        nhwc.pack_x(x, n0, n1, geo[9], geo[10], xp)
    nhwc.lower(xp, n0, n1, p0, p1, geo[5], geo[6], geo[7], geo[8], Q, geo[1], colT)
    dy3 = dy.reshape(dy.shape[0], K, -1)
    nhwc.sum_dy(dy3, n0, n1, p0, p1, Q, db)
    rows = (p1 - p0) * Q
    for i in range(n1 - n0):
        for k in range(K):
            src = dy3[n0 + i, k, p0 * Q:p1 * Q]
            dst = dyc[k, i * rows:(i + 1) * rows]
            for r in range(rows):
                dst[r] = src[r]


@njit
def _bwd_wgrad(c, gemm, plan, geo, colT, dyc, dwp):
    """dW' += dyc colT: one GEMM over all the chunk's units (a long inner dimension)."""
    K, RSC, ldcol, ldd = geo[4], geo[13], geo[14], geo[16]
    U = _units(plan, c, geo[12])
    gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, K, RSC, U, 1.0, dyc.ctypes.data, ldd, colT.ctypes.data,
         ldcol, 1.0, dwp.ctypes.data, RSC)


@njit
def _bwd_piece(c, j, gemm, wt, plan, geo, dcolT, dyc):
    """dcolT = dyc.T W' over units [j*U/np, (j+1)*U/np), into its own buffer (so it can run
    while the chunk's dW GEMM still reads the lowered columns)."""
    K, RSC, ldcol, ldd = geo[4], geo[13], geo[14], geo[16]
    U = _units(plan, c, geo[12])
    n = _npieces(U)
    u0, u1 = j * U // n, (j + 1) * U // n
    isz = dcolT.itemsize
    gemm(ROW_MAJOR, TRANS, NO_TRANS, u1 - u0, RSC, K, 1.0, dyc.ctypes.data + u0 * isz, ldd,
         wt.ctypes.data, RSC, 0.0, dcolT.ctypes.data + u0 * ldcol * isz, ldcol)


@njit
def _bwd_fold(c, dx, plan, geo, dcolT, dxp):
    """col2im into dxp, and dx for images whose last band it was."""
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    if p0 == 0:
        nhwc.zero_images(dxp, n1 - n0)
    nhwc.col2im(dcolT, n0, n1, p0, p1, geo[5], geo[6], geo[7], geo[8], geo[12], geo[1], dxp)
    if p1 == geo[11]:
        nhwc.unpack_dx(dxp, n0, n1, geo[9], geo[10], dx)


# one timed step: run phase ``kind`` of chunk c (piece j) and record it while profiling

@njit
def _fwd_step(kind, c, j, slot, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo, xp, colT, yT):
    t0 = _now(clock, ts[slot]) if ev.shape[1] else 0
    if kind == LOWER:
        _fwd_lower(c, x, plan, geo, xp, colT)
    elif kind == GEMM:
        _fwd_piece(c, j, gemm, wt, plan, geo, colT, yT)
    else:
        _fwd_fold(c, b, y, plan, geo, yT)
    if ev.shape[1]:
        _record(ev, cnt, slot, LAYOUT if kind == FOLD else kind, c, t0, _now(clock, ts[slot]))


@njit
def _bwd_step(kind, c, j, slot, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo, xp, colT,
              dcolT, dyc, dxp, dwp, db):
    t0 = _now(clock, ts[slot]) if ev.shape[1] else 0
    if kind == LOWER:
        _bwd_lower(c, dy, x, plan, geo, xp, colT, dyc, db)
    elif kind == WGRAD:
        _bwd_wgrad(c, gemm, plan, geo, colT, dyc, dwp)
    elif kind == GEMM:
        _bwd_piece(c, j, gemm, wt, plan, geo, dcolT, dyc)
    else:
        _bwd_fold(c, dx, plan, geo, dcolT, dxp)
    if ev.shape[1]:
        _record(ev, cnt, slot, kind, c, t0, _now(clock, ts[slot]))


# ---------------------------------------------------------------------------------------------
# schedules


@pnjit
def _chunked_forward(gemm, clock, ts, ev, cnt, x, wt, b, y, plan, gstart, geo, xp, colT, yT):
    """Group g's chunks on thread g: lower, GEMM pieces, move to y with bias, chunk by chunk."""
    Q = geo[12]
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            _fwd_step(LOWER, c, 0, g, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo, xp[g],
                      colT[g], yT[g])
            for j in range(_npieces(_units(plan, c, Q))):
                _fwd_step(GEMM, c, j, g, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo,
                          xp[g], colT[g], yT[g])
            _fwd_step(FOLD, c, 0, g, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo, xp[g],
                      colT[g], yT[g])


@pnjit
def _chunked_backward(gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, gstart, geo, xp, colT,
                      dcolT, dyc, dxp, dwp, db):
    """Group g's chunks on thread g, into the group's own dW and db partials."""
    Q, input_grad = geo[12], geo[15] != 0
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            for kind in (LOWER, WGRAD):
                _bwd_step(kind, c, 0, g, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                          xp[g], colT[g], dcolT[g], dyc[g], dxp[g], dwp[g], db[g])
            if input_grad:
                for j in range(_npieces(_units(plan, c, Q))):
                    _bwd_step(GEMM, c, j, g, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                              xp[g], colT[g], dcolT[g], dyc[g], dxp[g], dwp[g], db[g])
                _bwd_step(FOLD, c, 0, g, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                          xp[g], colT[g], dcolT[g], dyc[g], dxp[g], dwp[g], db[g])


# hand-off counters of the pipelined schedules: flags[...] and, per chunk c, pc[2c + ...]
F_LOW, F_GEMM, F_JOIN = 0, 1, 2
PC_NEXT, PC_DONE = 0, 1  # next piece to claim, pieces done
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


@njit
def _claim(pc, c, n):
    """The next unclaimed piece of chunk c, or -1 when all n are taken."""
    j = atomic_add(pc, 2 * c + PC_NEXT, 1)
    return j if j < n else -1


@pnjit
def _pipelined_forward(gemm, clock, ts, ev, cnt, flags, pc, share, x, wt, b, y, plan, geo, xp,
                       colT, yT):
    """Role 0 lowers chunk c, then helps with chunk c-1's GEMM pieces (when ``share``) and
    moves its result to y with the bias; role 1 runs chunk c-1's GEMM pieces, claiming them one
    at a time.

    colT and yT are double-buffered: lowering c waits until chunk c-2 is multiplied (its colT
    free); chunk c's GEMMs (into yT[c % 2]) wait for its lowering, which role 0 starts only after
    it moved chunk c-2's yT out to y (its yT free).
    """
    nch = plan.shape[0]
    Q = geo[12]
    for role in prange(2):
        if _join(flags):
            if role == 0:
                for c in range(nch + 1):
                    if c < nch:
                        _wait(flags, F_GEMM, c - 1)
                        _fwd_step(LOWER, c, 0, 0, gemm, clock, ts, ev, cnt, x, wt, b, y, plan,
                                  geo, xp[0], colT[c % 2], yT[c % 2])
                        atomic_store(flags, F_LOW, c + 1)
                    if c >= 1:
                        d = c - 1
                        n = _npieces(_units(plan, d, Q))
                        j = _claim(pc, d, n) if share else -1
                        while j >= 0:
                            _fwd_step(GEMM, d, j, 0, gemm, clock, ts, ev, cnt, x, wt, b, y, plan,
                                      geo, xp[0], colT[d % 2], yT[d % 2])
                            atomic_add(pc, 2 * d + PC_DONE, 1)
                            j = _claim(pc, d, n)
                        _wait(flags, F_GEMM, c)
                        _fwd_step(FOLD, d, 0, 0, gemm, clock, ts, ev, cnt, x, wt, b, y, plan,
                                  geo, xp[0], colT[d % 2], yT[d % 2])
            else:
                for c in range(nch):
                    _wait(flags, F_LOW, c + 1)
                    n = _npieces(_units(plan, c, Q))
                    j = _claim(pc, c, n)
                    while j >= 0:
                        _fwd_step(GEMM, c, j, 1, gemm, clock, ts, ev, cnt, x, wt, b, y, plan, geo,
                                  xp[0], colT[c % 2], yT[c % 2])
                        atomic_add(pc, 2 * c + PC_DONE, 1)
                        j = _claim(pc, c, n)
                    _wait(pc, 2 * c + PC_DONE, n)
                    atomic_store(flags, F_GEMM, c + 1)


@pnjit
def _pipelined_backward(gemm, clock, ts, ev, cnt, flags, pc, share, dy, x, wt, dx, plan, cgroup,
                        geo, xp, colT, dcolT, dyc, dxp, dwp, db):
    """Role 0 lowers chunk c, then helps with chunk c-1's data-gradient pieces (when ``share``)
    and folds it back; role 1 runs chunk c-1's weight-gradient GEMM, then its pieces.

    The data-gradient columns have their own buffers (dcolT), so their pieces can run while the
    weight-gradient GEMM still reads the lowered columns. The weight gradient stays on role 1,
    one GEMM per chunk in chunk order, so dW sums in the same order as in the chunked schedule.
    Double-buffered: chunk c-2 is folded back before chunk c is lowered into its buffers.
    """
    nch = plan.shape[0]
    Q, input_grad = geo[12], geo[15] != 0
    for role in prange(2):
        if _join(flags):
            if role == 0:
                for c in range(nch + 1):
                    if c < nch:
                        _wait(flags, F_GEMM, c - 1)
                        b = c % 2
                        g = cgroup[c]
                        _bwd_step(LOWER, c, 0, 0, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan,
                                  geo, xp[0], colT[b], dcolT[b], dyc[b], dxp[0], dwp[g], db[g])
                        atomic_store(flags, F_LOW, c + 1)
                    if c >= 1 and input_grad:
                        d = c - 1
                        b = d % 2
                        g = cgroup[d]
                        n = _npieces(_units(plan, d, Q))
                        j = _claim(pc, d, n) if share else -1
                        while j >= 0:
                            _bwd_step(GEMM, d, j, 0, gemm, clock, ts, ev, cnt, dy, x, wt, dx,
                                      plan, geo, xp[0], colT[b], dcolT[b], dyc[b], dxp[0],
                                      dwp[g], db[g])
                            atomic_add(pc, 2 * d + PC_DONE, 1)
                            j = _claim(pc, d, n)
                        _wait(flags, F_GEMM, c)
                        _bwd_step(FOLD, d, 0, 0, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan,
                                  geo, xp[0], colT[b], dcolT[b], dyc[b], dxp[0], dwp[g], db[g])
            else:
                for c in range(nch):
                    _wait(flags, F_LOW, c + 1)
                    b = c % 2
                    g = cgroup[c]
                    _bwd_step(WGRAD, c, 0, 1, gemm, clock, ts, ev, cnt, dy, x, wt, dx, plan, geo,
                              xp[0], colT[b], dcolT[b], dyc[b], dxp[0], dwp[g], db[g])
                    if input_grad:
                        n = _npieces(_units(plan, c, Q))
                        j = _claim(pc, c, n)
                        while j >= 0:
                            _bwd_step(GEMM, c, j, 1, gemm, clock, ts, ev, cnt, dy, x, wt, dx,
                                      plan, geo, xp[0], colT[b], dcolT[b], dyc[b], dxp[0],
                                      dwp[g], db[g])
                            atomic_add(pc, 2 * c + PC_DONE, 1)
                            j = _claim(pc, c, n)
                        _wait(pc, 2 * c + PC_DONE, n)
                    atomic_store(flags, F_GEMM, c + 1)


# ---------------------------------------------------------------------------------------------
# Python side: geometry, plans, workspaces, BLAS threads, profiling


class _Geometry:
    """Shapes of one convolution call and its chunk plan for ``groups`` threads."""

    def __init__(self, x_shape, w_shape, stride, padding, itemsize, groups, chunk,
                 input_grad=True, min_rows=0):
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
                                                chunk, min_rows)
        self.rows = nhwc.chunk_rows(self.plan, self.Q)
        self.ldd = -(-max(self.rows, 1) // 16) * 16  # row stride of a chunk's packed dy
        self.images = nhwc.chunk_images(self.plan)
        self.input_grad = bool(input_grad)
        self.geo = np.array([N, C, H, W, K, R, S, sh, sw, ph, pw, self.P, self.Q, self.RSC,
                             self.ldcol, int(input_grad), self.ldd], dtype=np.int64)

    def buffers(self, schedule, backward):
        """{name: shape} of the workspace of one pass."""
        G = self.groups
        lanes = G if schedule == "chunked" else 1  # per-thread buffers, or the memory role's
        ncol = G if schedule == "chunked" else 2  # double-buffered between the roles
        img = (lanes, self.images, self.Hp, self.Wp * self.C)
        out = {"xp": img, "colT": (ncol, self.rows, self.ldcol)}
        if not backward:
            out["yT"] = (ncol, self.rows, self.K)  # the forward GEMM's pixel-major output
        else:
            out["dcolT"] = (ncol, self.rows, self.ldcol) if self.input_grad else (ncol, 0, 0)
            out["dyc"] = (ncol, self.K, self.ldd)
            out["dxp"] = img if self.input_grad else (lanes, 0, 0, 0)
            out["dwp"] = (G, self.K, self.RSC)
        return out

    def workspace_bytes(self, schedule, backward):
        """(total, lowering) bytes: all scratch buffers, and the column buffers alone."""
        b = self.buffers(schedule, backward)
        total = sum(int(np.prod(s)) for s in b.values()) * self.itemsize
        if backward:
            total += self.groups * self.K * 8  # float64 db partials
        cols = int(np.prod(b["colT"])) + (int(np.prod(b["dcolT"])) if backward else 0)
        return total, cols * self.itemsize


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
    return (np.zeros((slots, (3 + MAX_PIECES) * n_chunks + 3, 5), dtype=np.int64),
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
                     input_grad, min_rows(chunk))
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
            pc = np.zeros(2 * len(geom.plan), dtype=np.int64)
            _pipelined_forward(gemm, _CLOCK, ts, ev, cnt, flags, pc, blas == 1, x, wt, bias, y,
                               geom.plan, geom.geo, ws["xp"], ws["colT"], ws["yT"])
            if flags[F_JOIN] >= JOIN_GAVE_UP:
                pipelined = False
                ws = _workspace(geom.buffers("chunked", False), x.dtype)
        if not pipelined:
            _chunked_forward(gemm, _CLOCK, ts, ev, cnt, x, wt, bias, y, geom.plan, geom.gstart,
                             geom.geo, ws["xp"], ws["colT"], ws["yT"])
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
            pc = np.zeros(2 * len(geom.plan), dtype=np.int64)
            cgroup = np.repeat(np.arange(G), np.diff(geom.gstart))
            _pipelined_backward(gemm, _CLOCK, ts, ev, cnt, flags, pc, blas == 1, dy, x, wt, dx,
                                geom.plan, cgroup, geom.geo, ws["xp"], ws["colT"], ws["dcolT"],
                                ws["dyc"], ws["dxp"], dwp, db)
            if flags[F_JOIN] >= JOIN_GAVE_UP:
                pipelined = False
                shapes = geom.buffers("chunked", True)
                del shapes["dwp"]
                ws = _workspace(shapes, x.dtype)
                dwp[...] = 0
                db[...] = 0
        if not pipelined:
            _chunked_backward(gemm, _CLOCK, ts, ev, cnt, dy, x, wt, dx, geom.plan, geom.gstart,
                              geom.geo, ws["xp"], ws["colT"], ws["dcolT"], ws["dyc"], ws["dxp"],
                              dwp, db)
    _report_events(ev, cnt)
    dw = np.empty(w.shape, dtype=x.dtype)
    nhwc.sum_partials(dwp, dw)
    return (dx if input_grad else None), dw, db.sum(axis=0).astype(x.dtype)


def workspace_bytes(schedule, x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                    backward=False, chunk=None, input_grad=True):
    """(total, lowering) scratch bytes of one pass of ``schedule`` on these shapes."""
    T = threads or _threads()
    geom = _Geometry(x_shape, w_shape, stride, padding, itemsize, T, chunk_bytes(chunk),
                     input_grad, min_rows(chunk))
    pipelined = schedule == "pipelined" and T > 1
    return geom.workspace_bytes("pipelined" if pipelined else "chunked", backward)
