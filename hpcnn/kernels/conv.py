"""2-D convolution (cross-correlation, as in Caffe/PyTorch) on NCHW float32 batches.

The public wrappers validate, then hand over to a strategy from :data:`ALGOS`. Each strategy is
a pair ``(forward, backward)`` with the signatures

    forward(x, w, b, stride, padding) -> y               # b: (K,) array or None
    backward(dy, x, w, stride, padding) -> (dx, dw, db)

where every array is already checked (C-contiguous, one float dtype, matching shapes) and
``stride`` / ``padding`` are (h, w) int pairs. Add a strategy by adding it to :data:`ALGOS`;
``"auto"`` is resolved by :func:`resolve_algo`.

"lowering" is the conventional lowering of Sakiyama et al.: the whole batch is lowered by
:func:`~hpcnn.kernels.im2col.im2col` into one column matrix and multiplied by the weights in ONE
BLAS GEMM. Backward recomputes the columns (no batch-sized buffer survives a call), gets
dW = dY @ col.T, then reuses the column buffer for dcol = W.T @ dY and folds it back with col2im.
"""

import numpy as np

from hpcnn.kernels._jit import pnjit, prange
from hpcnn.kernels.im2col import _col2im_kernel, _conv_geometry, _float_array, _lower

# ---------------------------------------------------------------------------------------------
# layout kernels: the GEMM works on (K, N*P*Q) matrices, the network on (N, K, P, Q) tensors


@pnjit
def _unfold_output(ymat, b, y):
    """y[n, k] = ymat[k, n*PQ:(n+1)*PQ] + b[k]; ymat (K, N*PQ), b (K,), y (N, K, PQ)."""
    N, K, PQ = y.shape
    for nk in prange(N * K):
        n = nk // K
        k = nk % K
        bk = b[k]
        src = ymat[k, n * PQ:(n + 1) * PQ]
        dst = y[n, k]
        for i in range(PQ):
            dst[i] = src[i] + bk


@pnjit
def _fold_grad_output(dy, dymat, db):
    """dymat[k, n*PQ + i] = dy[n, k, i] and db[k] = sum of dy[:, k]; dy (N, K, PQ).

    One output channel per parallel iteration, so each thread owns its db cells. The sum runs in
    float64 lanes, one per position i (vectorizes; a single scalar accumulator would not).
    """
    N, K, PQ = dy.shape
    for k in prange(K):
        lanes = np.zeros(PQ, dtype=np.float64)
        for n in range(N):
            src = dy[n, k]
            dst = dymat[k, n * PQ:(n + 1) * PQ]
            for i in range(PQ):
                v = src[i]
                dst[i] = v
                lanes[i] += v
        db[k] = lanes.sum()


# ---------------------------------------------------------------------------------------------
# strategy "lowering": whole batch lowered, one GEMM


def _lowering_forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P = (H + 2 * ph - R) // sh + 1
    Q = (W + 2 * pw - S) // sw + 1
    col = np.empty((C * R * S, N * P * Q), dtype=x.dtype)
    _lower(x, R, S, sh, sw, ph, pw, P, Q, col)
    ymat = np.dot(w.reshape(K, C * R * S), col)  # (K, N*P*Q): the one GEMM
    del col
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    _unfold_output(ymat, bias, y.reshape(N, K, P * Q))
    return y


def _lowering_backward(dy, x, w, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = dy.shape[2], dy.shape[3]
    dymat = np.empty((K, N * P * Q), dtype=x.dtype)
    db = np.empty(K, dtype=x.dtype)
    _fold_grad_output(dy.reshape(N, K, P * Q), dymat, db)
    col = np.empty((C * R * S, N * P * Q), dtype=x.dtype)
    _lower(x, R, S, sh, sw, ph, pw, P, Q, col)
    dw = np.dot(dymat, col.T).reshape(w.shape)  # (K, C*R*S)
    np.dot(w.reshape(K, C * R * S).T, dymat, out=col)  # dcol overwrites the columns
    dx = np.empty_like(x)
    _col2im_kernel(col, R, S, sh, sw, ph, pw, P, Q, dx)
    return dx, dw, db


ALGOS = {
    "lowering": (_lowering_forward, _lowering_backward),
}
"""Convolution strategies: name -> (forward, backward); see the module docstring."""


def resolve_algo(algo, x_shape, w_shape, stride, padding, fn):
    """The strategy name to run for ``algo`` ("auto" picks one; unknown names raise)."""
    if algo == "auto":
        return "lowering"
    if algo not in ALGOS:
        valid = ", ".join(repr(a) for a in ["auto", *ALGOS])
        raise ValueError(f"{fn}: unknown algo {algo!r} (x {tuple(x_shape)}, w {tuple(w_shape)}); "
                         f"valid: {valid}")
    return algo


def _check_conv(x, w, stride, padding, fn):
    """Validate x (N, C, H, W) and w (K, C, R, S); returns (x, w, stride pair, padding pair)."""
    x = _float_array(x, "x", fn, ndim=4)
    w = _float_array(w, "w", fn, ndim=4, dtype=x.dtype)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: x has {x.shape[1]} channels but w expects {w.shape[1]} "
                         f"(x {x.shape}, w {w.shape})")
    if min(x.shape) < 1 or min(w.shape) < 1:
        raise ValueError(f"{fn}: empty operand (x {x.shape}, w {w.shape})")
    _, stride, padding, _ = _conv_geometry(x.shape, w.shape[2:], stride, padding, fn)
    return x, w, stride, padding


def conv2d_forward(x, w, b=None, stride=1, padding=0, algo="auto"):
    """Convolve a batch: y[n, k] = sum_c x[n, c] (*) w[k, c] + b[k].

    Parameters
    ----------
    x : float32 array of shape (N, C, H, W)
    w : float32 array of shape (K, C, R, S)
    b : float32 array of shape (K,), or None
    stride, padding : int or (h, w) pair
    algo : "auto" or a name in :data:`ALGOS`

    Returns
    -------
    y : float32 array of shape (N, K, P, Q), P = (H + 2*ph - R)//sh + 1, Q likewise.
    """
    fn = "conv2d_forward"
    x, w, stride, padding = _check_conv(x, w, stride, padding, fn)
    if b is not None:
        b = _float_array(b, "b", fn, ndim=1, dtype=x.dtype)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{fn}: b has shape {b.shape} but w has {w.shape[0]} output "
                             f"channels (w {w.shape})")
    forward, _ = ALGOS[resolve_algo(algo, x.shape, w.shape, stride, padding, fn)]
    return forward(x, w, b, stride, padding)


def conv2d_backward(dy, x, w, stride=1, padding=0, algo="auto"):
    """Gradients of :func:`conv2d_forward` with respect to x, w and b.

    Parameters
    ----------
    dy : float32 array of shape (N, K, P, Q), gradient of the loss w.r.t. y
    x, w, stride, padding, algo : as given to :func:`conv2d_forward`

    Returns
    -------
    dx : (N, C, H, W), dw : (K, C, R, S), db : (K,) (dy summed over N, P, Q)
    """
    fn = "conv2d_backward"
    x, w, stride, padding = _check_conv(x, w, stride, padding, fn)
    dy = _float_array(dy, "dy", fn, ndim=4, dtype=x.dtype)
    (R, S), (sh, sw), (ph, pw) = w.shape[2:], stride, padding
    expect = (x.shape[0], w.shape[0],
              (x.shape[2] + 2 * ph - R) // sh + 1, (x.shape[3] + 2 * pw - S) // sw + 1)
    if dy.shape != expect:
        raise ValueError(f"{fn}: dy has shape {dy.shape} but x {x.shape} and w {w.shape} give "
                         f"y of shape {expect}")
    _, backward = ALGOS[resolve_algo(algo, x.shape, w.shape, stride, padding, fn)]
    return backward(dy, x, w, stride, padding)
