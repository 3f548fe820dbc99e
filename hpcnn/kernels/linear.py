"""Fully connected layer: y = x @ w.T + b. Every product is one BLAS GEMM through numpy."""

import numpy as np

from hpcnn.kernels.im2col import _float_array


def _check_linear(x, w, fn):
    x = _float_array(x, "x", fn, ndim=2)
    w = _float_array(w, "w", fn, ndim=2, dtype=x.dtype)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: x has {x.shape[1]} features but w expects {w.shape[1]} "
                         f"(x {x.shape}, w {w.shape})")
    return x, w


def linear_forward(x, w, b=None):
    """y = x @ w.T + b.

    Parameters
    ----------
    x : float32 array of shape (N, F_in)
    w : float32 array of shape (F_out, F_in)
    b : float32 array of shape (F_out,), or None

    Returns
    -------
    y : float32 array of shape (N, F_out)
    """
    fn = "linear_forward"
    x, w = _check_linear(x, w, fn)
    y = np.dot(x, w.T)
    if b is not None:
        b = _float_array(b, "b", fn, ndim=1, dtype=x.dtype)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"{fn}: b has shape {b.shape} but w has {w.shape[0]} outputs "
                             f"(w {w.shape})")
        y += b
    return y


def linear_backward(dy, x, w, input_grad=True):
    """Gradients of :func:`linear_forward`.

    Parameters
    ----------
    dy : float32 array of shape (N, F_out)
    x, w : as given to :func:`linear_forward`
    input_grad : False skips dx (returned as None)

    Returns
    -------
    dx : (N, F_in) = dy @ w;  dw : (F_out, F_in) = dy.T @ x;  db : (F_out,) = dy summed over N
    """
    fn = "linear_backward"
    x, w = _check_linear(x, w, fn)
    dy = _float_array(dy, "dy", fn, ndim=2, dtype=x.dtype)
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"{fn}: dy has shape {dy.shape} but x {x.shape} and w {w.shape} give "
                         f"y of shape {(x.shape[0], w.shape[0])}")
    dx = np.dot(dy, w) if input_grad else None
    dw = np.dot(dy.T, x)
    db = dy.sum(axis=0, dtype=np.float64).astype(dy.dtype)
    return dx, dw, db
