"""Direct convolution on register tiles (strategy "direct"): no lowering, no BLAS, no padding.

Each thread takes a contiguous group of the batch's images and packs them, one block of images
at a time, into a zero-bordered NHWC buffer of its own (:func:`hpcnn.kernels.nhwc.pack_x`). In
that layout the taps of one kernel row that a window covers are contiguous, (s, c) after
(s, c), so the :mod:`~._fma` tile reads the windows in place. The tile's shape comes from the
vector ISA (:mod:`~.isa`): 14 rows x 32 columns on AVX-512, 6 x 16 on AVX2.

**No multiply-add ever touches the border.** For an output row, the kernel rows whose input
row lies inside the image form one range, and for an output column the kernel columns likewise.
Every pass runs its tiles over exactly those ranges:

- **forward**: a block is a band of output rows of one image, or several whole small images
  (:func:`_block`). A tile is up to 14 of the block's output pixels (anywhere in the block:
  every row has its own input and output offset) by 32 output channels (9 by 48 on a
  three-vector panel, :func:`_panels`), and the pixels that
  share a tile also share their range of real taps: the block's pixels are grouped by their
  rows' range of real kernel rows and their columns' range of real kernel columns
  (:func:`window_classes`: the few edge rows and columns have their own, shorter ranges). The
  tile adds all those taps, kernel row after kernel row and s*C + c after s*C + c within one,
  against the weights packed as (R*S*C, 32) panels (prefetched ahead into L1 when a panel is
  larger than :data:`PREFETCH_PANEL`), into the block's output kept pixel-major,
  which then moves to NCHW with the bias. (Taking one kernel row at a time over every pixel
  real for it, with the tiles adding into the output, gave taller tiles but was 2-8% slower
  on most GoogLeNet and cifar10_quick layers on an AMD Zen 4, both vector paths.)
- **data gradient** (stride 1, padding at most R-1 and S-1): the forward of dy, padded by R-1-ph
  and S-1-pw, with the weights flipped and their two channel axes swapped; its border is skipped
  the same way; with 9-16 input channels (AVX-512; 5-8 on AVX2) and wide enough rows, pairs of
  output pixels share a tile of two vectors (:func:`pairs`). Otherwise it is taken from the
  "chunked" strategy.
- **weight gradient**: a tile is up to 14 output channels by 32 entries (or 9 by 48:
  :func:`column_tiles`) of one kernel row of dW (when C fills a wide tile, the entries of one
  kernel column s: c0..c0+31); it sums dy's
  rows (NCHW, contiguous) against the windows' rows over the output pixels whose input pixel is
  real for that r and s, and over all the images of a block (several when an image has fewer
  than :data:`WGRAD_PIXELS` output pixels: on 8x8 outputs one image gives a tile too few steps
  to pay for loading and storing its accumulators). Each thread adds its tiles into a dW of its
  own; the groups' partials are summed in group order, so the result depends on the thread
  count only. With fewer input channels than a wide tile (a first layer, C = 3; or 16 and 24,
  as on GoogLeNet's 5x5 branches), a tile spans several kernel columns and only the kernel rows
  are trimmed: there, the edge columns' border taps are multiplied, but the tiles are wide.

Ragged edges: a run of pixels (or output channels) is cut into tiles of even heights, and a
tile of fewer rows runs its own shorter code (no repeated rows); an output-channel count that is
not a multiple of the panel width ends with a narrower panel whose extra columns are zero
weights, dropped when the band moves to NCHW.
"""

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import isa as isa_mod
from hpcnn.kernels import nhwc
from hpcnn.kernels._fma import tile, tile_packed, transpose8
from hpcnn.kernels._jit import njit, pnjit, prange

BAND_PIXELS = 256
"""Output pixels per band of the weight gradient, about (whole output rows, at least one): the
band's window rows stay in L1/L2 across the output-channel tiles."""
WGRAD_PIXELS = 512
"""Output pixels a weight-gradient tile sums over, about, when whole images are smaller than a
band: several small images are packed and summed by one tile."""
BLOCK = 512
"""Output pixels per forward band, about (whole output rows, at least one): the band's output,
pixel-major, stays in L2 until it moves to NCHW, and the edge columns' tiles get tall."""
PREFETCH_PANEL = 32 * 1024
"""Bytes of a forward weight panel above which its tiles prefetch it (:data:`~._fma.tile_packed`):
a panel that fits in L1 (32-48 KiB) gains nothing. Measured on an Intel Xeon, forward alone,
alternated in one process (``results/isa/xeon4/prefetch_ab_*.log``): with AVX-512, panels of
51-368 KiB, 0.99-1.10x (1.04x and more on 11 of 15 layers at 2 threads); on forced AVX2, panels
of 25 KiB (16-channel 5x5 layers) ran 0.95-0.99x with prefetching, larger ones 1.00-1.05x."""
SLACK = 64  # floats after a packed image: a weight-gradient tile reads up to 47 past its row


def applies(x_shape, w_shape, stride, padding, direction=None):
    """True when "direct" runs its own kernels in ``direction`` ("forward", "backward", "wgrad";
    None: all three): the forward and the weight gradient always do; the data gradient needs
    stride 1 and padding at most R-1, S-1 (elsewhere it comes from "chunked")."""
    if direction in ("forward", "wgrad"):
        return True
    R, S = w_shape[2:]
    return tuple(stride) == (1, 1) and padding[0] <= R - 1 and padding[1] <= S - 1


def window_classes(out, size, k, stride, pad):
    """Runs of output positions whose windows cover the same real taps, as int64 rows
    (o0, o1, t0, t1): outputs o0 <= o < o1 read input positions o*stride - pad + t for
    t0 <= t < t1 only (t1 <= t0 when the whole window lies on the border)."""
    rows = []
    for o in range(out):
        i0 = o * stride - pad
        t0, t1 = max(0, -i0), min(k, size - i0)
        if rows and rows[-1][1] == o and rows[-1][2:] == [t0, t1]:
            rows[-1][1] = o + 1
        else:
            rows.append([o, o + 1, t0, t1])
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


TILES3 = True
"""Whether the weight gradient's column tiles end in a three-vector tile where they would end in
a one-vector one (AVX-512, :func:`column_tiles`). Measured on an Intel Xeon, alternated in one
process (``results/isa/xeon4/tiles3_wgrad_ab_*.log``), on the GoogLeNet layers whose tiles
change (C = 16, 48, 112, 144): 1.05-1.16x at 1 thread, 1.04-1.14x at 2."""
PANELS3 = True
"""Whether a one-vector rest panel and the two-vector panel before it become one three-vector
panel (AVX-512, :func:`_panels`)."""


def _panels(K, isa):
    """Widths of the output-channel panels: two vectors wide, then one or two for the rest. On
    a path with three-vector tiles (AVX-512), a one-vector rest and the panel before it are one
    panel of three vectors instead (K = 48, 80, 112, ...): a one-vector tile needs a broadcast
    per FMA and ran at 0.8x a two-vector tile's speed, a three-vector tile of 9 rows at 1.0x
    (``results/isa/xeon3/tile_widths.log``). Measured on an Intel Xeon, alternated in one
    process (``results/isa/xeon4/panels3_ab_*.log``), on every GoogLeNet pass whose panels
    change: 1.01-1.09x at 1 and at 2 threads (GoogLeNet 4a_5x5's forward 1.09x,
    5b_5x5's data gradient 1.07-1.09x). (With a three-vector panel wherever the estimated time
    was lower, the 7x7 layers lost up to 12%: ``results/isa/xeon3/panels48_ab_*.log``.)"""
    return np.array(_widths(K, isa, PANELS3), dtype=np.int64)


def _widths(n, isa, three):
    """Tile widths that cover n columns: two vectors while more than one vector is left, then
    one vector; with ``three`` on a path that has three-vector tiles, a rest of one vector or
    less after a two-vector tile joins it in one three-vector tile (the rule of :func:`_panels`
    and :func:`column_tiles`). The last tile may have columns past n."""
    wide, narrow = isa.widths
    out, rest = [], n
    while rest > 0:
        width = wide if rest > narrow else narrow
        if three and isa.rows3 and wide < rest <= wide + narrow:
            width = wide + narrow
        out.append(width)
        rest -= width
    return out


def _pack_weights(w, isa, turned=False):
    """w (K, C, R, S) -> (flat panels, widths, offsets): panel p holds its output channels as a
    (R*S*C, width) matrix, in the order of a window's NHWC rows (zero columns past K). With
    ``turned``, the weights packed are those of the data gradient, w turned by 180 degrees with
    its two channel axes swapped (C output channels, K input channels), read from w in place."""
    K, C, R, S = w.shape
    if turned:
        K, C = C, K
    widths = _panels(K, isa)
    starts = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.int64)
    offsets = R * S * C * starts
    out = np.empty(R * S * C * int(widths.sum()), dtype=w.dtype)
    _pack_panels(np.ascontiguousarray(w), widths, starts, offsets, out, turned)
    return out, widths, offsets


@pnjit
def _pack_panels(w, widths, starts, offsets, out, turned):
    """The panels of :func:`_pack_weights`, one per iteration of a parallel loop, channel by
    channel, so that the cache line of w[k, c] serves the R*S rows it holds. (As a NumPy
    transpose and copy, serial, it took 2.8 ms for GoogLeNet 5b_3x3's 2.6 MiB of weights on an
    Intel Xeon, beside a forward of 15.6 ms at 1 thread and 9.2 at 2; now 0.45 and 0.21 ms. The
    data gradient's turned copy of w, made by NumPy before packing, took 0.33 ms of 5a_3x3's
    12-ms backward at 2 threads.)"""
    K, C, R, S = w.shape
    if turned:
        K, C = C, K
    for pi in prange(widths.shape[0]):
        width, k0, base = widths[pi], starts[pi], offsets[pi]
        kn = min(width, K - k0)
        for c in range(C):
            for r in range(R):
                for s in range(S):
                    row = base + ((r * S + s) * C + c) * width
                    if turned:
                        for j in range(kn):
                            out[row + j] = w[c, k0 + j, R - 1 - r, S - 1 - s]
                    else:
                        for j in range(kn):
                            out[row + j] = w[k0 + j, c, r, s]
                    for j in range(kn, width):
                        out[row + j] = 0.0


@njit
def _some_empty(rows, cols):
    """Whether some output pixel's window lies wholly on the border."""
    for j in range(rows.shape[0]):
        if rows[j, 3] <= rows[j, 2]:
            return True
    for c in range(cols.shape[0]):
        if cols[c, 3] <= cols[c, 2]:
            return True
    return False


@njit
def _to_nchw(src, s0, Kp, bias, yf, n, K, PQ, p_lo, p_hi):
    """y[n, k, p] = src[s0 + (p - p_lo)*Kp + k] + bias[k] for p_lo <= p < p_hi, k < K (y flat,
    (N, K, PQ)): a band moved from pixel-major to NCHW. 8x8 blocks are transposed in registers,
    eight channels at a time along the whole band, so that each of y's rows is written as one
    contiguous run of full cache lines (pixel block by pixel block, a 32x32 layer's half lines
    went to rows 4 KiB apart, which can evict each other before their second half comes); the
    ragged pixels and channels go one by one."""
    k8 = K - K % 8
    p8 = p_lo + (p_hi - p_lo) // 8 * 8
    for k0 in range(0, k8, 8):
        for p0 in range(p_lo, p8, 8):
            transpose8(src, s0 + (p0 - p_lo) * Kp + k0, Kp, bias, k0, yf, (n * K + k0) * PQ + p0,
                       PQ)
    for k in range(K):
        bv = bias[k]
        d0 = (n * K + k) * PQ
        for p in range(p8 if k < k8 else p_lo, p_hi):
            yf[d0 + p] = src[s0 + (p - p_lo) * Kp + k] + bv


@pnjit
def _forward_kernel(x, wp, widths, offsets, bias, y, R, S, sh, sw, ph, pw, rows, cols, band, nb,
                    isa, lanes, mr, mr3, xp, yt, ao, oo):
    """y (N, K, P, Q) = conv(x, w) + bias; wp/widths/offsets from :func:`_pack_weights`, rows
    and cols from :func:`window_classes` (output rows and columns). A block is ``nb`` images
    (when a band of ``band`` output rows is the whole image; else nb is 1) by a band: its
    pixels of a row class and a column class share tiles, which store their sums (only the
    pixels whose window lies wholly on the border, when there are some, are zeroed). Scratch
    per group g: xp[g] (nb*Hp*Wp*C + SLACK floats), yt[g] (nb*band*Q pixels, panel widths
    summed), ao[g], oo[g] (nb*band*Q: a tile's input and output offsets). mr, mr3: rows of a
    tile of up to two vectors, of three."""
    N, C, H, W = x.shape
    K, P, Q = y.shape[1], y.shape[2], y.shape[3]
    G = xp.shape[0]
    Hp, row, SC, PQ = H + 2 * ph, (W + 2 * pw) * C, S * C, P * Q
    Kp = yt.shape[2]
    yf = y.reshape(-1)
    empty = _some_empty(rows, cols)
    for g in prange(G):
        buf, aof, oof, out = xp[g], ao[g], oo[g], yt[g]
        outf = out.reshape(-1)
        n_hi = (g + 1) * N // G
        for n0 in range(g * N // G, n_hi, nb):
            ni = min(nb, n_hi - n0)
            nhwc.pack_x(x, n0, n0 + ni, ph, pw, buf[:ni * Hp * row].reshape(ni, Hp, row))
            for oh0 in range(0, P, band):
                oh1 = min(oh0 + band, P)
                nr = oh1 - oh0
                if empty:
                    outf[:ni * nr * Q * Kp] = 0.0
                for jb in range(rows.shape[0]):
                    a, b = max(rows[jb, 0], oh0), min(rows[jb, 1], oh1)
                    r0, r1 = rows[jb, 2], rows[jb, 3]
                    if a >= b or r1 <= r0:
                        continue
                    for cc in range(cols.shape[0]):
                        q0, q1, s0, s1 = cols[cc, 0], cols[cc, 1], cols[cc, 2], cols[cc, 3]
                        if s1 <= s0:
                            continue
                        cnt = 0
                        for i in range(ni):
                            for oh in range(a, b):
                                for q in range(q0, q1):
                                    aof[cnt] = (i * Hp + oh * sh + r0) * row + (q * sw + s0) * C
                                    oof[cnt] = ((i * nr + oh - oh0) * Q + q) * Kp
                                    cnt += 1
                        k0 = 0
                        for pi in range(widths.shape[0]):
                            width = widths[pi]
                            nt = -(-cnt // (mr if width <= 2 * lanes else mr3))  # even heights
                            b0 = offsets[pi] + (r0 * S + s0) * C * width
                            fetch = R * SC * width * 4 > PREFETCH_PANEL
                            for ti in range(nt):
                                t0, t1 = ti * cnt // nt, (ti + 1) * cnt // nt
                                if fetch:
                                    tile_packed(isa, width // lanes, t1 - t0, buf, 0, aof[t0:],
                                                row, 0, wp, b0, SC * width, 0, width, 1, r1 - r0,
                                                (s1 - s0) * C, outf, k0, oof[t0:], 0)
                                else:
                                    tile(isa, width // lanes, t1 - t0, buf, 0, aof[t0:], row, 0,
                                         wp, b0, SC * width, 0, width, 1, r1 - r0, (s1 - s0) * C,
                                         outf, k0, oof[t0:], 0)
                            k0 += width
                for i in range(ni):
                    _to_nchw(outf, i * nr * Q * Kp, Kp, bias, yf, n0 + i, K, PQ, oh0 * Q, oh1 * Q)


@pnjit
def _wgrad_kernel(dy, x, R, S, sh, sw, ph, pw, band, nb, jt, isa, lanes, mr, mr3, oo_dw, oo_t,
                  xp, tb, ao, dwp, db):
    """dwp[g] (K, R*S*C) += group g's weight gradient (window order), db[g] (float64) its dy
    sums. jt (int64 rows j0, width, nj, s): the column tiles of one kernel row of dW (s = -1: a
    tile spanning several kernel columns). ``nb`` images at a time are packed into xp[g] (nb is
    1 unless ``band`` output rows are a whole image) and each tile sums over all of them: on
    small images (8x8, 7x7) one image gives a tile only a few dozen steps, too few to pay for
    loading and storing its accumulators. Output rows are taken ``band`` at a time, so that the
    window rows the tiles read stay in cache while the tiles of all output channels read them.
    The output channels are cut into tiles of even heights (at most mr rows, mr3 for a
    three-vector tile). oo_dw[i] = i*R*S*C, oo_t[i] = i*tb's row."""
    N, C, H, W = x.shape
    K, P, Q = dy.shape[1], dy.shape[2], dy.shape[3]
    G = xp.shape[0]
    Hp, row, SC, PQ = H + 2 * ph, (W + 2 * pw) * C, S * C, P * Q
    RSC = R * SC
    ldt = oo_t[1] - oo_t[0]  # tb's rows: the widest tile's
    dyv = dy.reshape(N, K, PQ)
    for g in prange(G):
        buf, aof, t, dwg = xp[g], ao[g], tb[g], dwp[g]
        dwgf = dwg.reshape(-1)
        n_hi = (g + 1) * N // G
        for n0 in range(g * N // G, n_hi, nb):
            ni = min(nb, n_hi - n0)
            nhwc.pack_x(x, n0, n0 + ni, ph, pw, buf[:ni * Hp * row].reshape(ni, Hp, row))
            nhwc.sum_dy(dyv, n0, n0 + ni, 0, P, Q, db[g])
            for ob0 in range(0, P, band):
                ob1 = min(P, ob0 + band)
                for r in range(R):  # the output rows whose input row is real for r
                    lo = max(ob0, -((r - ph) // sh))
                    hi = min(ob1, (H - 1 + ph - r) // sh + 1)
                    if lo >= hi:
                        continue
                    for ti in range(jt.shape[0]):
                        j0, width, nj, s = jt[ti, 0], jt[ti, 1], jt[ti, 2], jt[ti, 3]
                        q0, q1 = 0, Q
                        if s >= 0:  # the output columns whose input column is real for s
                            q0 = max(0, -((s - pw) // sw))
                            q1 = min(Q, (W - 1 + pw - s) // sw + 1)
                            if q0 >= q1:
                                continue
                        b0 = (lo * sh + r) * row + q0 * sw * C + j0
                        a0 = n0 * K * PQ + lo * Q + q0
                        nk = -(-K // (mr if width <= 2 * lanes else mr3))
                        for kt in range(nk):
                            k0 = kt * K // nk
                            m = (kt + 1) * K // nk - k0
                            for i in range(m):
                                aof[i] = (k0 + i) * PQ
                            if nj == width:  # accumulate straight into the group's dW
                                tile(isa, width // lanes, m, dy, a0, aof, Q, K * PQ, buf, b0,
                                     sh * row, Hp * row, sw * C, ni, hi - lo, q1 - q0, dwgf,
                                     k0 * RSC + r * SC + j0, oo_dw, 1)
                            else:
                                tile(isa, width // lanes, m, dy, a0, aof, Q, K * PQ, buf, b0,
                                     sh * row, Hp * row, sw * C, ni, hi - lo, q1 - q0, t, 0,
                                     oo_t, 0)
                                for i in range(m):
                                    d = dwg[k0 + i, r * SC + j0:r * SC + j0 + nj]
                                    src = t[i * ldt:i * ldt + nj]
                                    for v in range(nj):
                                        d[v] += src[v]


def column_tiles(C, S, isa):
    """The weight gradient's column tiles of one kernel row (int64 rows j0, width, nj, s): per
    kernel column s when C fills a wide (two-vector) tile (so that the tile's output columns can
    be trimmed for s), else across the whole row of S*C entries (s = -1). A one-vector tile
    needs a broadcast per FMA and runs slower than a wide one (0.8x alone, Intel Xeon, AVX-512:
    results/isa/xeon3/tile_widths.log), which costs more than multiplying the border: with
    C = 16 and 24 (GoogLeNet's 5x5 branches, and a 3x3 layer) spanning was 1.12-1.20x faster
    at 1 and 2 threads; with C = 48 and 80 per-column tiles were faster (1.01-1.09x;
    results/isa/xeon3/wgrad_span.log). On a path with three-vector tiles (AVX-512), a run whose
    rest after a two-vector tile would be one vector or less takes one three-vector tile of 9
    rows instead (:data:`TILES3`): C = 48 is one tile per kernel column, a 16-channel 5x5 row
    (80 entries) is 32 + 48."""
    wide = isa.widths[0]
    out = []

    def cover(base, n, s):
        c0 = 0
        for width in _widths(n, isa, TILES3):
            out.append((base + c0, width, min(width, n - c0), s))
            c0 += width

    if C >= wide:
        for s in range(S):
            cover(s * C, C, s)
    else:
        cover(0, S * C, -1)
    return np.array(out, dtype=np.int64).reshape(-1, 4)


def _row(n, itemsize):
    """Length of a per-thread scratch row of n values: whole cache lines and one more, so that
    two threads' rows never share a line (their writes would bounce it between the cores)."""
    return (-(-n * itemsize // 64) + 1) * 64 // itemsize


def _groups(N):
    return max(1, min(numba.get_num_threads(), N))


def _isa(isa):
    if isa is None:
        return isa_mod.select()
    return isa_mod.ISAS[isa] if isinstance(isa, str) else isa


def _out_size(H, W, R, S, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1


def _band(P, Q, pixels):
    return max(1, min(P, pixels // max(Q, 1)))


def _block(N, G, P, Q, band_pixels, block_pixels):
    """(band rows, images) of a block: bands of about ``band_pixels`` output pixels (whole rows,
    at least one), and when a band is a whole image, as many of a group's images as make about
    ``block_pixels`` pixels: the forward's small images then share tiles (the few pixels of an
    edge class become full tiles), and a weight-gradient tile sums over all of them."""
    band = _band(P, Q, band_pixels)
    nb = max(1, min(block_pixels // (P * Q), -(-N // G))) if band == P else 1
    return band, nb


def _forward(x, w, b, stride, padding, isa, Q=None, turned=False):
    """The forward kernel's call; ``Q`` overrides the output width (the columns past the
    input's right border are still computed from real taps only); ``turned``: convolve with the
    data gradient's weights of w (see :func:`_pack_weights`)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    if turned:
        K = w.shape[1]
    (sh, sw), (ph, pw) = stride, padding
    P, Q0 = _out_size(H, W, R, S, stride, padding)
    Q = Q0 if Q is None else Q
    wp, widths, offsets = _pack_weights(w, isa, turned)
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    G = _groups(N)
    band, nb = _block(N, G, P, Q, BLOCK, BLOCK)
    xp = np.zeros((G, nb * (H + 2 * ph) * (W + 2 * pw) * C + SLACK), dtype=x.dtype)
    ao = np.empty((G, _row(nb * band * Q, 8)), dtype=np.int64)
    oo = np.empty((G, _row(nb * band * Q, 8)), dtype=np.int64)
    yt = np.empty((G, nb * band * Q, int(widths.sum())), dtype=x.dtype)
    rows = window_classes(P, H, R, sh, ph)
    cols = window_classes(Q, W, S, sw, pw)
    _forward_kernel(x, wp, widths, offsets, bias, y, R, S, sh, sw, ph, pw, rows, cols, band, nb,
                    isa.id, isa.lanes, isa.rows, isa.rows3, xp, yt, ao, oo)
    return y


def forward(x, w, b, stride, padding, *, isa=None):
    """y (N, K, P, Q) of checked arguments (see :mod:`hpcnn.kernels.conv`); ``isa``: a path of
    :data:`hpcnn.kernels.isa.ISAS` (default: :func:`hpcnn.kernels.isa.select`)."""
    if x.dtype != np.float32:
        from hpcnn.kernels import pipelined

        return pipelined.forward(x, w, b, stride, padding, schedule="chunked")
    with profile.region("gemm"):
        return _forward(x, w, b, stride, padding, _isa(isa))


def backward(dy, x, w, stride, padding, input_grad=True, *, isa=None):
    """(dx, dw, db) of checked arguments; dx is None without ``input_grad``."""
    from hpcnn.kernels import pipelined

    if x.dtype != np.float32:
        return pipelined.backward(dy, x, w, stride, padding, input_grad, schedule="chunked")
    isa = _isa(isa)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = dy.shape[2], dy.shape[3]
    Hp, Wp = H + 2 * ph, W + 2 * pw
    G = _groups(N)
    band, nb = _block(N, G, P, Q, BAND_PIXELS, WGRAD_PIXELS)
    mr = isa.rows
    jt = column_tiles(C, S, isa)
    dwp = np.zeros((G, K, R * S * C), dtype=x.dtype)
    db = np.zeros((G, _row(K, 8)), dtype=np.float64)
    xp = np.zeros((G, nb * Hp * Wp * C + SLACK), dtype=x.dtype)
    ldt = int(jt[:, 1].max())  # the widest tile
    tb = np.empty((G, _row(mr * ldt, 4)), dtype=x.dtype)  # a tile with columns past its row
    ao = np.empty((G, _row(mr, 8)), dtype=np.int64)
    oo_dw = np.arange(mr, dtype=np.int64) * (R * S * C)
    oo_t = np.arange(mr, dtype=np.int64) * ldt
    with profile.region("gemm"):
        _wgrad_kernel(dy, x, R, S, sh, sw, ph, pw, band, nb, jt, isa.id, isa.lanes, mr, isa.rows3,
                      oo_dw, oo_t, xp, tb, ao, dwp, db)
    dw = np.empty(w.shape, dtype=x.dtype)
    nhwc.sum_partials(dwp, dw)
    db = db[:, :K].sum(axis=0).astype(x.dtype)
    if not input_grad:
        return None, dw, db
    if applies(x.shape, w.shape, stride, padding):
        with profile.region("gemm"):
            dx = _data_grad(dy, w, (R - 1 - ph, S - 1 - pw), W, isa)
    else:
        dx = pipelined.backward(dy, x, w, stride, padding, True, schedule="chunked")[0]
    return dx, dw, db


def pairs(C, S, W, isa):
    """Whether the data gradient of a layer with C input channels, S kernel columns and input
    width W takes output pixels in pairs (:func:`_data_grad`): where C fills more than half of one
    vector and at most one (a one-vector panel otherwise), and the pairs' extra work, (S+1)/S
    taps and an odd row's missing partner, is at most 1.25x on rows of 14 pixels or more.
    Measured on an Intel Xeon, AVX-512 (``results/isa/xeon3/dgrad_pairs.log``): with 5x5 kernels
    on 14-28 wide rows, 1.07-1.23x at 1 thread and 1.00-1.08x at 2 (GoogLeNet 3a_5x5 and 4a_5x5
    among them); with 3x3 kernels 0.85-0.97x, on 7x7 images 0.82x at 2 threads."""
    narrow = isa.widths[1]
    waste = (S + 1) / S * (W + W % 2) / W
    return 2 * C > narrow >= C and W >= 14 and waste <= 1.25


def _data_grad(dy, w, padding, W, isa, paired=None):
    """dx: the forward of dy with w (K, C, R, S) turned (C output channels, K input channels),
    stride 1. With at most one vector of output channels C, the panel would be one vector wide,
    whose tiles need a broadcast per FMA and run slower than wide ones (see
    :func:`column_tiles`); there
    (:func:`pairs`; ``paired`` overrides it) the output pixels go in pairs instead: a forward of
    stride 2 along the row with a kernel one column wider, whose 2C output channels are the
    pair's even pixel (taps 0..S-1, zero at S) and its odd one (the same taps one column to the
    right, zero at 0), on a panel of two vectors. Its windows are trimmed to the real pixels
    like any forward's, so the odd pixel past an odd width reads nothing outside the image."""
    K, C, R, S = w.shape
    if not (pairs(C, S, W, isa) if paired is None else paired):
        return _forward(dy, w, None, (1, 1), padding, isa, turned=True)
    N, H = dy.shape[0], dy.shape[2] + 2 * padding[0] - R + 1
    wflip = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    w2 = np.zeros((2, C, K, R, S + 1), dtype=w.dtype)
    w2[0, :, :, :, :S] = wflip
    w2[1, :, :, :, 1:] = wflip
    y2 = _forward(dy, w2.reshape(2 * C, K, R, S + 1), None, (1, 2), padding, isa, Q=-(-W // 2))
    dx = np.empty((N, C, H, W), dtype=dy.dtype)
    _unpair(y2, dx)
    return dx


@pnjit
def _unpair(y2, dx):
    """dx[n, c, h, 2q + e] = y2[n, e*C + c, h, q] (the last odd column dropped when W is odd)."""
    N, C, H, W = dx.shape
    Q2 = y2.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            for q in range(W // 2):
                dx[n, c, h, 2 * q] = y2[n, c, h, q]
                dx[n, c, h, 2 * q + 1] = y2[n, C + c, h, q]
            if W % 2:
                dx[n, c, h, W - 1] = y2[n, c, h, Q2 - 1]


def real_macs(x_shape, w_shape, stride, padding):
    """Multiply-adds of a forward pass that touch real pixels (not the border), per the window
    ranges of :func:`window_classes`: the work "direct" does, and the count against which a
    convolution's speed is compared with the FMA peak."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    P, Q = _out_size(H, W, R, S, stride, padding)
    rows = window_classes(P, H, R, stride[0], padding[0])
    cols = window_classes(Q, W, S, stride[1], padding[1])
    taps_r = int(sum((o1 - o0) * max(0, t1 - t0) for o0, o1, t0, t1 in rows))
    taps_s = int(sum((o1 - o0) * max(0, t1 - t0) for o0, o1, t0, t1 in cols))
    return N * K * C * taps_r * taps_s


def workspace_bytes(x_shape, w_shape, stride, padding, itemsize=4, threads=None,
                    backward=False, isa=None, input_grad=True):
    """(total, lowering) scratch bytes of one pass; "direct" lowers nothing. ``input_grad``
    False: a backward pass without the data gradient."""
    isa = _isa(isa)
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    ph, pw = padding
    P, Q = _out_size(H, W, R, S, stride, padding)
    Hp, Wp = H + 2 * ph, W + 2 * pw
    G = max(1, min(threads or numba.get_num_threads(), N))
    kp = int(_panels(K, isa).sum())
    band, nb = _block(N, G, P, Q, BLOCK, BLOCK)
    px = band * nb * Q
    if not backward:
        return (G * (nb * Hp * Wp * C + SLACK + px * kp) + R * S * C * kp) * itemsize \
            + G * px * 16, 0
    nbw = _block(N, G, P, Q, BAND_PIXELS, WGRAD_PIXELS)[1]
    ldt = int(column_tiles(C, S, isa)[:, 1].max())
    total = (G * (nbw * Hp * Wp * C + SLACK + isa.rows * ldt + K * R * S * C) * itemsize
             + G * K * 8)
    if input_grad and applies(x_shape, w_shape, stride, padding):  # the data gradient
        dyp = (P + 2 * (R - 1 - ph)) * (Q + 2 * (S - 1 - pw)) * K
        cp = int(_panels(C, isa).sum())
        band, nb = _block(N, G, H, W, BLOCK, BLOCK)
        px = band * nb * W
        total += (G * (nb * dyp + SLACK + px * cp) + R * S * K * cp) * itemsize + G * px * 16
    return total, 0
