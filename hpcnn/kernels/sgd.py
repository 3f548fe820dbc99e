"""Fused SGD update: weight decay, momentum and the step in one pass over memory."""

import numpy as np

from hpcnn.kernels._jit import njit


@njit
def _sgd_momentum(w, g, v, lr, momentum, decay):
    # Caffe's SGDSolver::ComputeUpdateValue + Update:
    #   g += decay * w;  v = momentum * v + lr * g;  w -= v
    for i in range(w.size):
        gi = g[i] + decay * w[i]
        vi = momentum * v[i] + lr * gi
        v[i] = vi
        w[i] -= vi


def sgd_momentum_update(w, g, v, lr, momentum, decay):
    """Update ``w`` and the momentum buffer ``v`` in place.

    Parameters
    ----------
    w, g, v : float32 arrays of one shape (any; they are treated as flat, C-contiguous)
        Parameters, their gradient (left unchanged) and the momentum buffer.
    lr, momentum, decay : float
        The learning rate already multiplied by the parameter's ``lr_mult``; momentum; the weight
        decay already multiplied by ``decay_mult``.
    """
    if not (w.shape == g.shape == v.shape):
        raise ValueError(f"sgd: shapes differ: w {w.shape}, g {g.shape}, v {v.shape}")
    for a in (w, g, v):
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f"sgd: arrays must be C-contiguous float32, got {a.dtype}")
    _sgd_momentum(w.reshape(-1), g.reshape(-1), v.reshape(-1), np.float32(lr),
                  np.float32(momentum), np.float32(decay))
