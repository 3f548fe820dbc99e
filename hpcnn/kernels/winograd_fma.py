"""Winograd on register tiles in float32: the "winograd" strategy's F(2x2, 3x3) and
F(2x2, 5x5), and "winograd4"'s F(4x4, 3x3) and F(4x4, 5x5).

A 5x5 layer multiplies 25 taps per output pixel and channel pair; F(2x2, 5x5) makes a 2x2
output tile of the transforms of a 6x6 input tile, with 36 products: 9 per pixel, 2.8x fewer;
F(4x4, 5x5) makes a 4x4 tile of an 8x8 one, with 64 products: 4 per pixel, 6.25x fewer.
F(4x4, 3x3) makes a 4x4 tile of a 6x6 one: 36/16 products per pixel against 9, 4x fewer;
F(2x2, 3x3) a 2x2 tile of a 4x4 one, 16/4 against 9 (2.25x fewer). The
two 6x6 variants use the same six points, so the same input transform (see :mod:`~.winograd`,
which runs the products per chunk as BLAS GEMMs of K x C by C x tiles: on cifar10_quick's
32-channel layers those thin GEMMs and the transforms vectorized along short tile rows made
F(2x2, 5x5) 5x slower than "direct"). Below, m is the output tile's size (2 or 4), r the
kernel's, A = m + r - 1 the input tile's (4, 6 or 8); the text speaks of F(2x2, 5x5), whose
A*A is 36.

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
channel axes swapped (padding 4 - p). The weight gradient transforms, per block, x's tiles (V, as
above) and dy's 2x2 tiles (dM = A g AT, :mod:`~._wtrans`), and sums dU[xi] += dM[xi]^T V[xi]
over the block's tiles on register tiles of output channels by input channels (a reduction of
as many steps as the block has tiles: :data:`~._fma.tile_strided`); then dW = G^T dU G. There
V[xi] and dM[xi] are each one block of tiles x channels (the tiles read them in order), 36
blocks an odd number of cache lines apart (:func:`_stride`).

Numerics: the points are 0, +-1, +-2 and infinity (see :mod:`~.winograd`): the 6x6 transforms
mix magnitudes up to 25 and lose about one decimal digit against direct convolution in float32.
F(4x4, 5x5) adds +-1/2 (entries up to 10, and 5.25 and 0.125): in a float32 NumPy model of
cifar10_quick conv2 and conv3 and GoogLeNet 3a_5x5, 4.1e-6 to 4.6e-6 of the output's scale
against float64, where F(2x2, 5x5) gave 2.3e-6.
"""

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import direct, nhwc
from hpcnn.kernels._fma import tile, tile_strided
from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels._winograd_gen import taps, weight_transform
from hpcnn.kernels._wtrans import GRAD, INPUT, OUTPUT, wtrans

TILES = 128
"""Tiles per block at most, about (whole tile rows, at least one)."""
BLOCK_BYTES = 512 * 1024
"""A forward block's transformed data (36 values per tile of its input channels and of one
panel's output channels), at most, about: it stays in L2 while the tiles read it. Measured on an
Intel Xeon (2 MiB L2), 1 thread, the bound alternated in one process
(``results/isa/xeon5/block_bytes.log``; cifar10_quick conv2, GoogLeNet 3b, 4d, 4e and 5a_5x5):
against no bound (128 tiles), forward 1.07-1.15x and data gradient 1.08-1.32x; against 1 MiB,
0.96-1.08x and 0.99-1.09x."""
WGRAD_BLOCK_BYTES = 1 << 20
"""The same for the weight gradient (36 values per tile of the input and of all the output
channels). In the same runs, 1 MiB against no bound: 1.02-1.16x; against 512 KiB: 0.99-1.10x."""
WGRAD_MIN_TILES = 64
"""Tiles per weight-gradient block at least, whatever :data:`WGRAD_BLOCK_BYTES` says: the tiles'
reductions run over the block's tiles, and fewer steps do not pay for loading and storing the
accumulators. On GoogLeNet 4e_3x3 (160 -> 320 channels) 1 MiB makes blocks of 12 tiles; with
at least 64, its weight gradient ran 1.46-1.49x as fast at 1 and 2 threads, 5a_3x3 1.12-1.19x,
4b_3x3 1.04-1.16x, 3a_3x3, conv2 and 4d_5x5 0.99-1.04x (Intel Xeon, alternated in one process:
``results/isa/xeon5/wgrad_min_tiles.log``)."""
WGRAD_MIN_VECTORS = {(4, 5): 1}
"""F(m, r) -> the input channels, in vectors, from which its weight gradient runs here (else it
is "direct"'s: :func:`own_wgrad`); two where not named. With one vector (16 channels on
AVX-512) the tiles are one vector wide, which runs at 0.8x (see
:func:`~.direct.column_tiles`), while "direct"'s tiles span kernel columns there: F(2x2, 5x5)
then lost (0.89-0.96x), F(4x4, 5x5) with 2.25x fewer products won on GoogLeNet 3a_5x5
(1.61x and 1.36x at 1 and 2 threads) and 4a_5x5 at 1 thread (1.10x), and lost on 4a_5x5 at 2
(0.94x: the autotuner times a strategy's backward pass whole, so that layer now pays it). Intel
Xeon, alternated in one process (``results/isa/xeon6/wgrad_vectors_ab.log``)."""
VARIANTS = ((2, 3), (2, 5), (4, 3), (4, 5))
"""(m, r): output tiles m x m of an r x r kernel; the input tiles are a x a, a = m + r - 1."""


def _pack_u(w, m, isa, turned):
    """(up, widths, offsets): U[xi] = G w G^T of every (output, input) channel pair, packed per
    point xi as "direct"'s panels, (C_in, width) each: up[xi*Cin*Kp + offsets[p] + c*width + j]
    is U[xi] of output channel starts[p] + j and input channel c (zero past K_out)."""
    U = weight_transform(w, m, turned)
    if turned:
        U = U.transpose(0, 2, 1)  # [xi, output channel of dx (C), its input channel (K)]
    kout, cin = U.shape[1], U.shape[2]
    widths = direct._panels(kout, isa)
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    up = np.empty(U.shape[0] * cin * int(widths.sum()), dtype=w.dtype)
    _pack_panels(U, widths, starts, up)
    return up, widths, cin * starts


@pnjit
def _pack_panels(U, widths, starts, up):
    """The panels of :func:`_pack_u`, one point xi per iteration of a parallel loop (serial, it
    took 0.6-1.1 ms of GoogLeNet 4b_3x3's and 4d_3x3's passes, beside 6-7 ms forwards at 2
    threads on an Intel Xeon)."""
    P, K, C = U.shape
    Kp = starts[-1] + widths[-1]
    for xi in prange(P):
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
def _forward_kernel(x, up, widths, offsets, bias, y, ph, pw, m, A, ikind, kind, th, tw, band, nb,
                    isa, lanes, mr, mr3, xp, vb, mb, yt, ao, oo):
    """y (N, K, P, Q) = the Winograd convolution of x with the packed U (m x m output tiles of
    A x A input tiles; ``ikind`` and ``kind``: their input and output transforms,
    :mod:`~._wtrans`), + bias. A block is
    ``nb`` whole images (when ``band`` tile rows are the whole image) or ``band`` tile rows of
    one; scratch per group g: xp[g] (nb packed images of m*th+A-m rows and m*tw+A-m columns),
    vb[g] (tiles x A*A x C), mb[g] (tiles x A*A x one panel's width), yt[g] (the block's output
    pixels x Kp); ao[t] = t*A*A*C, oo[p, t] = t*A*A*widths[p]."""
    N, C = x.shape[0], x.shape[1]
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G = xp.shape[0]
    Hp, row, PQ = m * th + A - m, (m * tw + A - m) * C, P * Q
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
                oh0, oh1 = m * i0, min(m * i1, P)
                nr = oh1 - oh0
                t = 0
                for im in range(ni):
                    for i in range(i0, i1):
                        for j in range(tw):
                            wtrans(ikind, isa, buf, (im * Hp + m * i) * row + m * j * C, row, C,
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
                                wtrans(kind, isa, mbf, t * A * A * width, A * width, width,
                                       out, ((im * nr + m * i - oh0) * Q + m * j) * Kp + k0,
                                       Q * Kp, Kp, width, min(m, P - m * i), min(m, Q - m * j))
                                t += 1
                    k0 += width
                for im in range(ni):
                    direct._to_nchw(out, im * nr * Q * Kp, Kp, bias, yf, n0 + im, K, PQ,
                                    oh0 * Q, oh1 * Q)


@pnjit
def _wgrad_kernel(x, dy, ph, pw, m, A, ikind, kind, th, tw, band, nb, isa, lanes, mr, mr3, widths,
                  cstarts, xp, gp, vb, mb, ko, oo, dup, db):
    """dup[g] (A*A, K, Cp) = group g's sum over its tiles of dM[xi, t]^T V[xi, t] (dM = A g AT
    of dy's m x m tiles, ``kind`` its transform; V = BT d B of x's A x A ones, ``ikind``); db[g]
    its dy sums.
    widths/cstarts: the column tiles of C (Cp = their sum; columns past C are scratch). Scratch
    per group: xp[g] (packed x), gp[g] (packed dy, m*th x m*tw), vb[g] (A*A blocks of tiles x C,
    :func:`_stride` apart, and a tile's width of slack), mb[g] (A*A blocks of tiles x K);
    ko[i] = i, oo[i] = i*Cp."""
    N, C = x.shape[0], x.shape[1]
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    G = xp.shape[0]
    Hp, row, grow = m * th + A - m, (m * tw + A - m) * C, m * tw * K
    Cp = dup.shape[3]
    dyv = dy.reshape(N, K, P * Q)
    for g in prange(G):
        buf, gbuf, vbf, mbf, dug = xp[g], gp[g], vb[g], mb[g], dup[g]
        duf = dug.reshape(-1)
        duf[:] = 0.0
        n_hi = (g + 1) * N // G
        for n0 in range(g * N // G, n_hi, nb):
            ni = min(nb, n_hi - n0)
            nhwc.pack_x(x, n0, n0 + ni, ph, pw, buf[:ni * Hp * row].reshape(ni, Hp, row))
            nhwc.pack_x(dy, n0, n0 + ni, 0, 0, gbuf[:ni * m * th * grow].reshape(ni, m * th, grow))
            nhwc.sum_dy(dyv, n0, n0 + ni, 0, P, Q, db[g])
            for i0 in range(0, th, band):
                i1 = min(i0 + band, th)
                T = ni * (i1 - i0) * tw
                VS, MS = _stride(T * C), _stride(T * K)
                t = 0
                for im in range(ni):
                    for i in range(i0, i1):
                        for j in range(tw):
                            wtrans(ikind, isa, buf, (im * Hp + m * i) * row + m * j * C, row, C,
                                   vbf, t * C, A * VS, VS, C, A, A)
                            wtrans(kind, isa, gbuf, (im * m * th + m * i) * grow + m * j * K,
                                   grow, K, mbf, t * K, A * MS, MS, K, A, A)
                            t += 1
                for xi in range(A * A):
                    for ci in range(widths.shape[0]):
                        width, c0 = widths[ci], cstarts[ci]
                        nk = -(-K // (mr if width <= 2 * lanes else mr3))
                        for kt in range(nk):
                            k0, k1 = kt * K // nk, (kt + 1) * K // nk
                            tile_strided(isa, width // lanes, k1 - k0, mbf, xi * MS + k0, ko, 0,
                                         0, vbf, xi * VS + c0, 0, 0, C, 1, 1, T, duf,
                                         (xi * K + k0) * Cp + c0, oo, 1, K)


@njit
def _stride(n):
    """n floats rounded up to an odd number of cache lines: the weight gradient's 36 blocks
    (V[xi] and dM[xi], tiles x channels each) then start in 36 different L1 sets. (At a multiple
    of 4 KiB apart, a transform's 36 stores of one tile all fall in one set: see above.)"""
    lines = -(-n // 16)
    return (lines + 1 - lines % 2) * 16


def _blocks(N, G, th, tw, per_tile=0, budget=None, least=1):
    """(band tile rows, images) of a block: at most :data:`TILES` tiles, and ``budget`` bytes
    (:data:`BLOCK_BYTES`) of ``per_tile`` floats each, but ``least`` tiles."""
    budget = BLOCK_BYTES if budget is None else budget
    tiles = max(least, min(TILES, budget // max(4 * per_tile, 1)))
    band = max(1, min(th, tiles // tw))
    band = -(-th // -(-th // band))  # even bands: no short last one
    nb = max(1, min(tiles // (th * tw), -(-N // G))) if band == th else 1
    return band, nb


def _geometry(x_shape, k_out, m, r, padding, isa, threads=None, wgrad=False):
    """(P, Q, th, tw, G, band, nb, T, Kp, scratch shapes) of a forward pass to k_out channels
    with F(m x m, r x r), or with ``wgrad`` of the weight gradient of a layer with k_out output
    channels."""
    N, C, H, W = x_shape
    A = m + r - 1
    P, Q = H + 2 * padding[0] - r + 1, W + 2 * padding[1] - r + 1
    th, tw = -(-P // m), -(-Q // m)
    G = max(1, min(threads or numba.get_num_threads(), N))
    widest = 3 * isa.lanes  # a panel of the forward
    band, nb = _blocks(N, G, th, tw, A * A * (C + (k_out if wgrad else widest)),
                       WGRAD_BLOCK_BYTES if wgrad else BLOCK_BYTES,
                       WGRAD_MIN_TILES if wgrad else 1)
    T = nb * band * tw
    Kp = int(direct._panels(k_out, isa).sum())
    xp = (G, nb * (m * th + A - m) * (m * tw + A - m) * C)
    if not wgrad:
        return P, Q, th, tw, G, band, nb, T, Kp, {
            "xp": xp, "vb": (G, A * A * T * C), "mb": (G, A * A * T * widest),
            "yt": (G, nb * m * band * Q, Kp)}
    Cp = sum(direct._widths(C, isa, direct.TILES3))
    return P, Q, th, tw, G, band, nb, T, Kp, {
        "xp": xp, "gp": (G, nb * m * th * m * tw * k_out),
        "vb": (G, A * A * int(_stride(T * C)) + widest),  # slack: a tile's columns past C
        "mb": (G, A * A * int(_stride(T * k_out))), "dup": (G, A * A, k_out, Cp)}


def _conv(x, w, b, padding, m, isa, turned=False):
    N, C = x.shape[0], x.shape[1]
    ph, pw = padding
    K, r = (w.shape[1] if turned else w.shape[0]), w.shape[2]
    A = m + r - 1
    up, widths, offsets = _pack_u(w, m, isa, turned)
    P, Q, th, tw, G, band, nb, T, Kp, shapes = _geometry(x.shape, K, m, r, padding, isa)
    xp, vb, mb, yt = (np.empty(shapes[k], dtype=x.dtype) for k in ("xp", "vb", "mb", "yt"))
    ao = np.arange(T, dtype=np.int64) * (A * A * C)
    oo = np.arange(T, dtype=np.int64) * (A * A) * widths[:, None]
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    _forward_kernel(x, up, widths, offsets, bias, y, ph, pw, m, A, INPUT[A], OUTPUT[m, r], th, tw,
                    band, nb, isa.id, isa.lanes, isa.rows, isa.rows3, xp, vb, mb, yt, ao, oo)
    return y


def _wgrad(dy, x, w, padding, m, isa):
    """(dw, db): dU[xi] = sum over tiles of dM[t, xi]^T V[t, xi] on the register tiles (a
    reduction over the tiles: :data:`~._fma.tile_strided`), then dw = G^T dU G."""
    C, K, r = x.shape[1], w.shape[0], w.shape[2]
    A = m + r - 1
    P, Q, th, tw, G, band, nb, T, _, shapes = _geometry(x.shape, K, m, r, padding, isa,
                                                        wgrad=True)
    widths = np.array(direct._widths(C, isa, direct.TILES3), dtype=np.int64)
    cstarts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    Cp = int(widths.sum())
    rows = max(isa.rows, isa.rows3)
    xp, gp, vb, mb, dup = (np.empty(shapes[k], dtype=x.dtype)
                           for k in ("xp", "gp", "vb", "mb", "dup"))
    db = np.zeros((G, direct._row(K, 8)), dtype=np.float64)
    ko = np.arange(rows, dtype=np.int64)
    _wgrad_kernel(x, dy, padding[0], padding[1], m, A, INPUT[A], GRAD[m, r], th, tw, band, nb,
                  isa.id, isa.lanes, isa.rows, isa.rows3, widths, cstarts, xp, gp, vb, mb, ko,
                  ko * Cp, dup, db)
    du = np.empty((A * A, K, C), dtype=x.dtype)
    _sum_groups(dup, du)
    dw = np.matmul(du.reshape(A * A, K * C).T, taps(m, r, x.dtype.str)).reshape(w.shape)
    return dw, db[:, :K].sum(axis=0).astype(x.dtype)


@pnjit
def _sum_groups(dup, du):
    """du[xi, k, c] = the groups' dup[g, xi, k, c] summed in group order (the result depends on
    the thread count only), rows in parallel."""
    G, P, K, C = dup.shape[0], du.shape[0], du.shape[1], du.shape[2]
    for row in prange(P * K):
        xi, k = row // K, row % K
        for c in range(C):
            du[xi, k, c] = dup[0, xi, k, c]
        for g in range(1, G):
            for c in range(C):
                du[xi, k, c] += dup[g, xi, k, c]


def forward(x, w, b, stride, padding, m, *, isa=None):
    """y (N, K, P, Q) of checked float32 arguments to which F(m x m, r x r) applies."""
    with profile.region("gemm"):
        return _conv(x, w, b, padding, m, direct._isa(isa))


def own_wgrad(C, isa, m, r):
    """Whether the weight gradient of F(m x m, r x r) runs here (else it is "direct"'s): its
    tiles are output channels by input channels, with :data:`WGRAD_MIN_VECTORS` vectors of
    input channels at least."""
    return C >= WGRAD_MIN_VECTORS.get((m, r), 2) * isa.lanes


def backward(dy, x, w, stride, padding, m, input_grad=True, *, isa=None):
    """(dx, dw, db): the weight gradient summed over the tiles (or "direct"'s: :func:`own_wgrad`),
    the data gradient a forward of dy."""
    isa = direct._isa(isa)
    if own_wgrad(x.shape[1], isa, m, w.shape[2]):
        with profile.region("gemm"):
            dw, db = _wgrad(dy, x, w, padding, m, isa)
    else:
        _, dw, db = direct.backward(dy, x, w, stride, padding, input_grad=False, isa=isa)
    if not input_grad:
        return None, dw, db
    with profile.region("gemm"):
        r = w.shape[2]
        dx = _conv(dy, w, None, (r - 1 - padding[0], r - 1 - padding[1]), m, isa, turned=True)
    return dx, dw, db


def workspace_bytes(x_shape, w_shape, padding, m, itemsize=4, threads=None, backward=False):
    """(total, transformed-input) scratch bytes of one pass: the packed images, the blocks' V and
    M, the output band, the transformed and packed weights; backward: the weight gradient's
    (packed x and dy, the blocks' V and dM, the partial dU and db) or the data gradient's forward
    of dy, whichever is larger (they run one after the other)."""
    isa = direct._isa(None)
    N, C, H, W = x_shape
    K, r = w_shape[0], w_shape[2]
    A = m + r - 1

    def one(shape, k_out, pads):  # U (A*A, K, C) and its panels (A*A, C_in, Kp) besides
        *_, Kp, shapes = _geometry(shape, k_out, m, r, pads, isa, threads)
        total = sum(int(np.prod(s)) for s in shapes.values()) + A * A * (K * C + shape[1] * Kp)
        return total * itemsize, int(np.prod(shapes["vb"])) * itemsize

    if not backward:
        return one(x_shape, K, padding)
    P, Q = H + 2 * padding[0] - r + 1, W + 2 * padding[1] - r + 1
    G, shapes = _geometry(x_shape, K, m, r, padding, isa, threads, wgrad=True)[4::5]
    wg = sum(int(np.prod(s)) for s in shapes.values()) * itemsize + G * direct._row(K, 8) * 8
    if not own_wgrad(C, isa, m, r):
        wg = direct.workspace_bytes(x_shape, w_shape, (1, 1), padding, itemsize, threads, True,
                                    input_grad=False)[0]
    dg = one((N, K, P, Q), C, (r - 1 - padding[0], r - 1 - padding[1]))
    return max(wg, dg[0]), max(int(np.prod(shapes["vb"])) * itemsize, dg[1])
