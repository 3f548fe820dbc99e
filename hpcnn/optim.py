"""SGD with momentum and weight decay (Caffe's semantics), and learning-rate policies."""

import math

import numpy as np

from hpcnn.kernels.sgd import sgd_momentum_update

LR_POLICIES = ("fixed", "step", "inv", "cosine")


def learning_rate(policy, base_lr, it, *, gamma=0.1, power=0.75, stepsize=1000, max_iter=1):
    """Caffe's learning-rate policies, as a pure function of the iteration ``it`` (0-based).

    - fixed:  base_lr
    - step:   base_lr * gamma ** floor(it / stepsize)
    - inv:    base_lr * (1 + gamma * it) ** (-power)
    - cosine: base_lr * (1 + cos(pi * it / max_iter)) / 2
    """
    if policy == "fixed":
        return base_lr
    if policy == "step":
        return base_lr * gamma ** (it // stepsize)
    if policy == "inv":
        return base_lr * (1.0 + gamma * it) ** (-power)
    if policy == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(it, max_iter) / max_iter))
    raise ValueError(f"unknown lr policy {policy!r}; choose from {', '.join(LR_POLICIES)}")


class SGD:
    """SGD with momentum, updating parameters in place.

    Per parameter: ``v = momentum * v + lr * lr_mult * (g + weight_decay * decay_mult * w)``,
    ``w -= v`` (Caffe's SGDSolver). Momentum buffers are allocated once, here.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.params = list(params)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.momentum_buffers = [np.zeros_like(p.data) for p in self.params]

    def step(self, lr=None):
        """One update with learning rate ``lr`` (default: ``self.lr``)."""
        lr = self.lr if lr is None else lr
        for p, v in zip(self.params, self.momentum_buffers):
            sgd_momentum_update(p.data, p.grad, v, lr * p.lr_mult, self.momentum,
                                self.weight_decay * p.decay_mult)

    def state(self):
        return [v.copy() for v in self.momentum_buffers]

    def load_state(self, buffers):
        for v, b in zip(self.momentum_buffers, buffers):
            v[...] = b
