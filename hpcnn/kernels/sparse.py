"""Kernels of the sparse autoencoder and of FISTA sparse coding, with NumPy reference twins.

These are the hot spots of the two algorithms boiled down to a small op API, as in "Deep Learning
Benchmarks" (Vauhkonen, Vohra, Madaan, Coates): besides the GEMMs (numpy's BLAS, as in
:mod:`hpcnn.kernels.linear`), the sparse autoencoder spends its time in

- :func:`bias_sigmoid`: ``a = sigmoid(z + b)`` (bias and activation in one pass);
- :func:`column_sum`: the per-unit sum over the batch (the mean activation, bias gradients);
- :func:`kl_sparsity`: the KL sparsity penalty and its gradient w.r.t. the mean activation;
- :func:`output_delta`: squared error and the output layer's delta in one pass;
- :func:`hidden_delta`: the hidden layer's delta (back-propagated error + sparsity term) times
  the sigmoid's derivative;

and FISTA in

- :func:`soft_threshold`: the proximal map of ``t * |.|_1``;
- :func:`fista_step`: the gradient step, soft-thresholding and momentum extrapolation in one pass.

Each public wrapper validates its arguments (ValueError naming the shapes) and calls a Numba
kernel that checks nothing. Every op has a plain NumPy twin with the same signature
(``<name>_ref``); :data:`KERNEL_OPS` and :data:`NUMPY_OPS` bundle the two sets, so an algorithm
written against the op API runs on either (``python -m hpcnn.bench ops`` times both).
"""

from types import SimpleNamespace

import numpy as np

from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels.im2col import _check_out, _float_array

_BLOCK = 16384  # elements per parallel piece of a flat array (as in pointwise.py)
_ROWS = 256  # rows per parallel piece of a column sum (fixed: the result does not depend on
#              the thread count)
KL_EPS = 1e-12  # the mean activation is clipped to [eps, 1 - eps] before the logs


# ---------------------------------------------------------------------------------------------
# sigmoid

# float32: exp by Cody-Waite range reduction and Cephes' expf polynomial (within ~1.2e-7 relative of
# the float64 sigmoid), written so that it vectorizes: Numba calls the scalar libm expf (no SVML
# here), and that loop ran 2x slower than NumPy's vectorized exp. The 2^k scale is built from its
# bits in an int32 scratch array viewed as float32.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_P = tuple(np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                     4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_P0, _P1, _P2, _P3, _P4, _P5 = _P
_XLO, _XHI = np.float32(-87.0), np.float32(88.0)  # exp stays a normal float32
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


@njit
def _sigmoid_of_neg32(t, kb, p, y):
    """y = 1 / (1 + exp(t)) for float32 (m,) arrays (t = -x); kb int32 and p float32 (m,)
    scratch."""
    m = t.shape[0]
    for i in range(m):
        v = min(max(t[i], _XLO), _XHI)
        k = np.floor(v * _LOG2E + _HALF)
        r = v - k * _LN2_HI - k * _LN2_LO
        q = _P0
        q = q * r + _P1
        q = q * r + _P2
        q = q * r + _P3
        q = q * r + _P4
        q = q * r + _P5
        p[i] = q * r * r + r + _ONE
        kb[i] = (np.int32(k) + np.int32(127)) << np.int32(23)  # the bits of 2^k
    scale = kb.view(np.float32)
    for i in range(m):
        y[i] = _ONE / (_ONE + p[i] * scale[i])


@pnjit
def _sigmoid32_kernel(x, y):
    """y = sigmoid(x) on flat float32 arrays, in blocks of _BLOCK."""
    n = x.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        m = min(lo + _BLOCK, n) - lo
        t = np.empty(m, np.float32)
        for i in range(m):
            t[i] = -x[lo + i]
        _sigmoid_of_neg32(t, np.empty(m, np.int32), np.empty(m, np.float32), y[lo:lo + m])


@pnjit
def _bias_sigmoid32_kernel(z, b, a):
    """a = sigmoid(z + b) for float32 z, a (N, H): blocks of whole rows, about _BLOCK
    elements each."""
    N, H = z.shape
    rows = max(1, _BLOCK // H)
    for blk in prange((N + rows - 1) // rows):
        lo = blk * rows
        hi = min(lo + rows, N)
        m = (hi - lo) * H
        t = np.empty(m, np.float32)
        for n in range(lo, hi):
            off = (n - lo) * H
            for j in range(H):
                t[off + j] = -(z[n, j] + b[j])
        _sigmoid_of_neg32(t, np.empty(m, np.int32), np.empty(m, np.float32),
                          a[lo:hi].reshape(m))



# Every kernel takes ``one`` (1 in the arrays' dtype) and uses no float literal: a float64
# literal would promote float32 arithmetic to float64 (measured ~20x slower for the sigmoid).


@pnjit
def _sigmoid_kernel(x, y, one):
    n = x.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        for i in range(lo, hi):
            y[i] = one / (one + np.exp(-x[i]))


@pnjit
def _sigmoid_bwd_kernel(dy, y, dx, one):
    n = dy.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        for i in range(lo, hi):
            v = y[i]
            dx[i] = dy[i] * v * (one - v)


def sigmoid(x, out=None):
    """y = 1 / (1 + exp(-x)) for a float array of any shape (``out`` may be ``x``)."""
    fn = "sigmoid"
    x = _float_array(x, "x", fn)
    y = _check_out(out, x.shape, x.dtype, fn)
    if x.dtype == np.float32:
        _sigmoid32_kernel(x.reshape(-1), y.reshape(-1))
    else:
        _sigmoid_kernel(x.reshape(-1), y.reshape(-1), x.dtype.type(1))
    return y


def sigmoid_backward(dy, y, out=None):
    """dx = dy * y * (1 - y), where y is the sigmoid's output (same shape and dtype as dy)."""
    fn = "sigmoid_backward"
    dy = _float_array(dy, "dy", fn)
    y = _float_array(y, "y", fn, dtype=dy.dtype)
    if y.shape != dy.shape:
        raise ValueError(f"{fn}: dy has shape {dy.shape} but y has shape {y.shape}")
    dx = _check_out(out, dy.shape, dy.dtype, fn)
    _sigmoid_bwd_kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), dy.dtype.type(1))
    return dx


# ---------------------------------------------------------------------------------------------
# bias + sigmoid, column sums


@pnjit
def _bias_sigmoid_kernel(z, b, a, one):
    """a[n, j] = sigmoid(z[n, j] + b[j]); z, a (N, H); one row per parallel iteration."""
    N, H = z.shape
    for n in prange(N):
        for j in range(H):
            a[n, j] = one / (one + np.exp(-(z[n, j] + b[j])))


@pnjit
def _column_sum_kernel(a, out):
    """out[j] = sum over n of a[n, j] in float64: fixed blocks of _ROWS rows summed in parallel,
    the block partials merged in order (the same result at any thread count)."""
    N, H = a.shape
    nblk = (N + _ROWS - 1) // _ROWS
    part = np.zeros((max(nblk, 1), H), dtype=np.float64)
    for k in prange(nblk):
        acc = part[k]
        for n in range(k * _ROWS, min((k + 1) * _ROWS, N)):
            row = a[n]
            for j in range(H):
                acc[j] += row[j]
    for j in range(H):
        out[j] = 0.0
    for k in range(nblk):
        for j in range(H):
            out[j] += part[k, j]


def _check_rows(a, name, fn, dtype=None):
    return _float_array(a, name, fn, ndim=2, dtype=dtype)


def _check_vec(b, name, n, fn, dtype=None):
    b = _float_array(b, name, fn, ndim=1, dtype=dtype)
    if b.shape[0] != n:
        raise ValueError(f"{fn}: {name} has shape {b.shape}, expected ({n},)")
    return b


def bias_sigmoid(z, b, out=None):
    """a = sigmoid(z + b), the bias broadcast over rows.

    Parameters
    ----------
    z : float array of shape (N, H)
    b : float array of shape (H,), same dtype
    out : optional (N, H) result buffer (may be ``z``)
    """
    fn = "bias_sigmoid"
    z = _check_rows(z, "z", fn)
    b = _check_vec(b, "b", z.shape[1], fn, dtype=z.dtype)
    a = _check_out(out, z.shape, z.dtype, fn)
    if z.dtype == np.float32:
        _bias_sigmoid32_kernel(z, b, a)
    else:
        _bias_sigmoid_kernel(z, b, a, z.dtype.type(1))
    return a


def column_sum(a):
    """Sum of the rows of ``a`` (N, H): float64 (H,), independent of the thread count."""
    a = _check_rows(a, "a", "column_sum")
    out = np.empty(a.shape[1], dtype=np.float64)
    _column_sum_kernel(a, out)
    return out


# ---------------------------------------------------------------------------------------------
# KL sparsity penalty


@njit
def _kl_kernel(rho_hat, rho, beta, grad):
    total = 0.0
    for j in range(rho_hat.shape[0]):
        r = min(max(rho_hat[j], KL_EPS), 1.0 - KL_EPS)
        total += rho * np.log(rho / r) + (1.0 - rho) * np.log((1.0 - rho) / (1.0 - r))
        grad[j] = beta * (-rho / r + (1.0 - rho) / (1.0 - r))
    return beta * total


def _check_kl(rho_hat, rho, beta, fn):
    rho_hat = np.ascontiguousarray(_float_array(rho_hat, "rho_hat", fn, ndim=1), np.float64)
    if not 0.0 < rho < 1.0:
        raise ValueError(f"{fn}: sparsity target rho must lie in (0, 1), got {rho}")
    if not beta >= 0.0:
        raise ValueError(f"{fn}: sparsity weight beta must be >= 0, got {beta}")
    return rho_hat


def kl_sparsity(rho_hat, rho, beta):
    """The sparsity penalty ``beta * sum_j KL(rho || rho_hat_j)`` and its gradient.

    ``KL(p || q) = p log(p/q) + (1-p) log((1-p)/(1-q))``; ``rho_hat`` is clipped to
    [KL_EPS, 1 - KL_EPS] first (a saturated unit would give an infinite penalty).

    Parameters
    ----------
    rho_hat : float array (H,): mean activation of each hidden unit over the (global) batch
    rho : float in (0, 1), the target; beta : float >= 0, the weight

    Returns
    -------
    penalty : float;  grad : float64 (H,), d penalty / d rho_hat
    """
    rho_hat = _check_kl(rho_hat, rho, beta, "kl_sparsity")
    grad = np.empty_like(rho_hat)
    return float(_kl_kernel(rho_hat, float(rho), float(beta), grad)), grad


# ---------------------------------------------------------------------------------------------
# autoencoder deltas


@pnjit
def _output_delta_kernel(a, x, scale, d, one):
    """d = (a - x) * a * (1 - a) * scale; returns sum (a - x)^2 (float64, fixed row blocks)."""
    N, V = a.shape
    nblk = (N + _ROWS - 1) // _ROWS
    part = np.zeros(max(nblk, 1), dtype=np.float64)
    for k in prange(nblk):
        s = 0.0
        for n in range(k * _ROWS, min((k + 1) * _ROWS, N)):
            for j in range(V):
                v = a[n, j]
                e = v - x[n, j]
                s += np.float64(e) * e
                d[n, j] = e * v * (one - v) * scale
        part[k] = s
    total = 0.0
    for k in range(nblk):
        total += part[k]
    return total


@pnjit
def _hidden_delta_kernel(da, g, a, d, one):
    """d[n, j] = (da[n, j] + g[j]) * a[n, j] * (1 - a[n, j])."""
    N, H = da.shape
    for n in prange(N):
        for j in range(H):
            v = a[n, j]
            d[n, j] = (da[n, j] + g[j]) * v * (one - v)


def output_delta(a, x, scale, out=None):
    """Squared error of a sigmoid output layer and its delta, in one pass.

    Parameters
    ----------
    a : float (N, V), the reconstruction (sigmoid outputs); x : (N, V), the target, same dtype
    scale : float, multiplies the delta (1 / global batch)

    Returns
    -------
    sse : float, sum of (a - x)^2 (accumulated in float64)
    delta : (N, V) = (a - x) * a * (1 - a) * scale
    """
    fn = "output_delta"
    a = _check_rows(a, "a", fn)
    x = _check_rows(x, "x", fn, dtype=a.dtype)
    if x.shape != a.shape:
        raise ValueError(f"{fn}: a has shape {a.shape} but x has shape {x.shape}")
    d = _check_out(out, a.shape, a.dtype, fn)
    sse = _output_delta_kernel(a, x, a.dtype.type(scale), d, a.dtype.type(1))
    return float(sse), d


def hidden_delta(da, g, a, out=None):
    """Hidden delta of the sparse autoencoder: ``(da + g) * a * (1 - a)``.

    Parameters
    ----------
    da : float (N, H), the error back-propagated from the output layer (delta3 @ W2)
    g : float (H,), the sparsity term per unit (d penalty / d rho_hat / global batch), any float
        dtype (cast to da's)
    a : float (N, H), the hidden activations, same dtype as da
    out : optional (N, H) result buffer (may be ``da``)
    """
    fn = "hidden_delta"
    da = _check_rows(da, "da", fn)
    a = _check_rows(a, "a", fn, dtype=da.dtype)
    if a.shape != da.shape:
        raise ValueError(f"{fn}: da has shape {da.shape} but a has shape {a.shape}")
    g = _check_vec(g, "g", da.shape[1], fn).astype(da.dtype, copy=False)
    d = _check_out(out, da.shape, da.dtype, fn)
    _hidden_delta_kernel(da, g, a, d, da.dtype.type(1))
    return d


# ---------------------------------------------------------------------------------------------
# soft-thresholding and the FISTA step


@pnjit
def _soft_threshold_kernel(x, t, y):
    n = x.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        zero = t - t
        for i in range(lo, hi):  # branch-free, so it vectorizes
            v = x[i]
            y[i] = max(v - t, zero) + min(v + t, zero)


@pnjit
def _fista_step_kernel(y, yg, xd, z, step, thr, mom):
    """Per element: u = y - step * (yg - xd); z' = soft(u, thr); y = z' + mom * (z' - z); z = z'.
    (yg - xd is the gradient of 0.5 |x - D z|^2 at y: y G - x D with G = D^T D.)"""
    n = y.shape[0]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(lo + _BLOCK, n)
        zero = thr - thr
        for i in range(lo, hi):  # branch-free, so it vectorizes (branches: 5x slower)
            u = y[i] - step * (yg[i] - xd[i])
            zn = max(u - thr, zero) + min(u + thr, zero)
            y[i] = zn + mom * (zn - z[i])
            z[i] = zn


def soft_threshold(x, t, out=None):
    """sign(x) * max(|x| - t, 0) elementwise, t >= 0 (``out`` may be ``x``)."""
    fn = "soft_threshold"
    x = _float_array(x, "x", fn)
    if not t >= 0:
        raise ValueError(f"{fn}: threshold must be >= 0, got {t}")
    y = _check_out(out, x.shape, x.dtype, fn)
    _soft_threshold_kernel(x.reshape(-1), x.dtype.type(t), y.reshape(-1))
    return y


def fista_step(y, yg, xd, z, step, lam, mom):
    """One FISTA iteration for the codes of a batch, in place.

    With ``grad = yg - xd`` (the gradient of ``0.5 |x - D y|^2``: ``y @ G - x @ D``)::

        z_new = soft_threshold(y - step * grad, step * lam)
        y     = z_new + mom * (z_new - z)
        z     = z_new

    Parameters
    ----------
    y, z : float (N, K) C-contiguous, updated in place; yg, xd : (N, K), same dtype
    step : float > 0 (1 / L); lam : float >= 0; mom : float, (t_k - 1) / t_{k+1} (0: ISTA)
    """
    fn = "fista_step"
    for a, name in ((y, "y"), (z, "z")):
        if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
            raise ValueError(f"{fn}: {name} must be a C-contiguous array (updated in place)")
    y = _check_rows(y, "y", fn)
    for a, name in ((yg, "yg"), (xd, "xd"), (z, "z")):
        a = _check_rows(a, name, fn, dtype=y.dtype)
        if a.shape != y.shape:
            raise ValueError(f"{fn}: {name} has shape {a.shape} but y has shape {y.shape}")
    if not step > 0 or not lam >= 0:
        raise ValueError(f"{fn}: need step > 0 and lam >= 0, got step {step}, lam {lam}")
    t = y.dtype.type
    _fista_step_kernel(y.reshape(-1), np.ascontiguousarray(yg).reshape(-1),
                       np.ascontiguousarray(xd).reshape(-1), z.reshape(-1), t(step),
                       t(step * lam), t(mom))


# ---------------------------------------------------------------------------------------------
# NumPy reference twins (same signatures; plain array expressions)


def sigmoid_ref(x, out=None):
    return 1.0 / (1.0 + np.exp(-x))


def sigmoid_backward_ref(dy, y, out=None):
    return dy * y * (1 - y)


def bias_sigmoid_ref(z, b, out=None):
    return 1.0 / (1.0 + np.exp(-(z + b)))


def column_sum_ref(a):
    return a.sum(axis=0, dtype=np.float64)


def kl_sparsity_ref(rho_hat, rho, beta):
    r = np.clip(np.asarray(rho_hat, np.float64), KL_EPS, 1 - KL_EPS)
    pen = beta * np.sum(rho * np.log(rho / r) + (1 - rho) * np.log((1 - rho) / (1 - r)))
    return float(pen), beta * (-rho / r + (1 - rho) / (1 - r))


def output_delta_ref(a, x, scale, out=None):
    e = a - x
    return float(np.sum(e.astype(np.float64) ** 2)), e * a * (1 - a) * a.dtype.type(scale)


def hidden_delta_ref(da, g, a, out=None):
    return (da + g.astype(da.dtype)) * a * (1 - a)


def soft_threshold_ref(x, t, out=None):
    return np.sign(x) * np.maximum(np.abs(x) - x.dtype.type(t), 0)


def fista_step_ref(y, yg, xd, z, step, lam, mom):
    t = y.dtype.type
    zn = soft_threshold_ref(y - t(step) * (yg - xd), t(step * lam))
    y[...] = zn + t(mom) * (zn - z)
    z[...] = zn


def gemm(a, b):
    """a @ b through numpy's BLAS (both op sets share it: the GEMMs are BLAS either way)."""
    return np.dot(a, b)


KERNEL_OPS = SimpleNamespace(
    name="hpcnn", gemm=gemm, sigmoid=sigmoid, sigmoid_backward=sigmoid_backward,
    bias_sigmoid=bias_sigmoid, column_sum=column_sum, kl_sparsity=kl_sparsity,
    output_delta=output_delta, hidden_delta=hidden_delta, soft_threshold=soft_threshold,
    fista_step=fista_step)
"""The op API on hpcnn's Numba kernels."""

NUMPY_OPS = SimpleNamespace(
    name="numpy", gemm=gemm, sigmoid=sigmoid_ref, sigmoid_backward=sigmoid_backward_ref,
    bias_sigmoid=bias_sigmoid_ref, column_sum=column_sum_ref, kl_sparsity=kl_sparsity_ref,
    output_delta=output_delta_ref, hidden_delta=hidden_delta_ref,
    soft_threshold=soft_threshold_ref, fista_step=fista_step_ref)
"""The same op API as plain NumPy expressions (the reference twins)."""
