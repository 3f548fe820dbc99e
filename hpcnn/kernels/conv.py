"""2-D convolution (cross-correlation, as in Caffe/PyTorch) on NCHW float32 batches.

The public wrappers validate, then hand over to a strategy from :data:`ALGOS`. Each strategy is
a pair ``(forward, backward)`` with the signatures

    forward(x, w, b, stride, padding) -> y               # b: (K,) array or None
    backward(dy, x, w, stride, padding, input_grad=True) -> (dx, dw, db)

where every array is already checked (C-contiguous, one float dtype, matching shapes) and
``stride`` / ``padding`` are (h, w) int pairs. With ``input_grad=False`` a backward skips the
data gradient (its GEMM and col2im) and returns ``dx=None``: the network's first layer needs
only its weight gradients. Add a strategy by adding it to :data:`ALGOS`;
``"auto"`` is resolved by :func:`resolve_algo`, which asks an
:class:`~hpcnn.kernels.autotune.Autotuner` (the strategy measured fastest on this shape and
thread count, forward and backward apart, among :func:`candidates`): the one given as ``tuner``,
or :data:`DEFAULT_TUNER`.

The strategies: "lowering" (below); "chunked" and "pipelined" (:mod:`~.pipelined`: NHWC
lowering of L2-sized chunks, batch-parallel or with lowering and GEMM overlapped on two
threads); "direct" (:mod:`~.direct`: no lowering, register tiles fed from padded NHWC
images); "mec" (:mod:`~.mec`: lowering along the width only, R shifted GEMMs), "gemm1x1"
(1x1 layers as one GEMM per image, no lowering) and "winograd" / "winograd4" (:mod:`~.winograd`:
Winograd's minimal filtering on tiles, 2.25x to 4x fewer multiply-adds on 3x3 stride-1 layers).

"lowering" is the conventional lowering of Sakiyama et al.: the whole batch is lowered by
:func:`~hpcnn.kernels.im2col.im2col` into one column matrix and multiplied by the weights in ONE
BLAS GEMM. Backward recomputes the columns (no batch-sized buffer survives a call), gets
dW = dY @ col.T, then reuses the column buffer for dcol = W.T @ dY and folds it back with col2im.
"""

from functools import partial

import numba
import numpy as np

from hpcnn import profile
from hpcnn.kernels import autotune, direct, mec, pipelined, winograd
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


BIG_GEMM_FLOPS = 2e9
"""Plain lowering's GEMM runs on all the threads from this size up, on one below it."""


def _gemm_threads(m, n, k):
    """BLAS threads for plain lowering's one GEMM (m x k by k x n). BLAS is otherwise kept on one
    thread (:func:`hpcnn.threads.apply`): after a multi-threaded call its idle threads spin for
    a while against Numba's, which only a large GEMM repays. Measured at 2 threads: a 0.3 GFLOP
    layer (GoogLeNet 5a_5x5) ran its lowering slower on 2 BLAS threads than on 1 (8.0 against
    6.2 ms), and slowed the strategies timed after it."""
    if not pipelined.AVAILABLE or 2.0 * m * n * k < BIG_GEMM_FLOPS:
        return 1
    return numba.get_num_threads()


def _lowering_forward(x, w, b, stride, padding):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P = (H + 2 * ph - R) // sh + 1
    Q = (W + 2 * pw - S) // sw + 1
    col = np.empty((C * R * S, N * P * Q), dtype=x.dtype)
    with profile.region("lowering"):
        _lower(x, R, S, sh, sw, ph, pw, P, Q, col)
    with profile.region("gemm"), pipelined._BlasThreads(_gemm_threads(K, N * P * Q, C * R * S)):
        ymat = np.dot(w.reshape(K, C * R * S), col)  # (K, N*P*Q): the one GEMM
    del col
    y = np.empty((N, K, P, Q), dtype=x.dtype)
    bias = np.zeros(K, dtype=x.dtype) if b is None else b
    with profile.region("layout"):
        _unfold_output(ymat, bias, y.reshape(N, K, P * Q))
    return y


def _lowering_backward(dy, x, w, stride, padding, input_grad=True):
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    P, Q = dy.shape[2], dy.shape[3]
    dymat = np.empty((K, N * P * Q), dtype=x.dtype)
    db = np.empty(K, dtype=x.dtype)
    with profile.region("layout"):
        _fold_grad_output(dy.reshape(N, K, P * Q), dymat, db)
    col = np.empty((C * R * S, N * P * Q), dtype=x.dtype)
    with profile.region("lowering"):
        _lower(x, R, S, sh, sw, ph, pw, P, Q, col)
    with profile.region("gemm"), pipelined._BlasThreads(_gemm_threads(K, N * P * Q, C * R * S)):
        dw = np.dot(dymat, col.T).reshape(w.shape)  # (K, C*R*S)
        if not input_grad:
            return None, dw, db
        np.dot(w.reshape(K, C * R * S).T, dymat, out=col)  # dcol overwrites the columns
    dx = np.empty_like(x)
    with profile.region("col2im"):
        _col2im_kernel(col, R, S, sh, sw, ph, pw, P, Q, dx)
    return dx, dw, db


ALGOS = {
    "lowering": (_lowering_forward, _lowering_backward),
}
if pipelined.AVAILABLE:
    ALGOS["chunked"] = (partial(pipelined.forward, schedule="chunked"),
                        partial(pipelined.backward, schedule="chunked"))
    ALGOS["pipelined"] = (partial(pipelined.forward, schedule="pipelined"),
                          partial(pipelined.backward, schedule="pipelined"))
    ALGOS["mec"] = (mec.mec_forward, mec.mec_backward)
    ALGOS["gemm1x1"] = (mec.gemm1x1_forward, mec.gemm1x1_backward)
    ALGOS["direct"] = (direct.forward, direct.backward)
    for _name in winograd.TILE:
        ALGOS[_name] = (partial(winograd.forward, algo=_name),
                        partial(winograd.backward, algo=_name))
"""Convolution strategies: name -> (forward, backward); see the module docstring."""

APPLIES = {"mec": mec.mec_applies, "gemm1x1": mec.gemm1x1_applies, "direct": direct.applies,
           **{name: partial(winograd.applies, name) for name in winograd.TILE}}
"""name -> predicate(x_shape, w_shape, stride, padding, direction=None): False where the strategy
would only run another one's code in that direction ("forward", "backward" or "wgrad"; None: in
any of them), where it is still correct, but the autotuner does not time it."""

DEFAULT_TUNER = autotune.Autotuner(ALGOS)
"""The autotuner of calls that name none (``tuner=None``): scripts, tests and benchmarks. Its cache
file is HPCNN_AUTOTUNE_CACHE's (none when unset). A training run makes its own
(:func:`hpcnn.train.run`)."""


def candidates(x_shape, w_shape, stride, padding, threads=None, direction=None):
    """The strategies "auto" times for this shape and direction (None: those that apply in
    every direction), in a fixed order: not those :data:`APPLIES` rules out, nor "pipelined" at
    one thread (it is "chunked" there)."""
    threads = numba.get_num_threads() if threads is None else threads
    out = []
    for name in ALGOS:
        if name == "pipelined" and threads < 2:
            continue
        applies = APPLIES.get(name)
        if applies is not None and not applies(x_shape, w_shape, stride, padding, direction):
            continue
        out.append(name)
    return out


def resolve_algo(algo, x_shape, w_shape, stride, padding, fn, dtype=np.float32,
                 direction="forward", tuner=None):
    """The strategy name to run for ``algo``; unknown names raise.

    For "auto" it is the choice of ``tuner`` (None: :data:`DEFAULT_TUNER`) for this shape,
    thread count and ``direction`` ("forward", "backward", or "wgrad": backward without the data
    gradient), or None while that is not tuned yet (the public wrappers then tune on the call's
    arrays).
    """
    if algo == "auto":
        tuner = DEFAULT_TUNER if tuner is None else tuner
        return tuner.lookup(direction, x_shape, w_shape, stride, padding, dtype,
                            candidates(x_shape, w_shape, stride, padding, direction=direction))
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


def conv2d_forward(x, w, b=None, stride=1, padding=0, algo="auto", tuner=None):
    """Convolve a batch: y[n, k] = sum_c x[n, c] (*) w[k, c] + b[k].

    Parameters
    ----------
    x : float32 array of shape (N, C, H, W)
    w : float32 array of shape (K, C, R, S)
    b : float32 array of shape (K,), or None
    stride, padding : int or (h, w) pair
    algo : "auto" or a name in :data:`ALGOS`
    tuner : the :class:`~hpcnn.kernels.autotune.Autotuner` of "auto" (None: :data:`DEFAULT_TUNER`)

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
    name = resolve_algo(algo, x.shape, w.shape, stride, padding, fn, x.dtype, "forward", tuner)
    if name is None:
        tuner = DEFAULT_TUNER if tuner is None else tuner
        _, y = tuner.tune("forward", lambda a: ALGOS[a][0](x, w, b, stride, padding),
                          x.shape, w.shape, stride, padding, x.dtype,
                          candidates(x.shape, w.shape, stride, padding, direction="forward"),
                          warmup=lambda a: ALGOS[a][0](x[:1], w, b, stride, padding))
        return y
    return ALGOS[name][0](x, w, b, stride, padding)


def conv2d_backward(dy, x, w, stride=1, padding=0, algo="auto", input_grad=True, tuner=None):
    """Gradients of :func:`conv2d_forward` with respect to x, w and b.

    Parameters
    ----------
    dy : float32 array of shape (N, K, P, Q), gradient of the loss w.r.t. y
    x, w, stride, padding, algo, tuner : as given to :func:`conv2d_forward`
    input_grad : False skips the data gradient (a network's first layer): dx is then None

    Returns
    -------
    dx : (N, C, H, W) or None, dw : (K, C, R, S), db : (K,) (dy summed over N, P, Q)
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
    direction = "backward" if input_grad else "wgrad"
    name = resolve_algo(algo, x.shape, w.shape, stride, padding, fn, x.dtype, direction, tuner)
    if name is None:
        tuner = DEFAULT_TUNER if tuner is None else tuner
        _, grads = tuner.tune(
            direction, lambda a: ALGOS[a][1](dy, x, w, stride, padding, input_grad),
            x.shape, w.shape, stride, padding, x.dtype,
            candidates(x.shape, w.shape, stride, padding, direction=direction),
            warmup=lambda a: ALGOS[a][1](dy[:1], x[:1], w, stride, padding, input_grad))
        return grads
    return ALGOS[name][1](dy, x, w, stride, padding, input_grad)


def workspace_bytes(algo, x_shape, w_shape, stride=1, padding=0, itemsize=4, threads=None,
                    backward=False):
    """(total, lowering) scratch bytes one pass of strategy ``algo`` allocates on these shapes.

    Computed from the shapes and the strategy's chunk plan, not measured: every temporary the
    strategy allocates besides its inputs and results (``total``), and of it the lowered matrix
    (``lowering``: im2col columns, chunk column buffers or mec's width-lowered blocks).
    "auto" is not accepted: ask for the strategy it chose.
    """
    fn = "workspace_bytes"
    (R, S), stride, padding, (P, Q) = _conv_geometry(x_shape, w_shape[2:], stride, padding, fn)
    N, C = x_shape[0], x_shape[1]
    K = w_shape[0]
    if algo == "lowering":
        col = C * R * S * N * P * Q * itemsize
        gemm_out = K * N * P * Q * itemsize  # ymat, or dymat in backward
        padded = (N * C * (x_shape[2] + 2 * padding[0]) * (x_shape[3] + 2 * padding[1])
                  * itemsize if padding != (0, 0) else 0)
        dw = K * C * R * S * itemsize if backward else 0
        return col + gemm_out + padded + dw, col
    if algo in ("chunked", "pipelined"):
        return pipelined.workspace_bytes(algo, x_shape, w_shape, stride, padding, itemsize,
                                         threads, backward)
    if algo == "mec":
        return mec.mec_workspace_bytes(x_shape, w_shape, stride, padding, itemsize, threads,
                                       backward)
    if algo in winograd.TILE:
        return winograd.workspace_bytes(algo, x_shape, w_shape, stride, padding, itemsize,
                                        threads, backward)
    if algo == "direct":
        return direct.workspace_bytes(x_shape, w_shape, stride, padding, itemsize, threads,
                                      backward)
    if algo == "gemm1x1":
        return mec.gemm1x1_workspace_bytes(x_shape, w_shape, stride, padding, itemsize, threads,
                                           backward)
    raise ValueError(f"{fn}: unknown algo {algo!r}; valid: {', '.join(map(repr, ALGOS))}")
