"""Direct convolution on register tiles (strategy "direct"): no lowering, no BLAS.

Each thread takes a contiguous group of the batch's images and packs one image (forward) or a
few (weight gradient) into a padded NHWC buffer of its own (:func:`hpcnn.kernels.nhwc.pack_x`).
In that layout one kernel row of an output pixel's window is S*C contiguous floats, so the
:mod:`~._fma` tile reads the windows in place:

- **forward**: a tile is 6 output pixels (consecutive in the image, wrapping across rows) by 16
  output channels; it sums over the R kernel rows (segments) of S*C steps each, against the
  weights packed as (R*S*C, 16) panels, and its result goes to y (NCHW) with the bias.
- **data gradient** (stride 1, padding at most R-1 and S-1): the forward of dy, padded by R-1-ph
  and S-1-pw, with the weights flipped and their two channel axes swapped; otherwise it is taken
  from the "chunked" strategy.
- **weight gradient**: a tile is 6 output channels by 16 entries of one kernel row of dW (S*C
  long); it sums over the output pixels: dy's rows (NCHW, contiguous) against the windows'
  rows. Each thread adds its tiles into a dW of its own; the groups' partials are summed in
  group order, so the result depends on the thread count only.

Ragged edges: a tile with fewer than 6 pixels or channels (a tile of 4 rows where 4 or fewer
are left) repeats its last one and drops the repeats; an output-channel count that is not a
multiple of 16 ends with a panel of 8 or 16 whose extra columns are zero weights, dropped
likewise.
"""

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import nhwc
from hpcnn.kernels._fma import MR, tile4x8, tile4x16, tile6x8, tile6x16, transpose8
from hpcnn.kernels._jit import pnjit, prange

BAND_PIXELS = 256
"""Output pixels per band of the weight gradient, about (whole output rows, at least one): the
band's 16-float window rows, 16 KiB, stay in L1 across the output-channel tiles."""
BLOCK = 96
"""Output pixels per forward block (a multiple of the tile's 6 and of 16): the block's output
stays in L1 until it is moved to NCHW."""
SLACK = 32  # floats after a packed buffer: the 16-wide B reads of the weight gradient overrun


def applies(x_shape, w_shape, stride, padding, direction=None):
    """True when "direct" runs its own kernels in ``direction`` ("forward", "backward", "wgrad";
    None: all three): the forward and the weight gradient always do; the data gradient needs
    stride 1 and padding at most R-1, S-1 (elsewhere it comes from "chunked")."""
    if direction in ("forward", "wgrad"):
        return True
    R, S = w_shape[2:]
    return tuple(stride) == (1, 1) and padding[0] <= R - 1 and padding[1] <= S - 1


def _panels(K):
    """Widths of the output-channel panels: 16s, then one of 8 or 16 for the rest."""
    widths = [16] * (K // 16)
    rest = K - 16 * (K // 16)
    if rest:
        widths.append(8 if rest <= 8 else 16)
    return np.array(widths, dtype=np.int64)


def _pack_weights(w):
    """w (K, C, R, S) -> (flat panels, widths, offsets): panel p holds output channels
    [16p, 16p + width) as a (R*S*C, width) matrix, in the order of a window's NHWC rows."""
    K, C, R, S = w.shape
    RSC = R * S * C
    wt = w.transpose(2, 3, 1, 0).reshape(RSC, K)  # [(r, s, c), k]
    widths = _panels(K)
    offsets = np.zeros(len(widths), dtype=np.int64)
    out = np.zeros(RSC * int(widths.sum()), dtype=w.dtype)
    k0 = 0
    for p, width in enumerate(widths):
        offsets[p] = RSC * k0
        kn = min(int(width), K - k0)
        panel = out[offsets[p]:offsets[p] + RSC * width].reshape(RSC, width)
        panel[:, :kn] = wt[:, k0:k0 + kn]
        k0 += int(width)
    return out, widths, offsets


@pnjit
def _forward_kernel(x, wp, widths, offsets, bias, y, R, S, sh, sw, ph, pw, xp, yt, ao):
    """y (N, K, P, Q) = conv(x, w) + bias, wp/widths/offsets from :func:`_pack_weights`.
    Scratch per group g: xp[g] (Hp*Wp*C + SLACK floats), yt[g] (BLOCK, panel widths summed: the
    output of a block of pixels, pixel-major), ao[g] (BLOCK: the block's window offsets)."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G = xp.shape[0]
    Hp, row, SC, PQ = H + 2 * ph, (W + 2 * pw) * C, S * C, P * Q
    Kp = yt.shape[2]
    yv = y.reshape(N, K, PQ)
    yf = y.reshape(-1)
    for g in prange(G):
        img = xp[g][:Hp * row].reshape(1, Hp, row)
        buf, aof, out = xp[g], ao[g], yt[g]
        outf = out.reshape(-1)
        for n in range(g * N // G, (g + 1) * N // G):
            nhwc.pack_x(x, n, n + 1, ph, pw, img)
            for q0 in range(0, PQ, BLOCK):
                q1 = min(q0 + BLOCK, PQ)
                for p in range(q0, q1 + (-(q1 - q0)) % MR):  # the block's tiles' window offsets
                    pc = min(p, q1 - 1)  # a ragged last tile repeats its last pixel
                    oh = pc // Q
                    aof[p - q0] = oh * sh * row + (pc - oh * Q) * sw * C
                k0 = 0
                for pi in range(widths.shape[0]):  # one panel of weights for all the block's tiles
                    width = widths[pi]
                    for p0 in range(q0, q1, MR):
                        # straight into the block's pixel-major output; a ragged last tile's
                        # repeated rows land in rows past the block's end, never read
                        ofs, o0 = aof[p0 - q0:], (p0 - q0) * Kp + k0
                        # (the four tile variants are called here and in the weight gradient
                        # directly: through one dispatching helper both ran 1-8% slower)
                        if q1 - p0 <= 4:  # a 4-row tile for a short rest
                            if width == 16:
                                tile4x16(buf, 0, ofs, row, 1, wp, offsets[pi], SC * 16, 16, R, SC,
                                         outf, o0, Kp, 0)
                            else:
                                tile4x8(buf, 0, ofs, row, 1, wp, offsets[pi], SC * 8, 8, R, SC,
                                        outf, o0, Kp, 0)
                        elif width == 16:
                            tile6x16(buf, 0, ofs, row, 1, wp, offsets[pi], SC * 16, 16, R, SC,
                                     outf, o0, Kp, 0)
                        else:
                            tile6x8(buf, 0, ofs, row, 1, wp, offsets[pi], SC * 8, 8, R, SC, outf,
                                    o0, Kp, 0)
                    k0 += width
                # to NCHW with the bias: 8x8 blocks transposed in registers, the rest one by one
                k8 = K - K % 8
                for p0 in range(q0, q1, 8):
                    p1 = min(p0 + 8, q1)
                    if p1 - p0 == 8:
                        for k0 in range(0, k8, 8):
                            transpose8(outf, (p0 - q0) * Kp + k0, Kp, bias, k0, yf,
                                       (n * K + k0) * PQ + p0, PQ)
                    for k in range(k8 if p1 - p0 == 8 else 0, K):
                        dk = yv[n, k]
                        bv = bias[k]
                        for p in range(p0, p1):
                            dk[p] = out[p - q0, k] + bv


@pnjit
def _wgrad_kernel(dy, x, R, S, sh, sw, ph, pw, band, xp, tb, ao, dwp, db):
    """dwp[g] (K, R*S*C) += group g's weight gradient (window order), db[g] (float64) its dy
    sums. One image at a time is packed into xp[g] (Hp*Wp*C + SLACK floats); its output rows are
    taken ``band`` at a time, so that the window rows a tile reads for one kernel row (16 floats
    per pixel) stay in L1 while the tiles of all output channels read them."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    G = xp.shape[0]
    Hp, row, SC, PQ = H + 2 * ph, (W + 2 * pw) * C, S * C, P * Q
    RSC = R * SC
    dyv = dy.reshape(N, K, PQ)
    for g in prange(G):
        buf, aof, t, dwg = xp[g], ao[g], tb[g], dwp[g]
        img = buf[:Hp * row].reshape(1, Hp, row)
        dwgf = dwg.reshape(-1)
        for n in range(g * N // G, (g + 1) * N // G):
            nhwc.pack_x(x, n, n + 1, ph, pw, img)
            nhwc.sum_dy(dyv, n, n + 1, 0, P, Q, db[g])
            for ob0 in range(0, P, band):
                nb = min(band, P - ob0)
                for r in range(R):
                    for j0 in range(0, SC, 16):
                        width = 16 if SC - j0 > 8 else 8
                        nj = min(width, SC - j0)
                        b0 = (ob0 * sh + r) * row + j0
                        for k0 in range(0, K, MR):
                            m = min(MR, K - k0)
                            for i in range(MR):
                                aof[i] = (k0 + min(i, m - 1)) * PQ
                            rows = 4 if m <= 4 else MR  # a 4-row tile for a short rest
                            full = m == rows and nj == width
                            if full:  # accumulate straight into the group's dW
                                dst, o0, ldo, acc = dwgf, k0 * RSC + r * SC + j0, RSC, 1
                            else:
                                dst, o0, ldo, acc = t, 0, width, 0
                            a0 = n * K * PQ + ob0 * Q
                            if rows == 4:
                                if width == 16:
                                    tile4x16(dy, a0, aof, Q, 1, buf, b0, sh * row, sw * C, nb, Q,
                                             dst, o0, ldo, acc)
                                else:
                                    tile4x8(dy, a0, aof, Q, 1, buf, b0, sh * row, sw * C, nb, Q,
                                            dst, o0, ldo, acc)
                            elif width == 16:
                                tile6x16(dy, a0, aof, Q, 1, buf, b0, sh * row, sw * C, nb, Q,
                                         dst, o0, ldo, acc)
                            else:
                                tile6x8(dy, a0, aof, Q, 1, buf, b0, sh * row, sw * C, nb, Q,
                                        dst, o0, ldo, acc)
                            if not full:
                                for i in range(m):
                                    d = dwg[k0 + i, r * SC + j0:r * SC + j0 + nj]
                                    src = t[i * width:i * width + nj]
                                    for v in range(nj):
                                        d[v] += src[v]


def _groups(N):
    return max(1, min(numba.get_num_threads(), N))


def _forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    wp, widths, offsets = _pack_weights(w)
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    G = _groups(N)
    xp = np.zeros((G, (H + 2 * ph) * (W + 2 * pw) * C + SLACK), dtype=x.dtype)
    ao = np.empty((G, BLOCK), dtype=np.int64)
    yt = np.empty((G, BLOCK, int(widths.sum())), dtype=x.dtype)
    _forward_kernel(x, wp, widths, offsets, bias, y, R, S, sh, sw, ph, pw, xp, yt, ao)
    return y


def forward(x, w, b, stride, padding):
    """y (N, K, P, Q) of checked arguments (see :mod:`hpcnn.kernels.conv`)."""
    if x.dtype != np.float32:
        from hpcnn.kernels import pipelined

        return pipelined.forward(x, w, b, stride, padding, schedule="chunked")
    with profile.region("gemm"):
        return _forward(x, w, b, stride, padding)


def backward(dy, x, w, stride, padding, input_grad=True):
    """(dx, dw, db) of checked arguments; dx is None without ``input_grad``."""
    from hpcnn.kernels import pipelined

    if x.dtype != np.float32:
        return pipelined.backward(dy, x, w, stride, padding, input_grad, schedule="chunked")
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Q = dy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    G = _groups(N)
    band = max(1, BAND_PIXELS // Q)
    dwp = np.zeros((G, K, R * S * C), dtype=x.dtype)
    db = np.zeros((G, K), dtype=np.float64)
    xp = np.zeros((G, Hp * Wp * C + SLACK), dtype=x.dtype)
    tb = np.empty((G, MR * 16), dtype=x.dtype)  # a ragged tile's result
    ao = np.empty((G, MR), dtype=np.int64)
    with profile.region("gemm"):
        _wgrad_kernel(dy, x, R, S, sh, sw, ph, pw, band, xp, tb, ao, dwp, db)
    dw_rsc = dwp[0]
    for g in range(1, G):  # the groups' partials, always in group order
        dw_rsc = dw_rsc + dwp[g]
    dw = np.ascontiguousarray(dw_rsc.reshape(K, R, S, C).transpose(0, 3, 1, 2))
    db = db.sum(axis=0).astype(x.dtype)
    if not input_grad:
        return None, dw, db
    if applies(x.shape, w.shape, stride, padding):
        wflip = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        with profile.region("gemm"):
            dx = _forward(dy, wflip, None, (1, 1), (R - 1 - ph, S - 1 - pw))
    else:
        dx = pipelined.backward(dy, x, w, stride, padding, True, schedule="chunked")[0]
    return dx, dw, db


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                    backward=False):
    """(total, lowering) scratch bytes of one pass; "direct" lowers nothing."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    Hp, Wp = H + 2 * ph, W + 2 * pw
    G = max(1, min(threads or numba.get_num_threads(), N))
    kp = int(_panels(K).sum())
    if not backward:
        return (G * (Hp * Wp * C + SLACK + BLOCK * (1 + kp)) + R * S * C * kp) * itemsize, 0
    total = G * (Hp * Wp * C + SLACK + MR * 16 + K * R * S * C) * itemsize + G * K * 8
    if applies(x_shape, w_shape, stride, padding):  # the data gradient: a forward of dy
        dyp = (P + 2 * (R - 1 - ph)) * (Q + 2 * (S - 1 - pw)) * K
        cp = int(_panels(C).sum())
        total += (G * (dyp + SLACK + BLOCK * (1 + cp)) + R * S * K * cp) * itemsize
    return total, 0
