"""im2col / col2im: lower NCHW images into a column matrix and back.

Column layout (Caffe's, extended over the batch)::

    col[c*R*S + r*S + s, n*P*Q + p*Q + q] = x_padded[n, c, p*sh + r, q*sw + s]

so ``w.reshape(K, C*R*S) @ col`` is the whole batch's convolution as one GEMM.

Why the loops look the way they do: the column matrix is far bigger than the image (R*S times
for stride 1), so lowering is bound by the stores into it. :func:`_im2col_kernel` gives each
thread whole rows of ``col`` and fills every row front to back (n, then p, then q), so all stores
are contiguous; the input is first copied into a zero-bordered buffer (R*S times smaller than
``col``), so no element is tested for padding and a stride-1 row segment is a straight copy.
:func:`_col2im_kernel` gives each thread whole (n, c) image planes, which stay in L1 while the
R*S overlapping taps are summed into them, so no two threads ever write the same cell.

This module also holds the small argument helpers every kernel wrapper shares.
"""

import numpy as np

from hpcnn.kernels._jit import pnjit, prange

FLOAT_DTYPES = (np.float32, np.float64)

# ---------------------------------------------------------------------------------------------
# argument helpers shared by the public wrappers (validation lives here, never in the kernels)


def _pair(v, what, fn):
    """An int or an (h, w) pair -> (int, int); raises ValueError naming ``fn`` and ``what``."""
    if np.ndim(v) == 0:
        v = (v, v)
    try:
        a, b = v
        if int(a) != a or int(b) != b:
            raise TypeError
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {what} must be an int or a pair of ints, got {v!r}") from None


def _float_array(a, name, fn, ndim=None, dtype=None):
    """Check that ``a`` is a float32/float64 array (of ``ndim`` dims, of ``dtype`` if given).

    Returns it C-contiguous (a copy only when it was not).
    """
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: {name} has dtype {a.dtype} (shape {a.shape}); "
                         "expected float32 (or float64)")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{fn}: {name} has dtype {a.dtype} (shape {a.shape}) but the other "
                         f"operands are {np.dtype(dtype)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-dimensional, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_out(out, shape, dtype, fn):
    """Allocate the result, or check a caller's ``out=`` buffer (C-contiguous, shape, dtype)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if (not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype
            or not out.flags.c_contiguous):
        got = (getattr(out, "shape", None), getattr(out, "dtype", None))
        raise ValueError(f"{fn}: out must be a C-contiguous {np.dtype(dtype)} array of shape "
                         f"{tuple(shape)}, got shape/dtype {got}")
    return out


def conv_output_size(size, kernel, stride, pad):
    """Convolution output length: (size + 2*pad - kernel) // stride + 1."""
    return (size + 2 * pad - kernel) // stride + 1


def _conv_geometry(x_shape, kernel_size, stride, padding, fn):
    """Validate the lowering geometry; returns ((R, S), (sh, sw), (ph, pw), (P, Q))."""
    R, S = _pair(kernel_size, "kernel_size", fn)
    sh, sw = _pair(stride, "stride", fn)
    ph, pw = _pair(padding, "padding", fn)
    H, W = x_shape[2], x_shape[3]
    if R < 1 or S < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"{fn}: need kernel >= 1, stride >= 1, padding >= 0; got kernel "
                         f"{(R, S)}, stride {(sh, sw)}, padding {(ph, pw)} (x {tuple(x_shape)})")
    if R > H + 2 * ph or S > W + 2 * pw:
        raise ValueError(f"{fn}: kernel {(R, S)} is larger than the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} (x {tuple(x_shape)}, padding {(ph, pw)})")
    P = conv_output_size(H, R, sh, ph)
    Q = conv_output_size(W, S, sw, pw)
    return (R, S), (sh, sw), (ph, pw), (P, Q)


# ---------------------------------------------------------------------------------------------
# kernels
#
# Indexing rule in every kernel here: slice a view first, then index it with a loop variable that
# runs from 0 (``seg = row[a:b]; for q in range(n): seg[q] ...``). Numba then knows the index is
# non-negative, drops its negative-index wraparound and LLVM vectorizes the loop; ``row[a + q]``
# would stay scalar (3-4x slower here, measured).


@pnjit
def _pad_kernel(x, ph, pw, xp):
    """Copy x (N, C, H, W) into the middle of xp (N, C, H + 2*ph, W + 2*pw); zero the border."""
    N, C, H, W = x.shape
    Wp = xp.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        dst = xp[n, c]
        for h in range(dst.shape[0]):
            row = dst[h]
            if h < ph or h >= ph + H:
                for i in range(Wp):
                    row[i] = 0
                continue
            src = x[n, c, h - ph]
            for i in range(pw):
                row[i] = 0
            mid = row[pw:pw + W]
            for i in range(W):
                mid[i] = src[i]
            right = row[pw + W:]
            for i in range(right.shape[0]):
                right[i] = 0


@pnjit
def _im2col_kernel(xp, R, S, sh, sw, P, Q, col):
    """Lower xp (N, C, Hp, Wp), already padded, into col (C*R*S, N*P*Q).

    One ``col`` row per parallel iteration, written front to back: every store is contiguous.
    """
    N, C = xp.shape[0], xp.shape[1]
    PQ = P * Q
    for row in prange(C * R * S):
        c = row // (R * S)
        r = (row // S) % R
        s = row % S
        for n in range(N):
            dst = col[row, n * PQ:(n + 1) * PQ]  # (P*Q,) block of image n
            plane = xp[n, c]
            for p in range(P):
                seg = dst[p * Q:(p + 1) * Q]
                if sw == 1:  # a straight copy of a row segment
                    src = plane[p * sh + r, s:s + Q]
                    for q in range(Q):
                        seg[q] = src[q]
                else:
                    src = plane[p * sh + r, s:s + (Q - 1) * sw + 1:sw]
                    for q in range(Q):
                        seg[q] = src[q]


@pnjit
def _col2im_kernel(col, R, S, sh, sw, ph, pw, P, Q, x):
    """Sum col (C*R*S, N*P*Q) back into x (N, C, H, W); one (n, c) plane per parallel iteration.

    Each plane is accumulated in a small padded scratch plane (in L1), so the taps that fall into
    padding need no tests; then its interior is copied out.
    """
    N, C, H, W = x.shape
    PQ = P * Q
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        acc = np.zeros((H + 2 * ph, W + 2 * pw), dtype=col.dtype)
        for r in range(R):
            for s in range(S):
                src = col[(c * R + r) * S + s, n * PQ:(n + 1) * PQ]  # (P*Q,) block of image n
                for p in range(P):
                    seg = src[p * Q:(p + 1) * Q]
                    if sw == 1:
                        dst = acc[p * sh + r, s:s + Q]
                        for q in range(Q):
                            dst[q] += seg[q]
                    else:
                        dst = acc[p * sh + r, s:s + (Q - 1) * sw + 1:sw]
                        for q in range(Q):
                            dst[q] += seg[q]
        out = x[n, c]
        for h in range(H):
            src_row = acc[ph + h, pw:pw + W]
            dst_row = out[h]
            for i in range(W):
                dst_row[i] = src_row[i]


def _lower(x, R, S, sh, sw, ph, pw, P, Q, col):
    """im2col on checked arguments: pad (when needed) then lower x into col."""
    if ph or pw:
        N, C, H, W = x.shape
        xp = np.empty((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
        _pad_kernel(x, ph, pw, xp)
        x = xp
    _im2col_kernel(x, R, S, sh, sw, P, Q, col)
    return col


# ---------------------------------------------------------------------------------------------
# public wrappers


def im2col(x, kernel_size, stride=1, padding=0, out=None):
    """Lower a batch of images into one column matrix.

    Parameters
    ----------
    x : float32 array of shape (N, C, H, W)
    kernel_size, stride, padding : int or (h, w) pair
    out : optional float32 array of shape (C*R*S, N*P*Q) to write into

    Returns
    -------
    col : array of shape (C*R*S, N*P*Q), ``col[c*R*S + r*S + s, n*P*Q + p*Q + q]``
        ``= x[n, c, p*sh - ph + r, q*sw - pw + s]`` (zero where that index is padding).
    """
    fn = "im2col"
    x = _float_array(x, "x", fn, ndim=4)
    (R, S), (sh, sw), (ph, pw), (P, Q) = _conv_geometry(x.shape, kernel_size, stride, padding, fn)
    N, C = x.shape[:2]
    col = _check_out(out, (C * R * S, N * P * Q), x.dtype, fn)
    return _lower(x, R, S, sh, sw, ph, pw, P, Q, col)


def col2im(col, x_shape, kernel_size, stride=1, padding=0, out=None):
    """Adjoint of :func:`im2col`: scatter columns back to images, summing overlapping taps.

    Parameters
    ----------
    col : float32 array of shape (C*R*S, N*P*Q)
    x_shape : (N, C, H, W) of the image batch
    kernel_size, stride, padding : int or (h, w) pair, as given to :func:`im2col`
    out : optional float32 array of shape ``x_shape`` to write into

    Returns
    -------
    x : array of shape (N, C, H, W)
    """
    fn = "col2im"
    col = _float_array(col, "col", fn, ndim=2)
    x_shape = tuple(int(d) for d in x_shape)
    if len(x_shape) != 4 or min(x_shape) < 1:
        raise ValueError(f"{fn}: x_shape must be (N, C, H, W) with positive sizes, got {x_shape}")
    (R, S), (sh, sw), (ph, pw), (P, Q) = _conv_geometry(x_shape, kernel_size, stride, padding, fn)
    N, C = x_shape[:2]
    if col.shape != (C * R * S, N * P * Q):
        raise ValueError(f"{fn}: col has shape {col.shape} but x_shape {x_shape} with kernel "
                         f"{(R, S)} needs {(C * R * S, N * P * Q)}")
    x = _check_out(out, x_shape, col.dtype, fn)
    _col2im_kernel(col, R, S, sh, sw, ph, pw, P, Q, x)
    return x
