"""Chunk kernels of the chunked and pipelined convolutions: NHWC lowering, col2im, layout moves.

The batch is cut into *chunks* of output pixels (see :func:`make_plan`): several whole images
when one image's lowered rows are small, else bands of output rows of one image, so that one
chunk's column matrix fits in L2. Each chunk is lowered *pixel-major*, the layout of an NHWC
implicit GEMM::

    colT[m, (r*S + s)*C + c] = x_padded[n, c, p*sh + r, q*sw + s],   m = chunk pixel (n, p, q)

The image is first moved to a zero-bordered NHWC buffer ``xp`` (n, Hp, Wp*C), one pass over x
that is R*S times smaller than the lowering. Then a lowered row is R contiguous copies of S*C
values (``xp[n, p*sh + r, q*sw*C : q*sw*C + S*C]``): long copies instead of the Q-value segments
of NCHW im2col, measured 4-10x faster here. The weights are reordered to match, W' (K, R*S*C),
and one chunk's three GEMMs are

    forward      yT    (M, K)     = colT (M, RSC)  @ W'.T
    weights      dW'   (K, RSC)  += dy[n] (K, M)   @ colT
    data         dcolT (M, RSC)   = dy[n].T (M, K) @ W'     (over colT, which is spent by then)

The forward GEMM writes pixel-major and :func:`unpack_y` moves it to NCHW y, adding the bias:
OpenBLAS ran this orientation 1.1-1.2x faster on 800-long lowered rows and 1.9x on the 75-long
rows of a 3-channel first layer than ``y[n] = W' @ colT.T`` straight into y (measured here, one
thread), and the move is RSC/K times smaller than the lowering. dy[n] is used where it lies,
NCHW, as a (K, pixels) block with leading dimension P*Q. After the data GEMM :func:`col2im` adds
dcolT back into a zero-bordered NHWC gradient buffer ``dxp``.
Every kernel here but :func:`sum_partials` is serial and releases the GIL: the schedules in
:mod:`~.pipelined` run them on their own threads, one chunk at a time. :func:`sum_partials` runs
once after them, on Numba's threads.
"""

import numpy as np

from hpcnn.kernels._fma import transpose8
from hpcnn.kernels._jit import njit, pnjit, prange

# plan columns: first image, one past the last image, first output row, one past the last row
N0, N1, P0, P1 = 0, 1, 2, 3


def make_plan(N, P, Q, RSC, itemsize, groups, chunk_bytes, min_rows=0):
    """Cut a batch into chunks and the chunks into contiguous per-thread groups.

    Parameters
    ----------
    N, P, Q : batch size and output height, width
    RSC : length of one lowered row (R*S*C)
    itemsize : bytes per value
    groups : number of groups G (the thread count of the schedule). Images are dealt out to the
        groups in contiguous, balanced ranges; a group's chunks never leave its images, so one
        thread owns each image's gradient buffer.
    chunk_bytes : target size of one chunk's lowered matrix
    min_rows : lowered rows per chunk at least, whatever ``chunk_bytes`` says

    Returns
    -------
    plan : int64 array (n_chunks, 4): n0, n1, p0, p1 (images [n0, n1), output rows [p0, p1))
    gstart : int64 array (G + 1,): group g owns chunks gstart[g] .. gstart[g+1]-1
    """
    rows = max(1, min_rows, int(chunk_bytes) // (RSC * itemsize))  # lowered rows per chunk
    plan, gstart = [], [0]
    for g in range(groups):
        a, b = N * g // groups, N * (g + 1) // groups
        if rows >= P * Q:  # several whole images per chunk
            nb = rows // (P * Q)
            plan += [(n, min(n + nb, b), 0, P) for n in range(a, b, nb)]
        else:  # bands of output rows
            pb = max(1, rows // Q)
            nbands = -(-P // pb)
            pb = -(-P // nbands)  # even bands
            plan += [(n, n + 1, p, min(p + pb, P)) for n in range(a, b) for p in range(0, P, pb)]
        gstart.append(len(plan))
    return np.array(plan, dtype=np.int64).reshape(-1, 4), np.array(gstart, dtype=np.int64)


def chunk_rows(plan, Q):
    """The largest chunk's number of lowered rows (output pixels)."""
    if len(plan) == 0:
        return 0
    return int(max((n1 - n0) * (p1 - p0) * Q for n0, n1, p0, p1 in plan))


def chunk_images(plan):
    """The largest number of images one chunk touches."""
    return int(max((n1 - n0 for n0, n1, _, _ in plan), default=0))


# ---------------------------------------------------------------------------------------------
# layout kernels


@njit
def pack_x(x, n0, n1, ph, pw, xp):
    """xp[i, ph + h, (pw + w)*C + c] = x[n0 + i, c, h, w], zero border; xp (nb, Hp, Wp*C).

    One image row at a time (its W*C values stay in L1), moved in 8x8 blocks transposed in
    registers when x and xp are C-contiguous (about 2.5x faster than value by value on
    cifar10_quick conv2's batch of 16x16x32 images, one thread), the ragged channels and columns
    one by one.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Hp, L = xp.shape[1], xp.shape[2]
    isz = x.itemsize
    flat = (x.strides[3] == isz and x.strides[2] == W * isz and x.strides[1] == H * W * isz
            and x.strides[0] == C * H * W * isz and xp.strides[2] == isz
            and xp.strides[1] == L * isz and xp.strides[0] == Hp * L * isz)
    zero8 = np.zeros(8, dtype=x.dtype)
    c8, w8 = C - C % 8, W - W % 8
    for i in range(n1 - n0):
        img = xp[i]
        for h in range(Hp):
            row = img[h]
            if h < ph or h >= ph + H:
                for j in range(L):
                    row[j] = 0
                continue
            for j in range(pw * C):
                row[j] = 0
            tail = row[(pw + W) * C:]
            for j in range(tail.shape[0]):
                tail[j] = 0
            mid = row[pw * C:(pw + W) * C]
            c_lo = 0  # the channels from c_lo on go value by value
            if flat and c8 > 0 and w8 > 0:
                s0 = ((n0 + i) * C * H + h - ph) * W  # x[n0 + i, 0, h - ph, 0]
                d0 = (i * Hp + h) * L + pw * C  # xp[i, h, pw*C]
                for c0 in range(0, c8, 8):
                    for w0 in range(0, w8, 8):
                        transpose8(x, s0 + c0 * H * W + w0, H * W, zero8, 0, xp,
                                   d0 + w0 * C + c0, C)
                for c in range(c8):
                    src = x[n0 + i, c, h - ph]
                    for w in range(w8, W):
                        mid[w * C + c] = src[w]
                c_lo = c8
            for c in range(c_lo, C):
                src = x[n0 + i, c, h - ph]
                for w in range(W):
                    mid[w * C + c] = src[w]


@njit
def lower(xp, n0, n1, p0, p1, R, S, sh, sw, Q, C, colT):
    """Lower output pixels of images [n0, n1), rows [p0, p1) into colT rows 0, 1, ...

    xp holds images n0.. (nb, Hp, Wp*C); colT (M, ldcol), ldcol >= R*S*C. Each row is R
    contiguous copies of S*C values.
    """
    SC = S * C
    m = 0
    for i in range(n1 - n0):
        img = xp[i]
        for p in range(p0, p1):
            for q in range(Q):
                dst = colT[m]
                base = q * sw * C
                for r in range(R):
                    src = img[p * sh + r, base:base + SC]
                    d = dst[r * SC:(r + 1) * SC]
                    for j in range(SC):
                        d[j] = src[j]
                m += 1


@njit
def add_bias(y, n0, n1, p0, p1, Q, b):
    """y[n, k, p0*Q:p1*Q] += b[k] for the chunk's images; y (N, K, P*Q), b (K,) or empty (no bias).

    The GEMM wrote the chunk's outputs straight into y (NCHW), so this is a contiguous pass over
    values still in cache, not a transpose.
    """
    if b.shape[0] == 0:
        return
    K = y.shape[1]
    for i in range(n1 - n0):
        for k in range(K):
            dst = y[n0 + i, k, p0 * Q:p1 * Q]
            bk = b[k]
            for j in range(dst.shape[0]):
                dst[j] += bk


@njit
def unpack_y(yT, n0, n1, p0, p1, Q, b, y):
    """y[n, k, p0*Q:p1*Q] = yT[pixel, k] + b[k] for the chunk's images (b empty: no bias).

    yT (M, K) is the chunk's forward GEMM output, pixel-major; y (N, K, P*Q). Blocks of 64
    pixels (8 KiB at K = 32) are moved while in L1: strided reads, contiguous writes.
    """
    K = y.shape[1]
    rows = (p1 - p0) * Q
    bias = b.shape[0] != 0
    for i in range(n1 - n0):
        for r0 in range(0, rows, 64):
            r1 = min(rows, r0 + 64)
            src = yT[i * rows + r0:i * rows + r1]
            for k in range(K):
                dst = y[n0 + i, k, p0 * Q + r0:p0 * Q + r1]
                bk = b[k] if bias else 0
                for j in range(r1 - r0):
                    dst[j] = src[j, k] + bk


@njit
def sum_dy(dy, n0, n1, p0, p1, Q, db):
    """db[k] += sum of dy[n, k, p0*Q:p1*Q] over the chunk's images (float64); dy (N, K, P*Q).

    Eight independent float64 partial sums per row (a single accumulator is a chain of dependent
    adds, 4x slower), combined in a fixed order so the result does not depend on the schedule.
    """
    K = dy.shape[1]
    part = np.zeros(8, dtype=np.float64)
    for i in range(n1 - n0):
        for k in range(K):
            src = dy[n0 + i, k, p0 * Q:p1 * Q]
            L = src.shape[0]
            part[:] = 0.0
            j = 0
            while j + 8 <= L:
                for u in range(8):
                    part[u] += src[j + u]
                j += 8
            s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5])
                                                              + (part[6] + part[7]))
            for t in range(j, L):
                s += src[t]
            db[k] += s


@njit
def zero_images(buf, nb):
    """buf[:nb] = 0 (the chunk's gradient images, before their first band)."""
    flat = buf[:nb].reshape(-1)
    for j in range(flat.shape[0]):
        flat[j] = 0


@njit
def col2im(dcolT, n0, n1, p0, p1, R, S, sh, sw, Q, C, dxp):
    """Add the chunk's lowered gradient back: dxp[i, p*sh + r, q*sw*C + j] += dcolT[m, r*SC + j].

    The adjoint of :func:`lower`; contiguous adds of S*C values. dxp (nb, Hp, Wp*C).
    """
    SC = S * C
    m = 0
    for i in range(n1 - n0):
        img = dxp[i]
        for p in range(p0, p1):
            for q in range(Q):
                src = dcolT[m]
                base = q * sw * C
                for r in range(R):
                    dst = img[p * sh + r, base:base + SC]
                    s = src[r * SC:(r + 1) * SC]
                    for j in range(SC):
                        dst[j] += s[j]
                m += 1


@njit
def unpack_dx(dxp, n0, n1, ph, pw, dx):
    """dx[n0 + i, c, h, w] = dxp[i, ph + h, (pw + w)*C + c] (drop the border); dx (N, C, H, W)."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    for i in range(n1 - n0):
        for h in range(H):
            src = dxp[i, ph + h, pw * C:(pw + W) * C]
            for c in range(C):
                dst = dx[n0 + i, c, h]
                for w in range(W):
                    dst[w] = src[w * C + c]


@pnjit
def sum_partials(dwp, dw):
    """dw[k, c, r, s] = sum over g of dwp[g, k, (r*S + s)*C + c], the groups' weight-gradient
    partials (window order) added in group order, so that the result depends on the group count
    only, and moved to (K, C, R, S); one output channel per iteration of a parallel loop. (As
    NumPy additions and a transposing copy it was serial: 0.43 ms of GoogLeNet 5a_3x3's
    12-ms backward at 2 threads on an Intel Xeon.)"""
    G = dwp.shape[0]
    K, C, R, S = dw.shape
    for k in prange(K):
        for r in range(R):
            for s in range(S):
                base = (r * S + s) * C
                for c in range(C):
                    acc = dwp[0, k, base + c]
                    for g in range(1, G):
                        acc += dwp[g, k, base + c]
                    dw[k, c, r, s] = acc
