"""Every layer's gradients against float64 central finite differences.

The kernels accept float64, so each layer (and whole nets) runs in float64 here: the analytic
gradients from ``backward`` are compared with (L(θ+h) - L(θ-h)) / 2h of the scalar
L = sum(forward(x) * G) for a fixed random G, on awkward shapes.
"""

import numpy as np
import pytest

from hpcnn.kernels import softmax_cross_entropy
from hpcnn.nn import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU, build_net
from hpcnn.nn.layers import Flatten

EPS = 1e-6


def to64(layer):
    for p in layer.params():
        p.data = p.data.astype(np.float64)
        p.grad = np.zeros_like(p.data)
    return layer


def numeric_grad(f, a, n_probe=24, rng=None):
    """Central differences of scalar f() w.r.t. entries of a (modified in place, restored)."""
    rng = rng or np.random.default_rng(0)
    flat = a.reshape(-1)
    idx = rng.choice(flat.size, size=min(n_probe, flat.size), replace=False)
    out = []
    for i in idx:
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        out.append((fp - fm) / (2 * EPS))
    return idx, np.array(out)


def check_layer(layer, x, rng):
    to64(layer)
    y = layer.forward(x)
    g = rng.standard_normal(y.shape)

    def loss():
        return float((layer.forward(x, train=False) * g).sum())

    layer.forward(x)
    dx = layer.backward(g)
    assert dx.shape == x.shape
    idx, num = numeric_grad(loss, x, rng=rng)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num, rtol=1e-5, atol=1e-7)
    for p in layer.params():
        idx, num = numeric_grad(loss, p.data, rng=rng)
        np.testing.assert_allclose(p.grad.reshape(-1)[idx], num, rtol=1e-5, atol=1e-7,
                                   err_msg=p.name)


CONV_CASES = [
    # (N, C, H, W, K, (R, S), stride, padding)
    (1, 1, 7, 7, 2, (3, 3), 1, 0),      # batch 1, C=1
    (2, 3, 9, 6, 4, (5, 5), 1, 2),      # odd, non-square, C=3
    (2, 3, 11, 8, 3, (3, 3), 2, 1),     # stride 2
    (1, 2, 10, 13, 3, (7, 7), 3, 3),    # 7x7, stride 3, padding 3
    (3, 3, 5, 5, 2, (1, 1), 1, 0),      # 1x1
    (2, 2, 8, 9, 3, (2, 3), (2, 1), (0, 1)),  # non-square kernel, pair stride/padding
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradients(case):
    n, c, h, w, k, ks, stride, pad = case
    rng = np.random.default_rng(1)
    layer = Conv2d(c, k, ks, stride, pad, rng=rng)
    layer.bias.data[...] = rng.standard_normal(k)
    check_layer(layer, rng.standard_normal((n, c, h, w)), rng)


@pytest.mark.parametrize("n,f_in,f_out", [(1, 5, 3), (4, 17, 9)])
def test_linear_gradients(n, f_in, f_out):
    rng = np.random.default_rng(2)
    check_layer(Linear(f_in, f_out, rng=rng), rng.standard_normal((n, f_in)), rng)


def test_relu_gradients():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where differences are undefined
    check_layer(ReLU(), x, rng)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("shape,k,s,p", [
    ((1, 1, 7, 7), 3, 2, 0),       # ceil mode: windows cross the border
    ((2, 3, 9, 6), 2, 2, 0),
    ((2, 2, 8, 11), 3, 2, 1),      # padding
    ((1, 3, 10, 10), 3, 3, 0),
    ((1, 1, 32, 32), 3, 2, 0),     # cifar10_quick
])
def test_pool_gradients(cls, shape, k, s, p):
    rng = np.random.default_rng(4)
    # distinct values so the max is unique and differentiable
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.01
    check_layer(cls(k, s, p), x.astype(np.float64), rng)


def test_flatten_gradients():
    rng = np.random.default_rng(5)
    check_layer(Flatten(), rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 28, 28)), ("cifar10_quick", (3, 17, 15)),
                                        ("mlp", (1, 6, 5))])
def test_whole_net_with_softmax_loss(name, shape):
    """The loss of a whole net (layers chained, softmax cross-entropy) against differences."""
    rng = np.random.default_rng(6)
    net = build_net(name, shape, 10, seed=1)
    for layer in net.layers:
        to64(layer)
        for p in layer.params():  # cifar10_quick's 1e-4 init makes gradients tiny: rescale
            p.data[...] = rng.standard_normal(p.data.shape) * 0.3
    x = rng.standard_normal((2,) + shape)
    labels = np.array([3, 7])

    def loss():
        return softmax_cross_entropy(net.forward(x, train=False), labels)[0]

    _, dlogits = softmax_cross_entropy(net.forward(x), labels)
    net.backward(dlogits)
    for layer in net.layers:
        for p in layer.params():
            idx, num = numeric_grad(loss, p.data, n_probe=8, rng=rng)
            np.testing.assert_allclose(p.grad.reshape(-1)[idx], num, rtol=1e-4, atol=1e-7,
                                       err_msg=p.name)
