"""SGD and learning-rate policies against hand-computed values."""

import math

import numpy as np
import pytest

from hpcnn.nn.layers import Param
from hpcnn.optim import SGD, learning_rate


def test_sgd_matches_caffe_update_by_hand():
    w0 = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    g = np.array([0.1, 0.2, -0.3], dtype=np.float32)
    p = Param(w0.copy(), "w", lr_mult=2.0, decay_mult=1.0)
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = np.zeros(3)
    w = w0.astype(np.float64)
    for _ in range(3):
        p.grad[...] = g
        opt.step()
        v = 0.9 * v + 0.1 * 2.0 * (g + 0.01 * w)
        w = w - v
    np.testing.assert_allclose(p.data, w, rtol=1e-6)
    np.testing.assert_allclose(opt.momentum_buffers[0], v, rtol=1e-6)
    np.testing.assert_array_equal(p.grad, g)  # the gradient is left as it was


def test_sgd_updates_views_in_place():
    flat = np.zeros(6, dtype=np.float32)
    p = Param(np.ones((2, 3)), "w")
    flat[:] = p.data.ravel()
    p.data = flat.reshape(2, 3)
    p.grad[...] = 1.0
    SGD([p], lr=0.5).step()
    np.testing.assert_allclose(flat, 0.5)


@pytest.mark.parametrize("bad", [dict(lr=0), dict(lr=-1), dict(lr=0.1, momentum=1.0),
                                 dict(lr=0.1, weight_decay=-1)])
def test_sgd_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        SGD([Param(np.ones(2), "w")], **bad)


def test_lr_policies():
    assert learning_rate("fixed", 0.1, 500) == 0.1
    assert learning_rate("step", 0.1, 2500, gamma=0.5, stepsize=1000) == pytest.approx(0.025)
    # Caffe's LeNet: inv, gamma 1e-4, power 0.75
    assert learning_rate("inv", 0.01, 10000, gamma=1e-4, power=0.75) == pytest.approx(
        0.01 * 2.0 ** -0.75)
    assert learning_rate("cosine", 1.0, 0, max_iter=100) == pytest.approx(1.0)
    assert learning_rate("cosine", 1.0, 50, max_iter=100) == pytest.approx(0.5)
    assert learning_rate("cosine", 1.0, 100, max_iter=100) == pytest.approx(0.0, abs=1e-12)
    assert math.isclose(learning_rate("cosine", 1.0, 25, max_iter=100),
                        0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="unknown lr policy"):
        learning_rate("poly", 0.1, 0)
