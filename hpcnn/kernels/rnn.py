"""A vanilla tanh RNN over a character vocabulary: the fused cell step, the window forward, the
one-sweep O(T) backpropagation through time, and the per-step softmax over the vocabulary.

The cell, for a batch of B streams with hidden size H over a vocabulary of V characters::

    h_t = tanh(emb[x_t] + h_{t-1} @ w_hh.T + b_h)        emb (V, H): the one-hot input weights

(``emb[x_t]`` is the one-hot vector of character ``x_t`` times the input weights, a row lookup).
Hidden states are kept time-major, ``hs`` (T, B, H), so each step's rows are contiguous. Each
step's recurrent product is one BLAS GEMM (``np.dot`` inside the Numba loop, with an ``out``
buffer: no allocation per step); the add, the input lookup and the tanh are fused in one pass.

Backward (:func:`rnn_backward`) walks the window once from the last step to the first, carrying
dL/dh_t: ``dpre_t = (dh_out_t + dpre_{t+1} @ w_hh) * (1 - h_t**2)``, O(T) steps. The weight
gradients are then two large GEMMs over all steps at once, not T small ones. The WildML
tutorial's loop (:func:`rnn_backward_truncated_loop`) instead walks back from *every* output
step, O(T**2); with its truncation at least T it gives the same gradients.

Every kernel has a plain NumPy twin (``*_reference``) that the tests compare against; the
benchmarks time them as "plain NumPy".
"""

import numpy as np

from hpcnn.kernels._jit import njit, pnjit, prange
from hpcnn.kernels.im2col import _float_array

MAX_VOCAB = 1 << 20


# ---------------------------------------------------------------------------------------------
# validation


def _ids(ids, fn, vocab, ndim):
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != ndim:
        raise ValueError(f"{fn}: ids must be a {ndim}-d integer array, got {a.dtype} "
                         f"{a.shape}")
    if a.size and (a.min() < 0 or a.max() >= vocab):
        raise ValueError(f"{fn}: ids must lie in [0, {vocab}) for a vocabulary of {vocab}, "
                         f"got min {a.min()} max {a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _check_cell(fn, h, emb, w_hh, b_h):
    h = _float_array(h, "h0", fn, ndim=2)
    emb = _float_array(emb, "emb", fn, ndim=2, dtype=h.dtype)
    w_hh = _float_array(w_hh, "w_hh", fn, ndim=2, dtype=h.dtype)
    b_h = _float_array(b_h, "b_h", fn, ndim=1, dtype=h.dtype)
    H = h.shape[1]
    if emb.shape[1] != H or w_hh.shape != (H, H) or b_h.shape != (H,):
        raise ValueError(f"{fn}: hidden size {H} (h {h.shape}) needs emb (V, {H}), w_hh "
                         f"({H}, {H}), b_h ({H},); got emb {emb.shape}, w_hh {w_hh.shape}, "
                         f"b_h {b_h.shape}")
    return h, emb, w_hh, b_h


# ---------------------------------------------------------------------------------------------
# forward


@njit
def _tanh32(x):
    """tanh of a float32 as a rational function (Eigen's ``generic_fast_tanh_float``): plain
    arithmetic, so the loops around it vectorize, where a call of libm's tanhf per element does
    not (13 ms against 0.9 ms for a window of 50 x 32 x 128). Within 3.3e-7 of tanh on
    [-12, 12] (tests/test_rnn.py); clamped to +-9, where float32 tanh is +-1."""
    x = min(max(x, np.float32(-9.0)), np.float32(9.0))
    x2 = x * x
    p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
    p = x2 * p + np.float32(-8.60467152213735e-11)
    p = x2 * p + np.float32(5.12229709037114e-08)
    p = x2 * p + np.float32(1.48572235717979e-05)
    p = x2 * p + np.float32(6.37261928875436e-04)
    p = x2 * p + np.float32(4.89352455891786e-03)
    q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
    q = x2 * q + np.float32(2.26843463243900e-03)
    q = x2 * q + np.float32(4.89352518554385e-03)
    return x * p / q


@njit
def _cell_kernel(pre, ids, emb, b_h, exact):
    """pre[i, :] = tanh(pre[i, :] + emb[ids[i], :] + b_h), in place; pre (B, H), ids (B,).

    ``exact``: libm's tanh (the float64 path of the gradient checks); else :func:`_tanh32`.
    """
    B, H = pre.shape
    for i in range(B):
        row = pre[i]
        e = emb[ids[i]]
        if exact:
            for j in range(H):
                row[j] = np.tanh(row[j] + e[j] + b_h[j])
        else:
            for j in range(H):
                row[j] = _tanh32(row[j] + e[j] + b_h[j])


@njit
def _rnn_forward_kernel(ids, h0, emb, w_hh_t, b_h, exact, hs):
    """hs[t] = tanh(emb[ids[:, t]] + hs[t-1] @ w_hh.T + b_h) for t = 0..T-1, hs[-1] = h0.

    ids (B, T), h0 (B, H), emb (V, H), w_hh_t (H, H) = w_hh.T made contiguous (a transposed
    view inside Numba takes a slow path: 9 ms against 0.7 ms for 50 steps), b_h (H,),
    hs (T, B, H) written.
    """
    T = ids.shape[1]
    for t in range(T):
        prev = h0 if t == 0 else hs[t - 1]
        cur = hs[t]
        np.dot(prev, w_hh_t, cur)  # the recurrent GEMM, into the step's own rows
        _cell_kernel(cur, ids[:, t], emb, b_h, exact)


def rnn_cell_forward(ids, h_prev, emb, w_hh, b_h):
    """One fused step: h = tanh(emb[ids] + h_prev @ w_hh.T + b_h).

    Parameters
    ----------
    ids : integer array (B,), the characters of this step
    h_prev : float32 (B, H)
    emb : float32 (V, H), w_hh : (H, H), b_h : (H,)

    Returns
    -------
    h : float32 (B, H)
    """
    fn = "rnn_cell_forward"
    h_prev, emb, w_hh, b_h = _check_cell(fn, h_prev, emb, w_hh, b_h)
    ids = _ids(ids, fn, emb.shape[0], 1)
    if ids.shape[0] != h_prev.shape[0]:
        raise ValueError(f"{fn}: {ids.shape[0]} ids for a batch of {h_prev.shape[0]} (h_prev "
                         f"{h_prev.shape})")
    h = np.dot(h_prev, w_hh.T)
    _cell_kernel(h, ids, emb, b_h, h.dtype == np.float64)
    return h


def rnn_forward(ids, h0, emb, w_hh, b_h):
    """The hidden states of a window of T steps.

    Parameters
    ----------
    ids : integer array (B, T), characters in [0, V)
    h0 : float32 (B, H), the state carried in from the previous window
    emb : float32 (V, H), w_hh : (H, H), b_h : (H,)

    Returns
    -------
    hs : float32 (T, B, H), time-major; hs[-1] is the state to carry on
    """
    fn = "rnn_forward"
    h0, emb, w_hh, b_h = _check_cell(fn, h0, emb, w_hh, b_h)
    ids = _ids(ids, fn, emb.shape[0], 2)
    B, T = ids.shape
    if B != h0.shape[0] or T < 1:
        raise ValueError(f"{fn}: ids {ids.shape} must be (B, T) with B = {h0.shape[0]} "
                         f"(h0 {h0.shape}) and T >= 1")
    hs = np.empty((T, B, h0.shape[1]), dtype=h0.dtype)
    _rnn_forward_kernel(ids, h0, emb, np.ascontiguousarray(w_hh.T), b_h, h0.dtype == np.float64,
                        hs)
    return hs


# ---------------------------------------------------------------------------------------------
# backward through time


@njit
def _bptt_kernel(dh_out, hs, w_hh, dpre, carry):
    """One reverse sweep: dpre[t] = (dh_out[t] + carry) * (1 - hs[t]**2), carry = dpre[t] @ w_hh.

    dh_out, hs, dpre (T, B, H); carry (B, H), zero on entry, dL/dh0 on return.
    """
    T, B, H = hs.shape
    for t in range(T - 1, -1, -1):
        g = dpre[t]
        d = dh_out[t]
        h = hs[t]
        for i in range(B):
            for j in range(H):
                v = h[i, j]
                g[i, j] = (d[i, j] + carry[i, j]) * (1 - v * v)
        np.dot(g, w_hh, carry)


@njit
def _embedding_grad_kernel(ids, dpre, demb):
    """demb[ids[i, t]] += dpre[t, i] for every step and stream (serial: rows may repeat)."""
    B, T = ids.shape
    H = dpre.shape[2]
    for t in range(T):
        for i in range(B):
            row = demb[ids[i, t]]
            g = dpre[t, i]
            for j in range(H):
                row[j] += g[j]


def _check_backward(fn, dh_out, ids, hs, h0, w_hh, vocab):
    hs = _float_array(hs, "hs", fn, ndim=3)
    dh_out = _float_array(dh_out, "dh_out", fn, ndim=3, dtype=hs.dtype)
    h0 = _float_array(h0, "h0", fn, ndim=2, dtype=hs.dtype)
    w_hh = _float_array(w_hh, "w_hh", fn, ndim=2, dtype=hs.dtype)
    T, B, H = hs.shape
    ids = _ids(ids, fn, vocab, 2)
    if dh_out.shape != hs.shape or h0.shape != (B, H) or w_hh.shape != (H, H) or \
            ids.shape != (B, T):
        raise ValueError(f"{fn}: hs {hs.shape} (T, B, H) needs dh_out of the same shape, ids "
                         f"({B}, {T}), h0 ({B}, {H}), w_hh ({H}, {H}); got dh_out "
                         f"{dh_out.shape}, ids {ids.shape}, h0 {h0.shape}, w_hh {w_hh.shape}")
    return dh_out, ids, hs, h0, w_hh


def _param_grads(dpre, ids, hs, h0, vocab):
    """dW_hh = sum_t dpre[t].T @ h_{t-1} (two GEMMs over all steps), db_h, demb."""
    T, B, H = hs.shape
    dw_hh = np.dot(dpre[0].T, h0)
    if T > 1:
        dw_hh += np.dot(dpre[1:].reshape(-1, H).T, hs[:-1].reshape(-1, H))
    db_h = dpre.reshape(-1, H).sum(axis=0, dtype=np.float64).astype(hs.dtype)
    demb = np.zeros((vocab, H), dtype=hs.dtype)
    _embedding_grad_kernel(ids, dpre, demb)
    return demb, dw_hh, db_h


def rnn_backward(dh_out, ids, hs, h0, w_hh, vocab):
    """Gradients of a window in one reverse sweep (O(T)).

    Parameters
    ----------
    dh_out : float32 (T, B, H), dL/dh_t from the outputs of each step
    ids, hs, h0, w_hh : as given to and returned by :func:`rnn_forward`
    vocab : V, rows of the input weights

    Returns
    -------
    demb (V, H), dw_hh (H, H), db_h (H,), dh0 (B, H): gradients of the input weights, the
    recurrent weights, the bias and the initial state (truncated BPTT drops dh0)
    """
    dh_out, ids, hs, h0, w_hh = _check_backward("rnn_backward", dh_out, ids, hs, h0, w_hh,
                                                vocab)
    dpre = np.empty_like(hs)
    dh0 = np.zeros_like(h0)
    _bptt_kernel(dh_out, hs, w_hh, dpre, dh0)
    return (*_param_grads(dpre, ids, hs, h0, vocab), dh0)


# ---------------------------------------------------------------------------------------------
# softmax over the vocabulary, every step


@pnjit
def _softmax_ce_rows_kernel(z, labels, scale, dz, losses):
    """losses[i] = -log softmax(z[i])[labels[i]]; dz[i] = scale * (softmax(z[i]) - onehot)
    when dz has rows (else no gradient).

    z (N, V), one row (one step of one stream) per parallel iteration; one exp per element
    (kept in dz between the two passes), sums in float64.
    """
    N, V = z.shape
    grad = dz.shape[0] == N
    for i in prange(N):
        row = z[i]
        m = row[0]
        for j in range(1, V):
            m = max(m, row[j])
        s = 0.0
        if grad:
            g = dz[i]
            for j in range(V):
                e = np.exp(row[j] - m)
                g[j] = e
                s += e
            inv = scale / s
            for j in range(V):
                g[j] *= inv
            g[labels[i]] -= scale
        else:
            for j in range(V):
                s += np.exp(row[j] - m)
        losses[i] = np.log(s) - (np.float64(row[labels[i]]) - m)


def softmax_ce_steps(z, labels, scale, grad=True):
    """Summed softmax cross-entropy of many steps and its gradient times ``scale``.

    Parameters
    ----------
    z : float32 (N, V), logits of N predictions (steps x streams)
    labels : integer (N,), the next characters
    scale : float, what the gradient of the *sum* is multiplied by (1 / global predictions)
    grad : False skips the gradient (returned as None)

    Returns
    -------
    total : float, the sum over the N rows of -log softmax(z)[label]
    dz : float32 (N, V), scale * (softmax(z) - onehot(labels))
    """
    fn = "softmax_ce_steps"
    z = _float_array(z, "z", fn, ndim=2)
    N, V = z.shape
    if N == 0 or V == 0:
        raise ValueError(f"{fn}: empty logits {z.shape}")
    labels = _ids(labels, fn, V, 1)
    if labels.shape != (N,):
        raise ValueError(f"{fn}: {labels.shape[0]} labels for logits {z.shape}")
    dz = np.empty_like(z) if grad else np.empty((0, V), z.dtype)
    losses = np.empty(N, np.float64)
    _softmax_ce_rows_kernel(z, labels, float(scale), dz, losses)
    return float(losses.sum()), (dz if grad else None)


# ---------------------------------------------------------------------------------------------
# NumPy twins: the tests' ground truth and the benchmarks' "plain NumPy" RNN


def rnn_cell_forward_reference(ids, h_prev, emb, w_hh, b_h):
    return np.tanh(emb[np.asarray(ids)] + h_prev @ w_hh.T + b_h)


def rnn_forward_reference(ids, h0, emb, w_hh, b_h):
    ids = np.asarray(ids)
    hs = np.empty((ids.shape[1], *h0.shape), dtype=h0.dtype)
    h = h0
    for t in range(ids.shape[1]):
        h = hs[t] = rnn_cell_forward_reference(ids[:, t], h, emb, w_hh, b_h)
    return hs


def rnn_backward_reference(dh_out, ids, hs, h0, w_hh, vocab):
    """One reverse sweep in plain NumPy, the weight gradients accumulated step by step."""
    ids = np.asarray(ids)
    T, B, H = hs.shape
    demb = np.zeros((vocab, H), hs.dtype)
    dw_hh = np.zeros((H, H), hs.dtype)
    db_h = np.zeros(H, hs.dtype)
    carry = np.zeros((B, H), hs.dtype)
    for t in range(T - 1, -1, -1):
        prev = h0 if t == 0 else hs[t - 1]
        d = (dh_out[t] + carry) * (1 - hs[t] ** 2)
        dw_hh += d.T @ prev
        db_h += d.sum(axis=0)
        np.add.at(demb, ids[:, t], d)
        carry = d @ w_hh
    return demb, dw_hh, db_h, carry


def rnn_backward_truncated_loop(dh_out, ids, hs, h0, w_hh, vocab, truncate=None):
    """The WildML tutorial's BPTT (``bptt`` in "Recurrent Neural Networks Tutorial, Part 3"),
    batched: from *every* output step t walk back to ``max(0, t - truncate)``, O(T**2) steps.

    With ``truncate`` >= T - 1 (default: the whole window) the gradients equal
    :func:`rnn_backward`'s; dh0 is not computed (returned as None).
    """
    ids = np.asarray(ids)
    T, B, H = hs.shape
    truncate = T if truncate is None else truncate
    demb = np.zeros((vocab, H), hs.dtype)
    dw_hh = np.zeros((H, H), hs.dtype)
    db_h = np.zeros(H, hs.dtype)
    for t in range(T - 1, -1, -1):
        delta = dh_out[t] * (1 - hs[t] ** 2)
        for step in range(t, max(0, t - truncate) - 1, -1):
            prev = h0 if step == 0 else hs[step - 1]
            dw_hh += delta.T @ prev
            db_h += delta.sum(axis=0)
            np.add.at(demb, ids[:, step], delta)
            delta = (delta @ w_hh) * (1 - prev ** 2)
    return demb, dw_hh, db_h, None


def softmax_ce_steps_reference(z, labels, scale):
    z64 = np.asarray(z, np.float64)
    z64 = z64 - z64.max(axis=1, keepdims=True)
    p = np.exp(z64)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    total = float(-np.log(p[rows, labels]).sum())
    p[rows, labels] -= 1.0
    return total, (p * scale).astype(np.asarray(z).dtype)
