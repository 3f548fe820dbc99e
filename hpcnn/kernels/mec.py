"""Two convolutions that lower less than im2col: "mec" and "gemm1x1".

**mec** (memory-efficient convolution, Cho & Brand, ICML 2017, here in NHWC): a chunk's images
are lowered along the *width* only. With the zero-bordered NHWC image ``xp`` (n, Hp, Wp*C) of
:mod:`~.nhwc`, row ``h*Q + q`` of the chunk's matrix L is the S*C contiguous values
``xp[n, p0 + h, q*sw*C : q*sw*C + S*C]`` for the input rows h = 0 .. (p1 - p0) + R - 2 of a band
of output rows [p0, p1). For stride 1 in height, the rows output pixel (p, q) needs for kernel
row r are then rows ``(p - p0 + r)*Q + q``: for a fixed r, a *contiguous* block of L, starting
r*Q rows down. So the convolution is R GEMMs over shifted blocks of one matrix R times smaller
than the im2col matrix (the lowering pass, which costs as much as the GEMM on 5x5 layers, shrinks
by R)::

    forward   y[n] (K, M)       += W'_r (K, SC)    @ L[rQ : rQ+M].T     r = 0 .. R-1
    weights   dW'_r (K, SC)     += dy[n] (K, M)    @ L[rQ : rQ+M]
    data      dL[rQ : rQ+M]     += dy[n].T (M, K)  @ W'_r              (dL over L, zeroed)

W'_r is the r-th block of S*C columns of W' (K, R*S*C); y[n] and dy[n] are read and written where
they lie (NCHW, leading dimension P*Q). dL is folded back into the NHWC gradient image with S*C
contiguous adds per row. Strides > 1 in height break the shifted-block trick: there the strategy
runs the im2col schedule ("chunked") instead. It wins where S*C is large enough for an efficient
GEMM (C >= 16 or so); with C = 3 the R small-k GEMMs lose to one large one.

**gemm1x1**: a 1x1, stride-1, unpadded convolution is a matrix product per image on the NCHW
data as it lies, no lowering at all::

    y[n] (K, HW) = W (K, C) @ x[n] (C, HW);  dW += dy[n] @ x[n].T;  dx[n] = W.T @ dy[n]

Other shapes run "chunked".

Threads: both deal the chunks (images) out in contiguous groups, one per Numba thread, BLAS on
one thread inside; each group owns its dW and db partials, summed in group order afterwards, so
results do not depend on timing (as in :mod:`~.pipelined`).
"""

import numba
import numpy as np

from hpcnn.kernels import _native, nhwc, pipelined
from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels._native import NO_TRANS, ROW_MAJOR, TRANS

AVAILABLE = pipelined.AVAILABLE

# ---------------------------------------------------------------------------------------------
# mec kernels (geo: N, C, H, W, K, R, S, sh, sw, ph, pw, P, Q, SC, ldL, input_grad)


@njit
def _lower_w(xp, nb, p0, nin, S, sw, Q, C, L, LR):
    """L[i*LR + h*Q + q, :S*C] = xp[i, p0 + h, q*sw*C : q*sw*C + S*C] for h < nin, i < nb."""
    SC = S * C
    for i in range(nb):
        img = xp[i]
        for h in range(nin):
            src_row = img[p0 + h]
            for q in range(Q):
                src = src_row[q * sw * C:q * sw * C + SC]
                dst = L[i * LR + h * Q + q, :SC]
                for j in range(SC):
                    dst[j] = src[j]


@njit
def _fold_w(dL, nb, p0, nin, S, sw, Q, C, dxp, LR):
    """The adjoint of :func:`_lower_w`: dxp[i, p0 + h, q*sw*C + j] += dL[i*LR + h*Q + q, j]."""
    SC = S * C
    for i in range(nb):
        img = dxp[i]
        for h in range(nin):
            dst_row = img[p0 + h]
            for q in range(Q):
                dst = dst_row[q * sw * C:q * sw * C + SC]
                src = dL[i * LR + h * Q + q, :SC]
                for j in range(SC):
                    dst[j] += src[j]


@njit
def _mec_fwd_chunk(c, gemm, x, wt, b, y, plan, geo, xp, L):
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    C, K, R, S, sw = geo[1], geo[4], geo[5], geo[6], geo[8]
    ph, pw, P, Q, SC, ldL = geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]
    RSC = R * SC
    if p0 == 0:
        nhwc.pack_x(x, n0, n1, ph, pw, xp)
    nin = p1 - p0 + R - 1
    LR = nin * Q
    _lower_w(xp, n1 - n0, p0, nin, S, sw, Q, C, L, LR)
    rows, isz = (p1 - p0) * Q, x.itemsize
    for i in range(n1 - n0):
        yp = y.ctypes.data + ((n0 + i) * K * P * Q + p0 * Q) * isz
        for r in range(R):
            gemm(ROW_MAJOR, NO_TRANS, TRANS, K, rows, SC, 1.0, wt.ctypes.data + r * SC * isz,
                 RSC, L.ctypes.data + (i * LR + r * Q) * ldL * isz, ldL, 1.0 if r else 0.0,
                 yp, P * Q)
    nhwc.add_bias(y.reshape(y.shape[0], K, -1), n0, n1, p0, p1, Q, b)


@njit
def _mec_bwd_chunk(c, gemm, dy, x, wt, dx, plan, geo, xp, L, dxp, dwp, db):
    n0, n1, p0, p1 = plan[c, 0], plan[c, 1], plan[c, 2], plan[c, 3]
    C, K, R, S, sw = geo[1], geo[4], geo[5], geo[6], geo[8]
    ph, pw, P, Q, SC, ldL = geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]
    RSC = R * SC
    nb = n1 - n0
    input_grad = geo[15] != 0
    if p0 == 0:
        nhwc.pack_x(x, n0, n1, ph, pw, xp)
        if input_grad:
            nhwc.zero_images(dxp, nb)
    nin = p1 - p0 + R - 1
    LR = nin * Q
    _lower_w(xp, nb, p0, nin, S, sw, Q, C, L, LR)
    nhwc.sum_dy(dy.reshape(dy.shape[0], K, -1), n0, n1, p0, p1, Q, db)
    rows, isz = (p1 - p0) * Q, x.itemsize
    for i in range(nb):
        dyp = dy.ctypes.data + ((n0 + i) * K * P * Q + p0 * Q) * isz
        Li = L.ctypes.data + i * LR * ldL * isz
        for r in range(R):  # all weight GEMMs first: the data GEMMs overwrite L
            gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, K, SC, rows, 1.0, dyp, P * Q,
                 Li + r * Q * ldL * isz, ldL, 1.0, dwp.ctypes.data + r * SC * isz, RSC)
        if not input_grad:
            continue
        tail = L[i * LR + rows:(i + 1) * LR]  # rows only the shifted blocks r >= 1 reach
        tail[:] = 0
        for r in range(R):
            gemm(ROW_MAJOR, TRANS, NO_TRANS, rows, SC, K, 1.0, dyp, P * Q,
                 wt.ctypes.data + r * SC * isz, RSC, 1.0 if r else 0.0,
                 Li + r * Q * ldL * isz, ldL)
    if input_grad:
        _fold_w(L, nb, p0, nin, S, sw, Q, C, dxp, LR)
        if p1 == P:
            nhwc.unpack_dx(dxp, n0, n1, ph, pw, dx)


@pnjit
def _mec_forward(gemm, x, wt, b, y, plan, gstart, geo, xp, L):
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            _mec_fwd_chunk(c, gemm, x, wt, b, y, plan, geo, xp[g], L[g])


@pnjit
def _mec_backward(gemm, dy, x, wt, dx, plan, gstart, geo, xp, L, dxp, dwp, db):
    for g in prange(gstart.shape[0] - 1):
        for c in range(gstart[g], gstart[g + 1]):
            _mec_bwd_chunk(c, gemm, dy, x, wt, dx, plan, geo, xp[g], L[g], dxp[g], dwp[g], db[g])


# ---------------------------------------------------------------------------------------------
# gemm1x1 kernels: x (N, C, HW), y / dy (N, K, HW), w (K, C)


@pnjit
def _g11_forward(gemm, x, w, b, y, gstart):
    N, C, HW = x.shape
    K = w.shape[0]
    isz = x.itemsize
    for g in prange(gstart.shape[0] - 1):
        for n in range(gstart[g], gstart[g + 1]):
            gemm(ROW_MAJOR, NO_TRANS, NO_TRANS, K, HW, C, 1.0, w.ctypes.data, C,
                 x.ctypes.data + n * C * HW * isz, HW, 0.0, y.ctypes.data + n * K * HW * isz, HW)
            nhwc.add_bias(y, n, n + 1, 0, 1, HW, b)


@pnjit
def _g11_backward(gemm, dy, x, w, dx, gstart, dwp, db):
    N, C, HW = x.shape
    K = w.shape[0]
    isz = x.itemsize
    for g in prange(gstart.shape[0] - 1):
        for n in range(gstart[g], gstart[g + 1]):
            dyp = dy.ctypes.data + n * K * HW * isz
            gemm(ROW_MAJOR, NO_TRANS, TRANS, K, C, HW, 1.0, dyp, HW,
                 x.ctypes.data + n * C * HW * isz, HW, 1.0, dwp[g].ctypes.data, C)
            if dx.shape[0]:  # no dx without input_grad
                gemm(ROW_MAJOR, TRANS, NO_TRANS, C, HW, K, 1.0, w.ctypes.data, C, dyp, HW, 0.0,
                     dx.ctypes.data + n * C * HW * isz, HW)
            nhwc.sum_dy(dy, n, n + 1, 0, 1, HW, db[g])


# ---------------------------------------------------------------------------------------------
# Python side


def mec_applies(x_shape, w_shape, stride, padding, direction=None):
    """True when "mec" runs its own kernels (stride 1 in height), not the chunked fallback."""
    return stride[0] == 1


def gemm1x1_applies(x_shape, w_shape, stride, padding, direction=None):
    """True for a 1x1, stride-1, unpadded convolution (else "gemm1x1" runs "chunked")."""
    return tuple(w_shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


class _MecGeometry:
    """Shapes of one "mec" call and its chunk plan for ``groups`` threads."""

    def __init__(self, x_shape, w_shape, stride, padding, itemsize, groups, chunk,
                 input_grad=True):
        N, C, H, W = x_shape
        K, _, R, S = w_shape
        (sh, sw), (ph, pw) = stride, padding
        self.input_grad = bool(input_grad)
        self.P = (H + 2 * ph - R) // sh + 1
        self.Q = (W + 2 * pw - S) // sw + 1
        self.Hp, self.Wp, self.C, self.K, self.R = H + 2 * ph, W + 2 * pw, C, K, R
        self.SC = S * C
        self.ldL = -(-self.SC // 16) * 16  # 64-byte rows
        self.groups = groups
        # a chunk's L holds ~R*S*C/(S*C) = R times fewer values than its im2col matrix: size
        # chunks by the im2col rule, so that the GEMMs see as many rows as "chunked" gives them
        self.plan, self.gstart = nhwc.make_plan(N, self.P, self.Q, R * self.SC, itemsize,
                                                groups, chunk)
        self.images = nhwc.chunk_images(self.plan)
        self.Lrows = int(max(((n1 - n0) * (p1 - p0 + R - 1) * self.Q
                              for n0, n1, p0, p1 in self.plan), default=0))
        self.geo = np.array([N, C, H, W, K, R, S, sh, sw, ph, pw, self.P, self.Q, self.SC,
                             self.ldL, int(input_grad)], dtype=np.int64)

    def buffers(self, backward):
        img = (self.groups, self.images, self.Hp, self.Wp * self.C)
        out = {"xp": img, "L": (self.groups, self.Lrows, self.ldL)}
        if backward:
            out["dxp"] = img if self.input_grad else (self.groups, 0, 0, 0)
        return out


def _weights_rsc(w):
    """W' (K, R*S*C): the weights in the order of a lowered NHWC row."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(w.shape[0], -1)


def _groups(N):
    return max(1, min(numba.get_num_threads(), N))


def mec_forward(x, w, b, stride, padding, chunk=None):
    """y (N, K, P, Q) of checked arguments (see :mod:`hpcnn.kernels.conv`)."""
    if not mec_applies(x.shape, w.shape, stride, padding):
        return pipelined.forward(x, w, b, stride, padding, "chunked", chunk)
    geom = _MecGeometry(x.shape, w.shape, stride, padding, x.itemsize,
                        numba.get_num_threads(), pipelined.chunk_bytes(chunk))
    bias = np.zeros(0, dtype=x.dtype) if b is None else b
    y = np.empty((x.shape[0], w.shape[0], geom.P, geom.Q), dtype=x.dtype)
    ws = pipelined._workspace(geom.buffers(False), x.dtype)
    with pipelined._BlasThreads(1):
        _mec_forward(_native.GEMM[x.dtype], x, _weights_rsc(w), bias, y, geom.plan, geom.gstart,
                     geom.geo, ws["xp"], ws["L"])
    return y


def mec_backward(dy, x, w, stride, padding, input_grad=True, chunk=None):
    """(dx, dw, db) of checked arguments (dx None without ``input_grad``); see
    :func:`mec_forward`."""
    if not mec_applies(x.shape, w.shape, stride, padding):
        return pipelined.backward(dy, x, w, stride, padding, input_grad, "chunked", chunk)
    G = numba.get_num_threads()
    geom = _MecGeometry(x.shape, w.shape, stride, padding, x.itemsize, G,
                        pipelined.chunk_bytes(chunk), input_grad)
    K, C, R, S = w.shape
    dx = np.empty_like(x) if input_grad else np.empty((0, 0, 0, 0), dtype=x.dtype)
    dwp = np.zeros((G, K, R * S * C), dtype=x.dtype)
    db = np.zeros((G, K), dtype=np.float64)
    ws = pipelined._workspace(geom.buffers(True), x.dtype)
    with pipelined._BlasThreads(1):
        _mec_backward(_native.GEMM[x.dtype], dy, x, _weights_rsc(w), dx, geom.plan, geom.gstart,
                      geom.geo, ws["xp"], ws["L"], ws["dxp"], dwp, db)
    return ((dx if input_grad else None), _sum_groups(dwp, w.shape, nhwc_order=True),
            db.sum(axis=0).astype(x.dtype))


def _sum_groups(dwp, w_shape, nhwc_order):
    """The groups' dW partials summed in group order, returned as (K, C, R, S)."""
    total = dwp[0]
    for g in range(1, dwp.shape[0]):
        total = total + dwp[g]
    K, C, R, S = w_shape
    if nhwc_order:
        return np.ascontiguousarray(total.reshape(K, R, S, C).transpose(0, 3, 1, 2))
    return total.reshape(K, C, R, S).copy()


def gemm1x1_forward(x, w, b, stride, padding, chunk=None):
    """y (N, K, H, W) = W @ x[n] per image for 1x1 layers; others run "chunked"."""
    if not gemm1x1_applies(x.shape, w.shape, stride, padding):
        return pipelined.forward(x, w, b, stride, padding, "chunked", chunk)
    N, C, H, W = x.shape
    K = w.shape[0]
    bias = np.zeros(0, dtype=x.dtype) if b is None else b
    y = np.empty((N, K, H, W), dtype=x.dtype)
    _, gstart = nhwc.make_plan(N, 1, 1, 1, 1, _groups(N), 1)  # one image per chunk
    with pipelined._BlasThreads(1):
        _g11_forward(_native.GEMM[x.dtype], x.reshape(N, C, H * W), w.reshape(K, C), bias,
                     y.reshape(N, K, H * W), gstart)
    return y


def gemm1x1_backward(dy, x, w, stride, padding, input_grad=True, chunk=None):
    """(dx, dw, db) for 1x1 layers (dx None without ``input_grad``); others run "chunked"."""
    if not gemm1x1_applies(x.shape, w.shape, stride, padding):
        return pipelined.backward(dy, x, w, stride, padding, input_grad, "chunked", chunk)
    N, C, H, W = x.shape
    K = w.shape[0]
    G = _groups(N)
    _, gstart = nhwc.make_plan(N, 1, 1, 1, 1, G, 1)
    dx = np.empty_like(x) if input_grad else np.empty((0, C, H, W), dtype=x.dtype)
    dwp = np.zeros((G, K, C), dtype=x.dtype)
    db = np.zeros((G, K), dtype=np.float64)
    with pipelined._BlasThreads(1):
        _g11_backward(_native.GEMM[x.dtype], dy.reshape(N, K, H * W), x.reshape(N, C, H * W),
                      w.reshape(K, C), dx.reshape(dx.shape[0], C, H * W), gstart, dwp, db)
    return ((dx if input_grad else None), _sum_groups(dwp, w.shape, nhwc_order=False),
            db.sum(axis=0).astype(x.dtype))


def mec_workspace_bytes(x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                        backward=False, chunk=None):
    """(total, lowering) scratch bytes of one "mec" pass (the chunked ones where it falls back)."""
    T = threads or numba.get_num_threads()
    if not mec_applies(x_shape, w_shape, stride, padding):
        return pipelined.workspace_bytes("chunked", x_shape, w_shape, stride, padding, itemsize,
                                         T, backward, chunk)
    geom = _MecGeometry(x_shape, w_shape, stride, padding, itemsize, T,
                        pipelined.chunk_bytes(chunk))
    b = geom.buffers(backward)
    total = sum(int(np.prod(s)) for s in b.values()) * itemsize
    if backward:
        K, C, R, S = w_shape
        total += T * K * (R * S * C * itemsize + 8)  # dW and float64 db partials
    return total, int(np.prod(b["L"])) * itemsize


def gemm1x1_workspace_bytes(x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                            backward=False, chunk=None):
    """(total, lowering) scratch bytes of one "gemm1x1" pass: only the dW/db partials."""
    T = threads or numba.get_num_threads()
    if not gemm1x1_applies(x_shape, w_shape, stride, padding):
        return pipelined.workspace_bytes("chunked", x_shape, w_shape, stride, padding, itemsize,
                                         T, backward, chunk)
    K, C = w_shape[0], w_shape[1]
    return (T * K * (C * itemsize + 8) if backward else 0), 0
