"""hpcnn.kernels.sparse against its NumPy twins (awkward shapes, both dtypes) and against finite
differences in float64; bad arguments raise ValueError naming the shapes."""

import numpy as np
import pytest

from hpcnn.kernels import sparse as S

SHAPES = [(1, 1), (3, 7), (37, 13), (300, 5), (513, 64)]  # rows across the 256-row blocks
DTYPES = [np.float32, np.float64]


def tol(dt):
    return dict(rtol=1e-5, atol=1e-6) if dt == np.float32 else dict(rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_pointwise_ops_match_numpy(shape, dt):
    rng = np.random.default_rng(sum(shape))
    z = (3 * rng.standard_normal(shape)).astype(dt)
    b = rng.standard_normal(shape[1]).astype(dt)
    x = rng.random(shape).astype(dt)
    a = S.bias_sigmoid(z, b)
    np.testing.assert_allclose(a, S.bias_sigmoid_ref(z, b), **tol(dt))
    np.testing.assert_allclose(S.sigmoid(z), S.sigmoid_ref(z), **tol(dt))
    np.testing.assert_allclose(S.sigmoid_backward(x, a), S.sigmoid_backward_ref(x, a), **tol(dt))
    np.testing.assert_allclose(S.column_sum(z), S.column_sum_ref(z), rtol=1e-6, atol=1e-4)
    sse, d = S.output_delta(a, x, 0.25)
    sse_r, d_r = S.output_delta_ref(a, x, 0.25)
    assert sse == pytest.approx(sse_r, rel=1e-6)
    np.testing.assert_allclose(d, d_r, **tol(dt))
    g = rng.standard_normal(shape[1])
    np.testing.assert_allclose(S.hidden_delta(z, g, a), S.hidden_delta_ref(z, g, a), **tol(dt))
    for t in (0.0, 0.7):
        np.testing.assert_array_equal(S.soft_threshold(z, t), S.soft_threshold_ref(z, t))


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("mom", [0.0, 0.63])
def test_fista_step_matches_numpy(dt, mom):
    rng = np.random.default_rng(3)
    y, yg, xd, z = (rng.standard_normal((41, 9)).astype(dt) for _ in range(4))
    y2, z2 = y.copy(), z.copy()
    S.fista_step(y, yg, xd, z, 0.3, 0.8, mom)
    S.fista_step_ref(y2, yg, xd, z2, 0.3, 0.8, mom)
    np.testing.assert_allclose(z, z2, **tol(dt))
    np.testing.assert_allclose(y, y2, **tol(dt))
    if mom == 0.0:
        np.testing.assert_array_equal(y, z)  # ISTA: no extrapolation


def test_column_sum_independent_of_threads():
    import numba

    a = np.random.default_rng(0).standard_normal((1000, 17)).astype(np.float32)
    first = S.column_sum(a)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        np.testing.assert_array_equal(S.column_sum(a), first)
    finally:
        numba.set_num_threads(old)


def test_outputs_in_place():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    want = S.bias_sigmoid_ref(z, b)
    out = S.bias_sigmoid(z, b, out=z)
    assert out is z
    np.testing.assert_allclose(z, want, rtol=1e-6)


def _num_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (f(xp) - f(xm)) / (2 * eps)
    return g


def test_kl_gradient_finite_differences():
    rng = np.random.default_rng(2)
    rho_hat = rng.uniform(0.01, 0.9, 11)
    pen, grad = S.kl_sparsity(rho_hat, 0.05, 3.0)
    assert pen == pytest.approx(S.kl_sparsity_ref(rho_hat, 0.05, 3.0)[0], rel=1e-12)
    num = _num_grad(lambda r: S.kl_sparsity(r, 0.05, 3.0)[0], rho_hat)
    np.testing.assert_allclose(grad, num, rtol=1e-6)
    assert S.kl_sparsity(np.full(4, 0.05), 0.05, 3.0)[0] == pytest.approx(0.0, abs=1e-15)
    # saturated units: clipped, so finite
    pen, grad = S.kl_sparsity(np.array([0.0, 1.0]), 0.05, 1.0)
    assert np.isfinite(pen) and np.all(np.isfinite(grad))


def test_sigmoid_backward_is_the_derivative():
    x = np.linspace(-4, 4, 9).reshape(3, 3)
    y = S.sigmoid(x)
    num = _num_grad(lambda v: float(np.sum(S.sigmoid(v) * np.arange(9).reshape(3, 3))), x)
    np.testing.assert_allclose(S.sigmoid_backward(np.arange(9.0).reshape(3, 3), y), num,
                               rtol=1e-7, atol=1e-10)


def test_soft_threshold_is_the_l1_prox():
    # prox_{t|.|}(v) = argmin_u 0.5 (u - v)^2 + t |u|: check against a fine grid
    v = np.array([-2.0, -0.3, 0.0, 0.29, 1.5])
    grid = np.linspace(-3, 3, 600001)
    for vi, ui in zip(v, S.soft_threshold(v, 0.3)):
        assert ui == pytest.approx(grid[np.argmin(0.5 * (grid - vi) ** 2 + 0.3 * np.abs(grid))],
                                   abs=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: S.bias_sigmoid(np.zeros((2, 3), np.float32), np.zeros(4, np.float32)), r"\(3,\)"),
    (lambda: S.bias_sigmoid(np.zeros((2, 3), np.float32), np.zeros(3)), "dtype"),
    (lambda: S.column_sum(np.zeros(3, np.float32)), "2-dimensional"),
    (lambda: S.kl_sparsity(np.full(3, 0.1), 1.0, 3.0), r"\(0, 1\)"),
    (lambda: S.kl_sparsity(np.full(3, 0.1), 0.1, -1.0), "beta"),
    (lambda: S.output_delta(np.zeros((2, 3)), np.zeros((3, 2)), 1.0), "shape"),
    (lambda: S.soft_threshold(np.zeros(3), -0.1), ">= 0"),
    (lambda: S.soft_threshold(np.zeros(3, np.int32), 0.1), "dtype"),
    (lambda: S.fista_step(*(np.zeros((2, 3)),) * 3, np.zeros((3, 2)), 1.0, 0.1, 0.0), "shape"),
    (lambda: S.fista_step(*(np.zeros((2, 3)),) * 4, 0.0, 0.1, 0.0), "step"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float32_sigmoid_accuracy_and_extremes():
    # the float32 path computes exp itself (a polynomial): compare with the float64 sigmoid
    x = np.concatenate([np.linspace(-100, 100, 40001), [-1e30, -88.5, 0.0, 88.5, 1e30]])
    x32 = x.astype(np.float32)
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x32.astype(np.float64)))
    got = S.sigmoid(x32).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-37)
    assert got[x == 0.0][0] == 0.5 and got[-1] == 1.0 and 0.0 <= got[-5] < 1e-37
    b = np.zeros(7, np.float32)
    z = x32[:39998].reshape(-1, 7)
    np.testing.assert_allclose(S.bias_sigmoid(z, b), S.sigmoid(z), rtol=0, atol=0)


def test_bench_ops_numpy_cnn_equals_hpcnn_kernels():
    """The plain NumPy CNN that ``python -m hpcnn.bench ops`` times computes what hpcnn's
    kernels compute (conv forward/backward by im2col/col2im, Caffe ceil-mode max-pool)."""
    from hpcnn import kernels as K
    from hpcnn.bench import ops
    from hpcnn.unsup.timing import NO_TIMER

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    y, col = ops._np_conv_forward(x, w, b, 1, NO_TIMER)
    np.testing.assert_allclose(y, K.conv2d_forward(x, w, b, 1, 1, algo="lowering"),
                               rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    got = ops._np_conv_backward(dy, x, w, col, 1, NO_TIMER)
    want = K.conv2d_backward(dy, x, w, 1, 1, algo="lowering")
    for g, h in zip(got, want):
        np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-4)
    p, arg = ops._np_maxpool(y, 3, 2)
    p2, arg2 = K.maxpool2d_forward(y, 3, 2)
    np.testing.assert_array_equal(p, p2)
    dp = rng.standard_normal(p.shape).astype(np.float32)
    np.testing.assert_allclose(ops._np_maxpool_backward(dp, arg, y.shape, 3, 2),
                               K.maxpool2d_backward(dp, arg2, y.shape), rtol=1e-6, atol=1e-6)
