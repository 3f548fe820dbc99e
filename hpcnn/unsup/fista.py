"""FISTA sparse coding and dictionary learning, batch-parallel over MPI ranks.

For a batch X (N, V) and a dictionary D (V, K) of unit-norm atoms, the codes Z (N, K) solve::

    min_Z  F(Z) = sum_n 0.5 |x_n - D z_n|^2 + lam |z_n|_1

by FISTA (Beck and Teboulle, 2009): with G = D^T D and the step 1/L, L = |D|_2^2 (the largest
eigenvalue of G, by power iteration)::

    z_{k+1} = soft(y_k - (y_k G - X D) / L, lam / L)
    t_{k+1} = (1 + sqrt(1 + 4 t_k^2)) / 2
    y_{k+1} = z_{k+1} + (t_k - 1) / t_{k+1} (z_{k+1} - z_k)

Rows are independent, so each rank codes its own block of the batch and only the objective is
summed. Dictionary learning alternates FISTA with one projected gradient step on D: the gradient
``-(X - Z D^T)^T Z`` and ``Z^T Z`` are summed over the ranks in one ``Allreduce`` of a flat
float64 buffer, the step is ``1 / |Z^T Z|_2`` (so each rank takes the same step), and the
columns are renormalised to unit length.
"""

import math

import numpy as np

from hpcnn.errors import UsageError
from hpcnn.kernels.sparse import KERNEL_OPS
from hpcnn.unsup.autoencoder import _allreduce
from hpcnn.unsup.timing import NO_TIMER


def check_problem(X, D, lam):
    """UsageError unless X (N, V) and D (V, K) fit together and lam >= 0 (one line)."""
    if not (lam >= 0 and math.isfinite(lam)):
        raise UsageError(f"lambda must be >= 0, got {lam}")
    if D.ndim != 2 or D.shape[0] < 1 or D.shape[1] < 1:
        raise UsageError(f"the dictionary must be a (V, K) matrix, got shape {D.shape}")
    if X.ndim != 2 or X.shape[1] != D.shape[0]:
        raise UsageError(f"the dictionary's atoms have {D.shape[0]} entries (D {D.shape}) but "
                         f"the inputs have {X.shape[-1]} features (X {X.shape})")
    if not np.all(np.isfinite(D)):
        raise UsageError("the dictionary holds NaN or infinite values")


def normalize_columns(D):
    """D with every column scaled to unit length (a zero column is left zero)."""
    n = np.linalg.norm(D, axis=0)
    return D / np.where(n > 0, n, 1.0)


def random_dictionary(V, K, seed=0):
    """Gaussian atoms of unit length, (V, K) float64."""
    return normalize_columns(np.random.default_rng(seed).standard_normal((V, K)))


def spectral_norm_sq(D):
    """|D|_2^2: the largest eigenvalue of D^T D (:func:`largest_eigenvalue`)."""
    D = np.asarray(D, np.float64)
    return largest_eigenvalue(D.T @ D)


def largest_eigenvalue(G, iters=1000, tol=1e-12):
    """The largest eigenvalue of a symmetric positive semi-definite G, by power iteration in
    float64 from a fixed start (so every rank gets the same number)."""
    v = np.ones(G.shape[0]) / math.sqrt(G.shape[0])
    v += np.linspace(0, 1e-3, G.shape[0])  # off any symmetric null direction
    lam = 0.0
    for _ in range(iters):
        w = G @ v
        nw = np.linalg.norm(w)
        if nw == 0:
            return 0.0
        v = w / nw
        new = float(v @ G @ v)
        if abs(new - lam) <= tol * new:
            return new
        lam = new
    return lam


def objective(X, D, Z, lam, comm=None):
    """F(Z) summed over every rank's rows (float64; one Allreduce of one number)."""
    X64, D64, Z64 = (np.asarray(a, np.float64) for a in (X, D, Z))
    r = X64 - Z64 @ D64.T
    buf = np.array([0.5 * np.sum(r * r) + lam * np.sum(np.abs(Z64))])
    return float(_allreduce(comm, buf)[0])


def fista(X, D, lam, iters, L=None, ops=KERNEL_OPS, momentum=True, timer=NO_TIMER):
    """Codes Z (N, K) of this rank's rows X (N, V) after ``iters`` FISTA iterations from zero.

    Runs in X's dtype (float32 or float64); ``momentum=False`` is plain ISTA. ``L``: the
    Lipschitz constant (default :func:`spectral_norm_sq` of D). No communication: the rows are
    independent.
    """
    check_problem(X, D, lam)
    dt = X.dtype
    if L is None:
        L = spectral_norm_sq(D)
    Dc = np.ascontiguousarray(D, dt)
    with timer("gemm"):
        G = ops.gemm(Dc.T, Dc)  # (K, K)
        XD = ops.gemm(X, Dc)  # (N, K)
    z = np.zeros_like(XD)
    y = np.zeros_like(XD)
    if L <= 0:  # D = 0: the codes stay 0
        return z
    step, t = 1.0 / L, 1.0
    for _ in range(iters):
        with timer("gemm"):
            yg = ops.gemm(y, G)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        mom = (t - 1.0) / t_new if momentum else 0.0
        with timer("soft_threshold"):
            ops.fista_step(y, yg, XD, z, step, lam, mom)
        t = t_new
    return z


def learn_dictionary(X, D, lam, outer, inner, m, comm=None, ops=KERNEL_OPS, log=None,
                     timer=NO_TIMER):
    """Alternate ``inner`` FISTA iterations on this rank's rows X with one gradient step on D.

    ``m``: the global number of rows. Returns ``(D, history)``, the history holding the mean
    objective F / m after each outer step's coding (before its dictionary update).
    """
    check_problem(X, D, lam)
    D = normalize_columns(np.asarray(D, np.float64))
    V, K = D.shape
    buf = np.empty(V * K + K * K)
    history = []
    for it in range(outer):
        Z = fista(X, D, lam, inner, ops=ops, timer=timer)
        with timer("gemm"):
            Z64 = Z.astype(np.float64)
            R = np.asarray(X, np.float64) - Z64 @ D.T  # (N, V)
            buf[:V * K] = -(R.T @ Z64).ravel()  # gradient of 0.5 |X - Z D^T|^2 w.r.t. D
            buf[V * K:] = (Z64.T @ Z64).ravel()
        loc = np.array([0.5 * np.sum(R * R) + lam * np.sum(np.abs(Z64))])
        with timer("allreduce"):
            _allreduce(comm, buf)
            _allreduce(comm, loc)
        history.append(float(loc[0]) / m)
        L = largest_eigenvalue(buf[V * K:].reshape(K, K))
        if L > 0:
            D = normalize_columns(D - buf[:V * K].reshape(V, K) / L)
        if log is not None:
            log(it + 1, history[-1])
    return D, history

