"""Max and average pooling over NCHW batches, with Caffe's output size and border rules.

Output size (Caffe's ceil mode)::

    P = ceil((H + 2*ph - kh) / sh) + 1;  if ph > 0 and (P - 1)*sh >= H + ph: P -= 1

so the last window always starts inside the image or its left/top padding (3x3 stride-2 pools
take 32 -> 16 -> 8 -> 4). Max pooling only looks at image cells (windows are clipped to the
image). Average pooling divides by the window size clipped to the *padded* image, computed
before clipping to the image, and sums only the image cells, exactly as Caffe does.

Every kernel runs whole (n, c) planes per parallel iteration: planes are independent, a plane
fits in L1, and backward scatters (overlapping windows) never cross planes, so no writes race.
"""

import numba
import numpy as np

from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels.im2col import _check_out, _float_array, _pair


def pool_output_size(size, kernel, stride, pad):
    """Caffe's ceil-mode pooled length (see the module docstring)."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_geometry(x_shape, kernel_size, stride, padding, fn):
    """Validate pooling arguments; returns ((kh, kw), (sh, sw), (ph, pw), (P, Q))."""
    kh, kw = _pair(kernel_size, "kernel_size", fn)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", fn)
    ph, pw = _pair(padding, "padding", fn)
    H, W = x_shape[2], x_shape[3]
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"{fn}: need kernel >= 1 and stride >= 1, got kernel {(kh, kw)}, "
                         f"stride {(sh, sw)} (x {tuple(x_shape)})")
    if not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(f"{fn}: padding {(ph, pw)} must be >= 0 and smaller than the kernel "
                         f"{(kh, kw)} (x {tuple(x_shape)})")
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"{fn}: kernel {(kh, kw)} is larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} (x {tuple(x_shape)}, padding {(ph, pw)})")
    P = pool_output_size(H, kh, sh, ph)
    Q = pool_output_size(W, kw, sw, pw)
    if (P - 1) * sh - ph >= H or (Q - 1) * sw - pw >= W:
        # only with stride > kernel and no padding: Caffe's rule then leaves an empty last window
        raise ValueError(f"{fn}: kernel {(kh, kw)} with stride {(sh, sw)} and padding {(ph, pw)} "
                         f"leaves the last window of x {tuple(x_shape)} outside the input")
    return (kh, kw), (sh, sw), (ph, pw), (P, Q)


def _check_x_shape(x_shape, fn):
    x_shape = tuple(int(d) for d in x_shape)
    if len(x_shape) != 4 or min(x_shape) < 1:
        raise ValueError(f"{fn}: x_shape must be (N, C, H, W) with positive sizes, got {x_shape}")
    return x_shape


# ---------------------------------------------------------------------------------------------
# kernels: x (N, C, H, W), y (N, C, P, Q)


@njit
def _interior(P, H, k, s, pad):
    """The range of outputs p whose window [p*s - pad, p*s - pad + k) lies inside [0, H)."""
    lo = min(P, -((-pad) // s))
    return lo, max(lo, min(P, (H + pad - k) // s + 1))


@njit
def _has_nan(plane):
    """True when the 2-D plane holds a NaN (a branch-free, vectorized reduction)."""
    found = False
    for h in range(plane.shape[0]):
        row = plane[h]
        for w in range(row.shape[0]):
            found |= row[w] != row[w]
    return found


@njit
def _window_max(plane, h0, h1, w0, w1):
    """(max, flat index of its first occurrence) over plane[h0:h1, w0:w1], branch-free."""
    W = plane.shape[1]
    best = plane[h0, w0]
    where = h0 * W + w0
    for h in range(h0, h1):
        for w in range(w0, w1):
            v = plane[h, w]
            gt = v > best
            where = h * W + w if gt else where
            best = v if gt else best
    return best, where


@njit
def _maxpool_plane_windows(plane, rows, cols, sh, sw, ph, pw, o, a):
    """Max pooling of one NaN-free plane, one output at a time (see :func:`separable`);
    ``rows``, ``cols`` = tuple(range(kh)), tuple(range(kw)).

    The window size comes in as the *length* of a tuple, which Numba compiles in as a constant:
    the loops over an interior window (one that lies inside the image) are unrolled, and the
    running maximum and its index are updated by selects, not branches. With the window size a
    runtime value the loops ran 3-4x slower (measured: loop overhead and mispredicted branches
    on random data). Windows on the border take the generic loop. Cells are visited in
    row-major order and taken only when strictly greater, so the first occurrence of the maximum
    wins ties, as in Caffe.
    """
    H, W = plane.shape
    P, Q = o.shape
    kh, kw = len(rows), len(cols)
    pa, pb = _interior(P, H, kh, sh, ph)
    qa, qb = _interior(Q, W, kw, sw, pw)
    for p in range(P):
        h0 = max(p * sh - ph, 0)
        h1 = min(p * sh - ph + kh, H)
        inside = pa <= p < pb
        for q in range(Q):
            if inside and qa <= q < qb:
                w0 = q * sw - pw
                best = plane[h0, w0]
                where = h0 * W + w0
                for dh in range(kh):
                    row = plane[h0 + dh]
                    for dw in range(kw):
                        v = row[w0 + dw]
                        gt = v > best
                        where = (h0 + dh) * W + w0 + dw if gt else where
                        best = v if gt else best
            else:
                best, where = _window_max(plane, h0, h1, max(q * sw - pw, 0),
                                          min(q * sw - pw + kw, W))
            o[p, q] = best
            a[p, q] = where


FAR = float(1 << 30)
"""The flat index of a column outside the image in max pooling's scratch rows: larger than any
cell's, so a cell of the image wins every tie against one (exact in float32)."""


@njit
def _span(W, Q, kw, sw, pw):
    """(V, nw): the V columns that Q windows of width kw at stride sw span from column -pw on
    (the length of the pooling kernels' scratch rows), and nw of them inside the image."""
    V = (Q - 1) * sw + kw
    return V, min(W, V - pw)


@njit
def _maxpool_plane(plane, rows, cols, sh, sw, ph, pw, o, a, cm, ci, hm, hi):
    """Max pooling of one plane, or True when a cell that a window covers is NaN (then o and a
    are to be redone by :func:`_maxpool_plane_nan`); ``rows``, ``cols`` = tuple(range(kh)),
    tuple(range(kw)). Scratch rows of V = (Q-1)*sw + kw values, the columns that the windows
    span from column -pw on: cm, hm of x's dtype, ci, hi of the flat indices' (float32 when H*W <
    2**24, so that every index is exact, else float64); cm and ci hold -inf and :data:`FAR`
    outside the image (:func:`_maxpool_fwd_kernel` writes them).

    One output row at a time, in passes along contiguous rows that the compiler vectorizes:
    down the window's rows that lie in the image, every column's maximum and the flat index
    h*W + w of its topmost occurrence (cm, ci); then across, for every column u where a window
    may start, the maximum of cm[u .. u + kw), a tie going to the smaller flat index (hm, hi);
    then the windows' starts, every sw-th, are picked out. The first occurrence of the maximum
    in row-major order, Caffe's choice, is the one with the smallest flat index, whatever order
    the passes take; cells outside the image are never taken (-inf loses to or ties with any
    cell, and a tie goes to the cell). The index rides in a float lane beside the value, so both
    follow the same comparison. The window size comes in as the *length* of a tuple, which Numba
    compiles in as a constant (the loops over a window unroll). Every loop runs from 0 over
    views, so that the compiler sees no negative index. (Before: one output at a time over its
    window, and clipped windows on a generic loop, which took half the time of cifar10_quick's
    first pool, 3x3 stride 2 on 32x32, on one core of an Intel Xeon.)
    """
    H, W = plane.shape
    P, Q = o.shape
    kh, kw = len(rows), len(cols)
    nw = _span(W, Q, kw, sw, pw)[1]
    cmv, civ = cm[pw:pw + nw], ci[pw:pw + nw]  # the image's columns among them
    ns = hm.shape[0]  # one past the last window start
    nan = False
    for p in range(P):
        h0 = p * sh - ph
        ha, hb = max(h0, 0), min(h0 + kh, H)
        base = ha * W
        for w in range(nw):
            v = plane[ha, w]
            nan |= v != v
            cmv[w] = v
            civ[w] = base + w
        for h in range(ha + 1, hb):
            base = h * W
            for w in range(nw):
                v = plane[h, w]
                nan |= v != v
                gt = v > cmv[w]
                civ[w] = base + w if gt else civ[w]
                cmv[w] = v if gt else cmv[w]
        for u in range(ns):
            best = cm[u]
            where = ci[u]
            for dw in range(1, kw):
                v = cm[u + dw]
                i = ci[u + dw]
                take = (v > best) | ((v == best) & (i < where))
                where = i if take else where
                best = v if take else best
            hm[u] = best
            hi[u] = where
        for q in range(Q):
            o[p, q] = hm[q * sw]
            a[p, q] = int(hi[q * sw])
    return nan


@njit
def _maxpool_plane_nan(plane, kh, kw, sh, sw, ph, pw, o, a):
    """Max pooling of a plane that holds a NaN: a NaN wins its window, so NaNs propagate."""
    H, W = plane.shape
    P, Q = o.shape
    for p in range(P):
        h0 = max(p * sh - ph, 0)
        h1 = min(p * sh - ph + kh, H)
        for q in range(Q):
            w0 = max(q * sw - pw, 0)
            w1 = min(q * sw - pw + kw, W)
            best = plane[h0, w0]
            where = h0 * W + w0
            if best == best:
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = plane[h, w]
                        if v > best or v != v:
                            best = v
                            where = h * W + w
                            if v != v:
                                break
                    if best != best:
                        break
            o[p, q] = best
            a[p, q] = where


@pnjit
def _maxpool_fwd_kernel(x, rows, cols, sh, sw, ph, pw, y, argmax, groups, index, sep):
    """y = window max, argmax = flat index h*W + w of its first occurrence (row-major, as Caffe).

    ``rows``, ``cols`` = tuple(range(kh)), tuple(range(kw)) (see :func:`_maxpool_plane`). The
    planes are dealt out in ``groups`` contiguous ranges, each with its scratch rows (of
    ``index``'s dtype for the flat indices). With ``sep`` (see :func:`separable`) every plane
    takes the branch-free :func:`_maxpool_plane`, which also finds whether a window covers a
    NaN; else it is scanned for NaN, then taken by :func:`_maxpool_plane_windows`. A plane with
    a NaN (rare) is then done by the loop in which a NaN wins its window, so NaNs propagate
    instead of being dropped.
    """
    N, C, H, W = x.shape
    NC, Q = N * C, y.shape[3]
    V = _span(W, Q, len(cols), sw, pw)[0]
    for g in prange(groups):
        cm = np.full(V, -np.inf, dtype=x.dtype)
        ci = np.full(V, FAR, dtype=index.dtype)
        hm = np.empty((Q - 1) * sw + 1, dtype=x.dtype)  # one per column where a window may start
        hi = np.empty((Q - 1) * sw + 1, dtype=index.dtype)
        for nc in range(g * NC // groups, (g + 1) * NC // groups):
            n = nc // C
            c = nc % C
            plane = x[n, c]
            if sep:
                nan = _maxpool_plane(plane, rows, cols, sh, sw, ph, pw, y[n, c], argmax[n, c],
                                     cm, ci, hm, hi)
            else:
                nan = _has_nan(plane)
                if not nan:
                    _maxpool_plane_windows(plane, rows, cols, sh, sw, ph, pw, y[n, c],
                                           argmax[n, c])
            if nan:
                _maxpool_plane_nan(plane, len(rows), len(cols), sh, sw, ph, pw, y[n, c],
                                   argmax[n, c])


@pnjit
def _maxpool_bwd_kernel(dy, argmax, dx):
    """dx[nc, argmax[nc, i]] += dy[nc, i]; dy, argmax (N*C, P*Q), dx (N*C, H*W). Returns the
    number of indices outside [0, H*W), which are skipped (checked here, in the pass that reads
    them, rather than by two reductions over argmax beforehand: those took a quarter of a
    cifar10_quick first pool's backward at two threads)."""
    NC, PQ = dy.shape
    HW = dx.shape[1]
    bad = 0
    for nc in prange(NC):
        d = dx[nc]
        for i in range(HW):
            d[i] = 0
        g = dy[nc]
        idx = argmax[nc]
        for i in range(PQ):
            j = idx[i]
            if 0 <= j < HW:
                d[j] += g[i]
            else:
                bad += 1
    return bad


@njit
def _avg_divisors(P, kh, sh, ph, H):
    """1 / (window length clipped to the padded image), per output position (Caffe's divisor)."""
    inv = np.empty(P, dtype=np.float64)
    for p in range(P):
        start = p * sh - ph
        inv[p] = 1.0 / (min(start + kh, H + ph) - start)
    return inv


@njit
def _avg_geometry(H, W, P, Q, kh, kw, sh, sw, ph, pw):
    """(1/row divisors, 1/column divisors, V, nw) of average pooling (V, nw: :func:`_span`)."""
    V, nw = _span(W, Q, kw, sw, pw)
    return _avg_divisors(P, kh, sh, ph, H), _avg_divisors(Q, kw, sw, pw, W), V, nw


@pnjit
def _avgpool_fwd_kernel(x, kh, cols, sh, sw, ph, pw, y, groups):
    """y = sum over the window clipped to the image / window size clipped to the padded image.

    Separable, one output row at a time: the window's image rows summed down every column (a
    loop along the row, which the compiler vectorizes) into a scratch row that holds zeros
    where a window hangs over the image's left or right edge; then each window's ``kw`` columns
    of it summed (``cols`` = tuple(range(kw)): a compile-time constant, the sum unrolls). The
    divisor is a product of a row and a column factor; sums in float64. The planes are dealt
    out in ``groups`` contiguous ranges, each with its scratch row. (Before: a pass over every
    image row with a branch per output, then down the columns.)
    """
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    NC = N * C
    inv_h, inv_w, V, nw = _avg_geometry(H, W, P, Q, kh, len(cols), sh, sw, ph, pw)
    for g in prange(groups):
        zr = np.zeros(V, dtype=np.float64)
        zv = zr[pw:pw + nw]
        for nc in range(g * NC // groups, (g + 1) * NC // groups):
            plane = x[nc // C, nc % C]
            out = y[nc // C, nc % C]
            for p in range(P):
                h0 = p * sh - ph
                ha, hb = max(h0, 0), min(h0 + kh, H)
                for w in range(nw):
                    zv[w] = plane[ha, w]
                for h in range(ha + 1, hb):
                    for w in range(nw):
                        zv[w] += plane[h, w]
                f = inv_h[p]
                for q in range(Q):
                    acc = 0.0
                    for dw in range(len(cols)):
                        acc += zr[q * sw + dw]
                    out[p, q] = acc * (f * inv_w[q])


@pnjit
def _avgpool_bwd_kernel(dy, kh, cols, sh, sw, ph, pw, dx, groups):
    """Spread dy[p, q] / pool_size over its window (clipped to the image); dx is overwritten.

    The transpose of the forward, one output row at a time: the row's scaled gradients spread
    over the ``kw`` columns of each window in a scratch row (which also spans the columns a
    window hangs over the edge, dropped), then that row added down the window's image rows (a
    loop along the row, vectorized).
    """
    N, C, H, W = dx.shape
    P, Q = dy.shape[2], dy.shape[3]
    NC = N * C
    kw = len(cols)
    inv_h, inv_w, V, nw = _avg_geometry(H, W, P, Q, kh, kw, sh, sw, ph, pw)
    for g in prange(groups):
        zr = np.empty(V, dtype=np.float64)
        zv = zr[pw:pw + nw]
        for nc in range(g * NC // groups, (g + 1) * NC // groups):
            gp = dy[nc // C, nc % C]
            d = dx[nc // C, nc % C]
            for h in range(H):
                for w in range(W):
                    d[h, w] = 0
            for p in range(P):
                zr[:] = 0.0
                f = inv_h[p]
                for q in range(Q):
                    v = gp[p, q] * (f * inv_w[q])
                    for dw in range(kw):
                        zr[q * sw + dw] += v
                h0 = p * sh - ph
                for h in range(max(h0, 0), min(h0 + kh, H)):
                    for w in range(nw):
                        d[h, w] += zv[w]


# ---------------------------------------------------------------------------------------------
# public wrappers


def _groups(x_shape):
    """Contiguous ranges of (n, c) planes that the kernels deal out to the threads, each range
    with its scratch rows allocated once."""
    return max(1, min(x_shape[0] * x_shape[1], 4 * numba.get_num_threads()))


SEPARABLE_MIN_WIDTH = 16


def separable(W, kh, kw, sh, sw):
    """Whether max pooling takes :func:`_maxpool_plane`'s passes along rows (True) or
    :func:`_maxpool_plane_windows`, one output at a time: the passes share the cells of
    overlapping windows (kh > sh or kw > sw) and pay on rows of :data:`SEPARABLE_MIN_WIDTH`
    columns or more. Measured on one core of an Intel Xeon (AVX-512), batches of cifar10_quick
    and GoogLeNet shapes, passes against one output at a time: 3x3 stride 2 on 32x32 planes
    1.39x, on 56x56 1.65x, on 16x16 1.05x, on 8x8 0.74x; 3x3 stride 1 on 14x14 1.02x; LeNet's 2x2
    stride 2 on 28x28, whose windows do not overlap, 0.77x."""
    return W >= SEPARABLE_MIN_WIDTH and (kh > sh or kw > sw)


def maxpool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling.

    Parameters
    ----------
    x : float32 array of shape (N, C, H, W)
    kernel_size, padding : int or (h, w) pair; padding < kernel_size
    stride : int, (h, w) pair, or None for ``kernel_size``

    Returns
    -------
    y : (N, C, P, Q) window maxima (Caffe's ceil-mode P, Q)
    argmax : int32 (N, C, P, Q), flat index h*W + w of each maximum within its (n, c) plane
    """
    fn = "maxpool2d_forward"
    x = _float_array(x, "x", fn, ndim=4)
    (kh, kw), (sh, sw), (ph, pw), (P, Q) = _pool_geometry(x.shape, kernel_size, stride,
                                                          padding, fn)
    N, C = x.shape[:2]
    y = np.empty((N, C, P, Q), dtype=x.dtype)
    argmax = np.empty((N, C, P, Q), dtype=np.int32)
    groups = _groups(x.shape)
    sep = separable(x.shape[3], kh, kw, sh, sw)
    index = np.empty(0, dtype=np.float32 if x.shape[2] * x.shape[3] < 1 << 24 else np.float64)
    _maxpool_fwd_kernel(x, tuple(range(kh)), tuple(range(kw)), sh, sw, ph, pw, y, argmax, groups,
                        index, sep)
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape):
    """Gradient of :func:`maxpool2d_forward`: each dy goes to its argmax cell (summed on overlap).

    Parameters
    ----------
    dy : float32 array of shape (N, C, P, Q)
    argmax : int32 or int64 array of shape (N, C, P, Q) from the forward pass
    x_shape : (N, C, H, W) of the forward input

    Returns
    -------
    dx : (N, C, H, W)
    """
    fn = "maxpool2d_backward"
    dy = _float_array(dy, "dy", fn, ndim=4)
    x_shape = _check_x_shape(x_shape, fn)
    if not isinstance(argmax, np.ndarray) or argmax.dtype not in (np.int32, np.int64):
        raise ValueError(f"{fn}: argmax must be an int32 or int64 array, got "
                         f"{getattr(argmax, 'dtype', type(argmax).__name__)}")
    if argmax.shape != dy.shape or dy.shape[:2] != x_shape[:2]:
        raise ValueError(f"{fn}: dy {dy.shape} and argmax {argmax.shape} must have the same "
                         f"shape, with (N, C) of x_shape {x_shape}")
    N, C, H, W = x_shape
    argmax = np.ascontiguousarray(argmax)
    dx = np.empty(x_shape, dtype=dy.dtype)
    P, Q = dy.shape[2:]
    if _maxpool_bwd_kernel(dy.reshape(N * C, P * Q), argmax.reshape(N * C, P * Q),
                           dx.reshape(N * C, H * W)):
        raise ValueError(f"{fn}: argmax holds indices outside [0, {H * W}) for x_shape {x_shape}")
    return dx


def avgpool2d_forward(x, kernel_size, stride=None, padding=0, out=None):
    """Average pooling (Caffe's divisor: window size clipped to the padded image).

    Parameters
    ----------
    x : float32 array of shape (N, C, H, W)
    kernel_size, padding : int or (h, w) pair; padding < kernel_size
    stride : int, (h, w) pair, or None for ``kernel_size``
    out : optional (N, C, P, Q) array to write into

    Returns
    -------
    y : (N, C, P, Q)
    """
    fn = "avgpool2d_forward"
    x = _float_array(x, "x", fn, ndim=4)
    (kh, kw), (sh, sw), (ph, pw), (P, Q) = _pool_geometry(x.shape, kernel_size, stride,
                                                          padding, fn)
    y = _check_out(out, x.shape[:2] + (P, Q), x.dtype, fn)
    _avgpool_fwd_kernel(x, kh, tuple(range(kw)), sh, sw, ph, pw, y, _groups(x.shape))
    return y


def avgpool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0):
    """Gradient of :func:`avgpool2d_forward`.

    Parameters
    ----------
    dy : float32 array of shape (N, C, P, Q)
    x_shape : (N, C, H, W) of the forward input
    kernel_size, stride, padding : as given to :func:`avgpool2d_forward`

    Returns
    -------
    dx : (N, C, H, W)
    """
    fn = "avgpool2d_backward"
    dy = _float_array(dy, "dy", fn, ndim=4)
    x_shape = _check_x_shape(x_shape, fn)
    (kh, kw), (sh, sw), (ph, pw), (P, Q) = _pool_geometry(x_shape, kernel_size, stride,
                                                          padding, fn)
    if dy.shape != x_shape[:2] + (P, Q):
        raise ValueError(f"{fn}: dy has shape {dy.shape} but x_shape {x_shape} pools to "
                         f"{x_shape[:2] + (P, Q)}")
    dx = np.empty(x_shape, dtype=dy.dtype)
    _avgpool_bwd_kernel(dy, kh, tuple(range(kw)), sh, sw, ph, pw, dx, _groups(x_shape))
    return dx
