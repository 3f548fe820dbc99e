"""Winograd F(2x2, 5x5) on register tiles: the "winograd" strategy's 5x5 layers in float32.

A 5x5 layer multiplies 25 taps per output pixel and channel pair; F(2x2, 5x5) makes a 2x2
output tile of the transforms of a 6x6 input tile, with 36 products: 9 per pixel, 2.8x fewer
(see :mod:`~.winograd`, whose F(2x2, 5x5) runs its 36 products per chunk as BLAS GEMMs of
K x C by C x tiles: on cifar10_quick's 32-channel layers those thin GEMMs and the transforms
vectorized along short tile rows made it 5x slower than "direct").

Here each thread takes a contiguous group of the batch's images and, one block of tiles at a
time (several whole images, or a band of tile rows of one image: about :data:`TILES` tiles):

1. packs the block's images into a zero-bordered NHWC buffer (:func:`~.nhwc.pack_x`, the
   border of "direct", and on the bottom and right what the last tile needs);
2. transforms every tile, ``lanes`` channels at a time (:mod:`~._wtrans`):
   V[t, xi, c] = (BT d B)[xi];
3. for each panel of output channels (32 or 48, "direct"'s panels of the transformed weights
   U[xi], C x width each) and each of the 36 points xi, multiplies the block's V[xi] (tiles x C)
   by U[xi] on the :mod:`~._fma` register tiles (14 tiles x 32 channels, or 9 x 48; C steps):
   M[t, xi] for that panel's channels;
4. transforms that panel back, 2x2 output pixels of ``lanes`` channels at a time, into the
   block's output kept pixel-major; the block then moves to NCHW with the bias
   (:func:`~.direct._to_nchw`).

A tile's 36 transformed values are contiguous (V[t, xi, c], M[t, xi, k]): a transform reads or
writes one block of 36 vectors. (With V[xi, t, c] and a block of 128 32-channel tiles, the 36
blocks lie 16 KiB apart and share L1 sets: one 16-channel input transform took 120-210 ns, alone
in a loop on an Intel Xeon; with an odd number of cache lines between the blocks 57-78 ns, and
with this layout 58-84.) V of a block is tiles x 36 x C floats, M tiles x 36 x one panel.

The data gradient is this forward of dy with the weights turned by 180 degrees and their
channel axes swapped (padding 4 - p). The weight gradient is "direct"'s.

Numerics: the points are 0, +-1, +-2 and infinity (see :mod:`~.winograd`): the 6x6 transforms
mix magnitudes up to 25 and lose about one decimal digit against direct convolution in float32.
"""

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import direct, nhwc
from hpcnn.kernels._fma import tile
from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels._winograd_gen import matrices
from hpcnn.kernels._wtrans import INPUT, OUTPUT, wtrans

TILES = 128
"""Tiles per block, about (whole tile rows, at least one)."""
M, R = 2, 5
A = M + R - 1


def applies(x_shape, w_shape, stride, padding):
    """F(2x2, 5x5) applies to stride-1 5x5 layers with padding at most 4."""
    return (tuple(w_shape[2:]) == (R, R) and tuple(stride) == (1, 1)
            and max(padding) <= R - 1 and min(x_shape[2] + 2 * padding[0],
                                              x_shape[3] + 2 * padding[1]) >= R)


def _pack_u(w, isa, turned):
    """(up, widths, offsets): U[xi] = G w G^T of every (output, input) channel pair, packed per
    point xi as "direct"'s panels, (C_in, width) each: up[xi*Cin*Kp + offsets[p] + c*width + j]
    is U[xi] of output channel starts[p] + j and input channel c (zero past K_out)."""
    K, C = w.shape[0], w.shape[1]
    G = matrices(M, R)[1]
    taps = np.kron(G, G).astype(w.dtype)  # (36, 25): U[xi] = sum over taps of taps[xi, tap] w
    U = np.matmul(taps[:, ::-1] if turned else taps, w.reshape(K * C, R * R).T).reshape(
        A * A, K, C)
    if turned:
        U = U.transpose(0, 2, 1)  # [xi, output channel of dx (C), its input channel (K)]
    kout, cin = U.shape[1], U.shape[2]
    widths = direct._panels(kout, isa)
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    up = np.empty(A * A * cin * int(widths.sum()), dtype=w.dtype)
    _pack_panels(U, widths, starts, up)
    return up, widths, cin * starts


@njit
def _pack_panels(U, widths, starts, up):
    P, K, C = U.shape
    Kp = starts[-1] + widths[-1]
    for xi in range(P):
        base = xi * C * Kp
        for p in range(widths.shape[0]):
            width, k0 = widths[p], starts[p]
            kn = min(width, K - k0)
            for c in range(C):
                row = base + C * k0 + c * width
                for j in range(kn):
                    up[row + j] = U[xi, k0 + j, c]
                for j in range(kn, width):
                    up[row + j] = 0.0


@pnjit
def _forward_kernel(x, up, widths, offsets, bias, y, ph, pw, th, tw, band, nb, isa, lanes, mr,
                    mr3, xp, vb, mb, yt, ao, oo):
    """y (N, K, P, Q) = the F(2x2, 5x5) convolution of x with the packed U, + bias. A block is
    ``nb`` whole images (when ``band`` tile rows are the whole image) or ``band`` tile rows of
    one; scratch per group g: xp[g] (nb packed images of 2*th+4 rows and 2*tw+4 columns),
    vb[g] (tiles x 36 x C), mb[g] (tiles x 36 x one panel's width), yt[g] (the block's output
    pixels x Kp); ao[t] = t*36*C, oo[p, t] = t*36*widths[p]."""
    N, C = x.shape[0], x.shape[1]
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G = xp.shape[0]
    Hp, row, PQ = 2 * th + 4, (2 * tw + 4) * C, P * Q
    Kp = yt.shape[2]
    yf = y.reshape(-1)
    for g in prange(G):
        buf, vbf, mbf, out = xp[g], vb[g], mb[g], yt[g].reshape(-1)
        n_hi = (g + 1) * N // G
        for n0 in range(g * N // G, n_hi, nb):
            ni = min(nb, n_hi - n0)
            nhwc.pack_x(x, n0, n0 + ni, ph, pw, buf[:ni * Hp * row].reshape(ni, Hp, row))
            for i0 in range(0, th, band):
                i1 = min(i0 + band, th)
                T = ni * (i1 - i0) * tw
                oh0, oh1 = 2 * i0, min(2 * i1, P)
                nr = oh1 - oh0
                t = 0
                for im in range(ni):
                    for i in range(i0, i1):
                        for j in range(tw):
                            wtrans(INPUT, isa, buf, (im * Hp + 2 * i) * row + 2 * j * C, row, C,
                                   vbf, t * A * A * C, A * C, C, C, A, A)
                            t += 1
                k0 = 0
                for pi in range(widths.shape[0]):  # M of one panel, then its output
                    width = widths[pi]
                    nt = -(-T // (mr if width <= 2 * lanes else mr3))
                    for xi in range(A * A):
                        b0 = xi * C * Kp + offsets[pi]
                        for ti in range(nt):
                            t0, t1 = ti * T // nt, (ti + 1) * T // nt
                            tile(isa, width // lanes, t1 - t0, vbf, (t0 * A * A + xi) * C, ao,
                                 0, 0, up, b0, 0, 0, width, 1, 1, C, mbf,
                                 (t0 * A * A + xi) * width, oo[pi], 0)
                    t = 0
                    for im in range(ni):
                        for i in range(i0, i1):
                            for j in range(tw):
                                wtrans(OUTPUT, isa, mbf, t * A * A * width, A * width, width,
                                       out, ((im * nr + 2 * i - oh0) * Q + 2 * j) * Kp + k0,
                                       Q * Kp, Kp, width, min(2, P - 2 * i), min(2, Q - 2 * j))
                                t += 1
                    k0 += width
                for im in range(ni):
                    direct._to_nchw(out, im * nr * Q * Kp, Kp, bias, yf, n0 + im, K, PQ,
                                    oh0 * Q, oh1 * Q)


def _blocks(N, G, th, tw):
    """(band tile rows, images) of a block."""
    band = max(1, min(th, TILES // tw))
    nb = max(1, min(TILES // (th * tw), -(-N // G))) if band == th else 1
    return band, nb


def _geometry(x_shape, k_out, padding, isa, threads=None):
    """(P, Q, th, tw, G, band, nb, T, Kp, scratch shapes) of a pass to k_out channels."""
    N, C, H, W = x_shape
    P, Q = H + 2 * padding[0] - R + 1, W + 2 * padding[1] - R + 1
    th, tw = -(-P // M), -(-Q // M)
    G = max(1, min(threads or numba.get_num_threads(), N))
    band, nb = _blocks(N, G, th, tw)
    T = nb * band * tw
    Kp = int(direct._panels(k_out, isa).sum())
    shapes = {"xp": (G, nb * (2 * th + 4) * (2 * tw + 4) * C), "vb": (G, A * A * T * C),
              "mb": (G, A * A * T * 3 * isa.lanes), "yt": (G, nb * 2 * band * Q, Kp)}
    return P, Q, th, tw, G, band, nb, T, Kp, shapes


def _conv(x, w, b, padding, isa, turned=False):
    N, C = x.shape[0], x.shape[1]
    ph, pw = padding
    K = w.shape[1] if turned else w.shape[0]
    up, widths, offsets = _pack_u(w, isa, turned)
    P, Q, th, tw, G, band, nb, T, Kp, shapes = _geometry(x.shape, K, padding, isa)
    xp, vb, mb, yt = (np.empty(shapes[k], dtype=x.dtype) for k in ("xp", "vb", "mb", "yt"))
    ao = np.arange(T, dtype=np.int64) * (A * A * C)
    oo = np.arange(T, dtype=np.int64) * (A * A) * widths[:, None]
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    _forward_kernel(x, up, widths, offsets, bias, y, ph, pw, th, tw, band, nb, isa.id,
                    isa.lanes, isa.rows, isa.rows3, xp, vb, mb, yt, ao, oo)
    return y


def forward(x, w, b, stride, padding, *, isa=None):
    """y (N, K, P, Q) of checked float32 arguments to which F(2x2, 5x5) applies."""
    with profile.region("gemm"):
        return _conv(x, w, b, padding, direct._isa(isa))


def backward(dy, x, w, stride, padding, input_grad=True, *, isa=None):
    """(dx, dw, db): the weight gradient from "direct", the data gradient a forward of dy."""
    isa = direct._isa(isa)
    _, dw, db = direct.backward(dy, x, w, stride, padding, input_grad=False, isa=isa)
    if not input_grad:
        return None, dw, db
    with profile.region("gemm"):
        dx = _conv(dy, w, None, (R - 1 - padding[0], R - 1 - padding[1]), isa, turned=True)
    return dx, dw, db



def workspace_bytes(x_shape, w_shape, padding, itemsize=4, threads=None, backward=False):
    """(total, transformed-input) scratch bytes of one pass: the packed images, the blocks' V and
    M, the output band, the transformed and packed weights; backward: "direct"'s weight gradient,
    or the data gradient's forward of dy, whichever is larger (they run one after the other)."""
    isa = direct._isa(None)
    N, C, H, W = x_shape
    K = w_shape[0]

    def one(shape, k_out, pads):  # U (36, K, C) and its panels (36, C_in, Kp) besides
        *_, Kp, shapes = _geometry(shape, k_out, pads, isa, threads)
        total = sum(int(np.prod(s)) for s in shapes.values()) + A * A * (K * C + shape[1] * Kp)
        return total * itemsize, int(np.prod(shapes["vb"])) * itemsize

    if not backward:
        return one(x_shape, K, padding)
    P, Q = H + 2 * padding[0] - R + 1, W + 2 * padding[1] - R + 1
    wg = direct.workspace_bytes(x_shape, w_shape, (1, 1), padding, itemsize, threads, True,
                                input_grad=False)
    dg = one((N, K, P, Q), C, (R - 1 - padding[0], R - 1 - padding[1]))
    return max(wg[0], dg[0]), dg[1]
