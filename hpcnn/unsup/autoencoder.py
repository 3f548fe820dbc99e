"""The sparse autoencoder of Andrew Ng's UFLDL notes, data parallel over MPI ranks.

One sigmoid hidden layer of H units and a sigmoid output layer reconstruct V-pixel patches::

    a2 = sigmoid(x W1^T + b1)        (N, H)
    a3 = sigmoid(a2 W2^T + b2)       (N, V)
    J  = 1/(2m) sum |a3 - x|^2  +  lambda/2 (|W1|^2 + |W2|^2)  +  beta sum_j KL(rho || rho_hat_j)

where m is the global batch and ``rho_hat = mean over the global batch of a2``. Under data
parallelism each rank holds a block of the batch; the mean activation is a mean over the global
batch, so the per-unit sums (and the squared error) are summed with one ``Allreduce`` of a
contiguous float64 buffer before the KL term and the hidden deltas are formed, and the
gradients are summed with a second one (one flat float64 buffer). Every rank then holds the same
loss and gradient, so N ranks take the serial run's steps.

The parameters are one flat float64 vector ``theta = [W1, W2, b1, b2]`` (UFLDL's order); the
forward and backward run in ``dtype`` (float32 by default) on the op API of
:mod:`hpcnn.kernels.sparse` (``ops``: the Numba kernels, or their NumPy twins).
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from hpcnn.errors import UsageError
from hpcnn.kernels.sparse import KERNEL_OPS
from hpcnn.unsup.timing import NO_TIMER


@dataclass(frozen=True)
class SAEConfig:
    """Sizes and the three weights of the UFLDL sparse autoencoder (its defaults for 8x8)."""
    visible: int = 64
    hidden: int = 25
    rho: float = 0.01  # sparsity target (mean activation of each hidden unit)
    beta: float = 3.0  # weight of the sparsity penalty
    weight_decay: float = 1e-4  # lambda

    def __post_init__(self):
        if self.visible < 1 or self.hidden < 1:
            raise UsageError(f"the autoencoder needs >= 1 visible and hidden unit, got "
                             f"{self.visible} visible, {self.hidden} hidden")
        if not 0.0 < self.rho < 1.0:
            raise UsageError(f"sparsity target rho must lie in (0, 1), got {self.rho}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise UsageError(f"sparsity weight beta must be >= 0, got {self.beta}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise UsageError(f"weight decay lambda must be >= 0, got {self.weight_decay}")

    @property
    def size(self):
        """Length of the flat parameter vector."""
        return 2 * self.hidden * self.visible + self.hidden + self.visible

    def asdict(self):
        return asdict(self)


def unpack(theta, cfg):
    """Views (W1 (H, V), W2 (V, H), b1 (H,), b2 (V,)) of the flat vector ``theta``."""
    H, V = cfg.hidden, cfg.visible
    hv = H * V
    return (theta[:hv].reshape(H, V), theta[hv:2 * hv].reshape(V, H),
            theta[2 * hv:2 * hv + H], theta[2 * hv + H:])


def init_params(cfg, seed=0):
    """UFLDL's initialisation: weights uniform in +-sqrt(6 / (H + V + 1)), biases zero."""
    rng = np.random.default_rng(seed)
    r = math.sqrt(6.0 / (cfg.hidden + cfg.visible + 1))
    theta = np.zeros(cfg.size)
    hv = cfg.hidden * cfg.visible
    theta[:2 * hv] = rng.uniform(-r, r, 2 * hv)
    return theta


def _allreduce(comm, buf):
    """Sum a contiguous float64 buffer over ``comm`` in place (nothing with one rank)."""
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf


class SparseAutoencoder:
    """The loss and gradient of :class:`SAEConfig` on this rank's rows of a global batch.

    Parameters
    ----------
    cfg : SAEConfig
    comm : mpi4py communicator or None; every rank calls :meth:`loss_and_grad` together
    dtype : compute dtype of the forward and backward (float32 or float64)
    ops : op API (:data:`hpcnn.kernels.sparse.KERNEL_OPS` or ``NUMPY_OPS``)
    """

    def __init__(self, cfg, comm=None, dtype=np.float32, ops=KERNEL_OPS):
        self.cfg, self.comm, self.ops = cfg, comm, ops
        self.dtype = np.dtype(dtype)
        self.grad = np.zeros(cfg.size)  # flat float64 gradient, the buffer that is reduced
        self.evals = 0

    def _check(self, theta, x):
        if theta.shape != (self.cfg.size,):
            raise ValueError(f"theta has shape {theta.shape}, expected ({self.cfg.size},)")
        if x.ndim != 2 or x.shape[1] != self.cfg.visible or x.dtype != self.dtype:
            raise ValueError(f"x must be {self.dtype} (N, {self.cfg.visible}), got {x.dtype} "
                             f"{x.shape}")

    def loss_and_grad(self, theta, x, m, timer=NO_TIMER):
        """Loss J and its gradient (flat float64, :attr:`grad`, overwritten each call).

        Parameters
        ----------
        theta : float64 (P,), the same on every rank
        x : (n, V) in ``dtype``, this rank's rows (n may be 0)
        m : int, the global batch (the sum of n over the ranks)
        """
        self._check(theta, x)
        cfg, o, dt = self.cfg, self.ops, self.dtype
        W1, W2, b1, b2 = (np.ascontiguousarray(a, dt) for a in unpack(theta, cfg))
        H, V = cfg.hidden, cfg.visible
        # forward
        with timer("gemm"):
            z2 = o.gemm(x, W1.T)  # (n, H)
        with timer("sigmoid"):
            a2 = o.bias_sigmoid(z2, b1, out=z2)
        with timer("gemm"):
            z3 = o.gemm(a2, W2.T)  # (n, V)
        with timer("sigmoid"):
            a3 = o.bias_sigmoid(z3, b2, out=z3)
        # the global sums: per-unit activation and squared error (one Allreduce)
        red = np.empty(H + 1)
        with timer("reduce"):
            red[:H] = o.column_sum(a2)
        with timer("delta"):
            sse, d3 = o.output_delta(a3, x, 1.0 / m, out=a3)  # (n, V), already / m
        red[H] = sse
        with timer("allreduce"):
            _allreduce(self.comm, red)
        rho_hat, sse = red[:H] / m, red[H]
        with timer("kl"):
            kl, dkl = o.kl_sparsity(rho_hat, cfg.rho, cfg.beta)
        # backward
        with timer("gemm"):
            da2 = o.gemm(d3, W2)  # (n, H)
        with timer("delta"):
            d2 = o.hidden_delta(da2, dkl / m, a2, out=da2)
        g = self.grad
        gW1, gW2, gb1, gb2 = unpack(g, cfg)
        with timer("gemm"):
            gW2[...] = o.gemm(d3.T, a2)
            gW1[...] = o.gemm(d2.T, x)
        with timer("reduce"):
            gb2[...] = o.column_sum(d3)
            gb1[...] = o.column_sum(d2)
        with timer("allreduce"):
            _allreduce(self.comm, g)
        # weight decay: added after the sum, once (the same on every rank)
        lam = cfg.weight_decay
        tW1, tW2, _, _ = unpack(theta, cfg)
        gW1 += lam * tW1
        gW2 += lam * tW2
        self.evals += 1
        loss = sse / (2 * m) + 0.5 * lam * (np.dot(theta[:2 * H * V], theta[:2 * H * V])) + kl
        return float(loss), g

    def encode(self, theta, x):
        """Hidden activations of rows ``x`` (no communication)."""
        W1, _, b1, _ = (np.ascontiguousarray(a, self.dtype) for a in unpack(theta, self.cfg))
        return self.ops.bias_sigmoid(self.ops.gemm(x, W1.T), b1)


# ---------------------------------------------------------------------------------------------
# optimisers (every rank runs them on identical numbers, so they stay in step)


def lbfgs(fg, theta, iters, memory=10, log=None, c1=1e-4):
    """Minimise ``fg(theta) -> (f, g)`` with L-BFGS and a backtracking (Armijo) line search.

    ``fg`` may return its gradient in a reused buffer (it is copied). ``log(it, f)`` is called
    after every iteration. Returns ``(theta, history of f)``.
    """
    theta = theta.copy()
    f, g = fg(theta)
    g = g.copy()
    S, Y, history = [], [], [f]
    for it in range(iters):
        # two-loop recursion: d = -H g
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(S), reversed(Y)):
            a = np.dot(s, q) / np.dot(y, s)
            alphas.append(a)
            q -= a * y
        if S:
            q *= np.dot(S[-1], Y[-1]) / np.dot(Y[-1], Y[-1])
        else:
            q *= min(1.0, 1.0 / max(np.linalg.norm(g), 1e-12))
        for (s, y), a in zip(zip(S, Y), reversed(alphas)):
            b = np.dot(y, q) / np.dot(y, s)
            q += (a - b) * s
        d = -q
        slope = np.dot(g, d)
        if slope >= 0:  # not a descent direction: restart from the gradient
            S, Y = [], []
            d = -g
            slope = -np.dot(g, g)
        step = 1.0
        for _ in range(30):
            new = theta + step * d
            f_new, g_new = fg(new)
            if f_new <= f + c1 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease found: converged to rounding
        g_new = g_new.copy()
        s, y = new - theta, g_new - g
        if np.dot(s, y) > 1e-10 * np.dot(y, y):
            S.append(s)
            Y.append(y)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        theta, f, g = new, f_new, g_new
        history.append(f)
        if log is not None:
            log(it + 1, f)
    return theta, history


def train(model, theta, x_local, m, iters, optimizer="lbfgs", lr=0.1, momentum=0.9,
          batch=None, rank_rows=None, log=None):
    """Fit the autoencoder; returns ``(theta, history of the loss)``.

    ``lbfgs``: full batch (the UFLDL recipe). ``sgd``: momentum SGD on minibatches of ``batch``
    global rows, ``rank_rows(lo, hi)`` giving this rank's part of global rows [lo, hi) of the
    training set; ``iters`` counts steps.
    """
    if optimizer == "lbfgs":
        return lbfgs(lambda t: model.loss_and_grad(t, x_local, m), theta, iters, log=log)
    if optimizer != "sgd":
        raise UsageError(f"unknown optimizer {optimizer!r}; choose lbfgs or sgd")
    theta = theta.copy()
    v = np.zeros_like(theta)
    history = []
    batch = batch or m
    per_epoch = max(1, m // batch)
    for it in range(iters):
        lo = (it % per_epoch) * batch
        xb = rank_rows(lo, lo + batch)
        f, g = model.loss_and_grad(theta, xb, batch)
        v *= momentum
        v += lr * g
        theta -= v
        history.append(f)
        if log is not None:
            log(it + 1, f)
    return theta, history
