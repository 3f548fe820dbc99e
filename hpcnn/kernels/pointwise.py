"""Pointwise and per-channel kernels: ReLU, bias add/sum, softmax cross-entropy.

ReLU and bias are memory-bound: each kernel makes one pass over its arrays, split into
independent pieces (blocks of a flat array, or (n, c) planes) so the threads never share an
output cell. Sums run in float64 lanes that vectorize (see :func:`_bias_bwd_kernel`).
"""

import numpy as np

from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels.im2col import _check_out, _float_array

_BLOCK = 16384  # elements per parallel piece of a flat array (64 KiB of float32: L2-resident)


# ---------------------------------------------------------------------------------------------
# ReLU


@pnjit
def _relu_fwd_kernel(x, y):
    """y = max(x, 0) on flat arrays; NaN stays NaN (``0 if v < 0 else v``)."""
    n = x.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        xs = x[lo:hi]
        ys = y[lo:hi]
        for i in range(hi - lo):
            v = xs[i]
            ys[i] = 0 if v < 0 else v


@pnjit
def _relu_bwd_kernel(dy, y, dx):
    """dx = dy where y > 0, else 0, on flat arrays."""
    n = dy.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        gs = dy[lo:hi]
        ys = y[lo:hi]
        ds = dx[lo:hi]
        for i in range(hi - lo):
            ds[i] = gs[i] if ys[i] > 0 else 0


def relu_forward(x, out=None):
    """y = max(x, 0) for a float32 array of any shape (``out`` may be ``x`` for in place)."""
    fn = "relu_forward"
    x = _float_array(x, "x", fn)
    y = _check_out(out, x.shape, x.dtype, fn)
    _relu_fwd_kernel(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y, out=None):
    """dx = dy * (y > 0), where y is the forward output (same shape and dtype as dy)."""
    fn = "relu_backward"
    dy = _float_array(dy, "dy", fn)
    y = _float_array(y, "y", fn, dtype=dy.dtype)
    if y.shape != dy.shape:
        raise ValueError(f"{fn}: dy has shape {dy.shape} but y has shape {y.shape}")
    dx = _check_out(out, dy.shape, dy.dtype, fn)
    _relu_bwd_kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


# ---------------------------------------------------------------------------------------------
# per-channel bias


@pnjit
def _bias_fwd_kernel(x, b, y):
    """y[n, c, :] = x[n, c, :] + b[c]; x, y (N, C, L), one (n, c) row per parallel iteration."""
    N, C, L = x.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc % C
        bc = b[c]
        xs = x[n, c]
        ys = y[n, c]
        for i in range(L):
            ys[i] = xs[i] + bc


@pnjit
def _bias_bwd_kernel(dy, db):
    """db[c] = sum of dy[:, c, :]; dy (N, C, L), one channel per parallel iteration.

    Accumulates in L float64 lanes (elementwise, so it vectorizes) and sums the lanes last.
    """
    N, C, L = dy.shape
    for c in prange(C):
        lanes = np.zeros(L, dtype=np.float64)
        for n in range(N):
            g = dy[n, c]
            for i in range(L):
                lanes[i] += g[i]
        db[c] = lanes.sum()


def _as_ncl(a):
    """View (N, C, ...) as (N, C, L)."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def bias_forward(x, b, out=None):
    """Add a per-channel bias: x (N, C, H, W) or (N, C) (any ndim >= 2, channels on axis 1),
    b (C,). ``out`` may be ``x`` for in place."""
    fn = "bias_forward"
    x = _float_array(x, "x", fn)
    b = _float_array(b, "b", fn, ndim=1, dtype=x.dtype)
    if x.ndim < 2 or x.shape[1] != b.shape[0]:
        raise ValueError(f"{fn}: x {x.shape} must be (N, C, ...) with C = len(b) (b {b.shape})")
    y = _check_out(out, x.shape, x.dtype, fn)
    _bias_fwd_kernel(_as_ncl(x), b, _as_ncl(y))
    return y


def bias_backward(dy):
    """Gradient of :func:`bias_forward` w.r.t. b: dy summed over every axis but 1 -> (C,)."""
    fn = "bias_backward"
    dy = _float_array(dy, "dy", fn)
    if dy.ndim < 2:
        raise ValueError(f"{fn}: dy must be (N, C, ...), got shape {dy.shape}")
    db = np.empty(dy.shape[1], dtype=dy.dtype)
    _bias_bwd_kernel(_as_ncl(dy), db)
    return db


# ---------------------------------------------------------------------------------------------
# softmax cross-entropy


@njit
def _softmax_ce_kernel(z, labels, dz):
    """Mean -log softmax(z)[label] over rows and dz = (softmax - onehot) / N.

    z, dz (N, M), labels (N,). Serial: N*M is tiny next to the convolutions. Shifted by the row
    max and accumulated in float64, so huge logits stay finite.
    """
    N, M = z.shape
    total = 0.0
    for i in range(N):
        row = z[i]
        g = dz[i]
        m = row[0]
        for j in range(1, M):
            m = max(m, row[j])
        s = 0.0
        for j in range(M):
            s += np.exp(np.float64(row[j]) - m)
        t = labels[i]
        total += np.log(s) - (np.float64(row[t]) - m)
        scale = 1.0 / (s * N)
        for j in range(M):
            g[j] = np.exp(np.float64(row[j]) - m) * scale
        g[t] -= 1.0 / N
    return total / N


def softmax_cross_entropy(logits, labels):
    """Softmax cross-entropy loss and its gradient.

    Parameters
    ----------
    logits : float32 array of shape (N, M)
    labels : integer array of shape (N,), values in [0, M)

    Returns
    -------
    loss : float, mean over N of -log softmax(logits)[n, labels[n]]
    dlogits : float32 (N, M), (softmax - onehot(labels)) / N
    """
    fn = "softmax_cross_entropy"
    logits = _float_array(logits, "logits", fn, ndim=2)
    N, M = logits.shape
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (N,):
        raise ValueError(f"{fn}: labels must be an integer array of shape ({N},), got "
                         f"{labels.dtype} {labels.shape} (logits {logits.shape})")
    if N == 0 or M == 0:
        raise ValueError(f"{fn}: empty logits {logits.shape}")
    if labels.min() < 0 or labels.max() >= M:
        raise ValueError(f"{fn}: labels must lie in [0, {M}) for logits {logits.shape}, got "
                         f"min {labels.min()} max {labels.max()}")
    dlogits = np.empty_like(logits)
    loss = _softmax_ce_kernel(logits, np.ascontiguousarray(labels, dtype=np.int64), dlogits)
    return float(loss), dlogits
