"""Every public kernel of hpcnn.kernels against the naive float64 loops in tests/reference.py.

float32 results are compared with the float64 reference at rtol 1e-4 and an absolute tolerance
scaled by the largest reference value; float64 runs of the same kernels must agree to ~1e-12.
"""

import re

import numpy as np
import pytest

import hpcnn.kernels as K
from tests import reference as ref

RNG_SEED = 1234


def rand(*shape, dtype=np.float32, seed=0):
    return np.random.default_rng(RNG_SEED + seed).standard_normal(shape).astype(dtype)


def assert_close(actual, expected, rtol=1e-4, atol=1e-5):
    """float32 vs float64 reference: atol scales with the magnitude of the expected values."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    assert np.shape(actual) == expected.shape
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol * scale)


# ---------------------------------------------------------------------------------------------
# convolution and lowering

# (N, C, H, W, K, kernel_size, stride, padding)
CONV_CASES = {
    "1x1": (2, 3, 5, 5, 4, 1, 1, 0),
    "batch1-3x3-pad1": (1, 3, 7, 7, 2, 3, 1, 1),
    "C1-odd-nonsquare-5x5-pad2": (2, 1, 9, 7, 3, 5, 1, 2),
    "2x2-stride2": (2, 3, 6, 5, 2, 2, 2, 0),
    "3x3-stride2-pad1": (2, 3, 8, 9, 4, 3, 2, 1),
    "7x7-stride3-pad3": (1, 2, 11, 10, 3, 7, 3, 3),
    "5x5-stride3-pad1": (2, 3, 10, 11, 2, 5, 3, 1),
    "3x3-pad2-grows": (1, 1, 4, 5, 2, 3, 1, 2),
    "stride-above-kernel": (2, 2, 9, 9, 2, 2, 3, 0),
    "nonsquare-kernel-3x5": (2, 2, 7, 9, 3, (3, 5), 1, (1, 2)),
    "pair-stride-padding": (2, 3, 9, 8, 2, 3, (2, 1), (0, 2)),
    "kernel-fills-padded-input": (1, 2, 3, 4, 2, (5, 6), 1, 1),
}
CONV_IDS = list(CONV_CASES)


def conv_inputs(case, dtype=np.float32):
    N, C, H, W, Kout, ks, stride, padding = CONV_CASES[case]
    R, S = ref.pair(ks)
    x = rand(N, C, H, W, dtype=dtype, seed=1)
    w = rand(Kout, C, R, S, dtype=dtype, seed=2)
    b = rand(Kout, dtype=dtype, seed=3)
    return x, w, b, stride, padding


@pytest.mark.parametrize("case", CONV_IDS)
def test_im2col_matches_reference(case):
    x, w, _, stride, padding = conv_inputs(case)
    col = K.im2col(x, w.shape[2:], stride, padding)
    expected = ref.im2col(x, w.shape[2:], stride, padding)
    # a pure copy: bit-exact
    np.testing.assert_array_equal(col, expected.astype(np.float32))


@pytest.mark.parametrize("case", CONV_IDS)
def test_col2im_matches_reference(case):
    x, w, _, stride, padding = conv_inputs(case)
    shape = ref.im2col(x, w.shape[2:], stride, padding).shape
    col = rand(*shape, seed=4)
    dx = K.col2im(col, x.shape, w.shape[2:], stride, padding)
    assert_close(dx, ref.col2im(col, x.shape, w.shape[2:], stride, padding))


@pytest.mark.parametrize("case", CONV_IDS)
def test_col2im_is_adjoint_of_im2col(case):
    """<im2col(x), c> == <x, col2im(c)> in float64."""
    x, w, _, stride, padding = conv_inputs(case, dtype=np.float64)
    col_x = K.im2col(x, w.shape[2:], stride, padding)
    c = rand(*col_x.shape, dtype=np.float64, seed=5)
    lhs = float(np.vdot(col_x, c))
    rhs = float(np.vdot(x, K.col2im(c, x.shape, w.shape[2:], stride, padding)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_im2col_out_buffer_is_filled_in_place():
    x, w, _, stride, padding = conv_inputs("3x3-stride2-pad1")
    expected = K.im2col(x, 3, stride, padding)
    out = np.full(expected.shape, np.nan, dtype=np.float32)
    assert K.im2col(x, 3, stride, padding, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("case", CONV_IDS)
def test_conv_forward_matches_reference(case):
    x, w, b, stride, padding = conv_inputs(case)
    y = K.conv2d_forward(x, w, b, stride, padding)
    assert y.dtype == np.float32
    assert_close(y, ref.conv2d_forward(x, w, b, stride, padding))


def test_conv_forward_without_bias():
    x, w, _, stride, padding = conv_inputs("C1-odd-nonsquare-5x5-pad2")
    assert_close(K.conv2d_forward(x, w, None, stride, padding),
                 ref.conv2d_forward(x, w, None, stride, padding))


@pytest.mark.parametrize("case", CONV_IDS)
def test_conv_backward_matches_reference(case):
    x, w, b, stride, padding = conv_inputs(case)
    y = K.conv2d_forward(x, w, b, stride, padding)
    dy = rand(*y.shape, seed=6)
    dx, dw, db = K.conv2d_backward(dy, x, w, stride, padding)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, stride, padding)
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float32,) * 3
    assert_close(dx, rdx)
    assert_close(dw, rdw)
    assert_close(db, rdb)


@pytest.mark.parametrize("case", ["3x3-stride2-pad1", "nonsquare-kernel-3x5", "7x7-stride3-pad3"])
def test_conv_float64_matches_reference_tightly(case):
    x, w, b, stride, padding = conv_inputs(case, dtype=np.float64)
    y = K.conv2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, w, b, stride, padding), rtol=1e-12,
                               atol=1e-12)
    dy = rand(*y.shape, dtype=np.float64, seed=6)
    for got, want in zip(K.conv2d_backward(dy, x, w, stride, padding),
                         ref.conv2d_backward(dy, x, w, stride, padding), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["batch1-3x3-pad1", "pair-stride-padding"])
def test_conv_gradients_finite_difference_float64(case):
    """Directional derivatives of L = <conv(x, w, b), g> match <dx, u>, <dw, v>, <db, t>."""
    x, w, b, stride, padding = conv_inputs(case, dtype=np.float64)
    g = rand(*K.conv2d_forward(x, w, b, stride, padding).shape, dtype=np.float64, seed=7)
    dx, dw, db = K.conv2d_backward(g, x, w, stride, padding)

    def loss(x_, w_, b_):
        return float(np.vdot(K.conv2d_forward(x_, w_, b_, stride, padding), g))

    eps = 1e-6
    u, v, t = (rand(*a.shape, dtype=np.float64, seed=8 + i) for i, a in enumerate((x, w, b)))
    fd_x = (loss(x + eps * u, w, b) - loss(x - eps * u, w, b)) / (2 * eps)
    fd_w = (loss(x, w + eps * v, b) - loss(x, w - eps * v, b)) / (2 * eps)
    fd_b = (loss(x, w, b + eps * t) - loss(x, w, b - eps * t)) / (2 * eps)
    assert fd_x == pytest.approx(np.vdot(dx, u), rel=1e-7, abs=1e-7)
    assert fd_w == pytest.approx(np.vdot(dw, v), rel=1e-7, abs=1e-7)
    assert fd_b == pytest.approx(np.vdot(db, t), rel=1e-7, abs=1e-7)


def test_conv_accepts_non_contiguous_inputs():
    x, w, b, stride, padding = conv_inputs("3x3-stride2-pad1")
    x_f = np.asfortranarray(x)
    w_view = np.ascontiguousarray(w.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    assert not x_f.flags.c_contiguous and not w_view.flags.c_contiguous
    np.testing.assert_array_equal(K.conv2d_forward(x_f, w_view, b, stride, padding),
                                  K.conv2d_forward(x, w, b, stride, padding))


def test_conv_algo_auto_is_lowering_with_autotune_off(monkeypatch):
    monkeypatch.setenv("HPCNN_AUTOTUNE", "off")
    x, w, b, stride, padding = conv_inputs("5x5-stride3-pad1")
    y_auto = K.conv2d_forward(x, w, b, stride, padding, algo="auto")
    y_low = K.conv2d_forward(x, w, b, stride, padding, algo="lowering")
    np.testing.assert_array_equal(y_auto, y_low)
    dy = rand(*y_auto.shape, seed=9)
    for a, c in zip(K.conv2d_backward(dy, x, w, stride, padding, algo="auto"),
                    K.conv2d_backward(dy, x, w, stride, padding, algo="lowering"), strict=True):
        np.testing.assert_array_equal(a, c)


def test_conv_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = rand(4, 3, 12, 10, seed=11), rand(5, 3, 5, 5, seed=12), rand(5, seed=13)
    stride, padding = (2, 1), (2, 1)
    xt, wt, bt = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, w, b))
    yt = F.conv2d(xt, wt, bt, stride=stride, padding=padding)
    dy = rand(*yt.shape, seed=14)
    yt.backward(torch.from_numpy(dy))
    y = K.conv2d_forward(x, w, b, stride, padding)
    dx, dw, db = K.conv2d_backward(dy, x, w, stride, padding)
    for ours, theirs in [(y, yt), (dx, xt.grad), (dw, wt.grad), (db, bt.grad)]:
        assert_close(ours, theirs.detach().numpy().astype(np.float64))


# ---------------------------------------------------------------------------------------------
# pooling

# (N, C, H, W, kernel_size, stride, padding)
POOL_CASES = {
    "cifar-3x3s2-32": (1, 2, 32, 32, 3, 2, 0),
    "3x3s2-pad1-odd": (2, 3, 7, 9, 3, 2, 1),
    "2x2-default-stride": (2, 1, 6, 8, 2, None, 0),
    "ceil-correction": (1, 2, 4, 5, 3, 3, 2),
    "nonsquare-kernel-pair-stride": (2, 2, 7, 8, (2, 3), (1, 2), (1, 1)),
    "5x5s3-pad2": (1, 3, 11, 10, 5, 3, 2),
    "batch1-C1-global": (1, 1, 5, 5, 5, 1, 0),
    # wide enough for the passes along rows (hpcnn.kernels.pool.separable), with padding,
    # ceil-mode windows that hang over the right and bottom edges, and a non-square window
    "wide-3x3s2-pad1-odd": (2, 3, 7, 33, 3, 2, 1),
    "wide-nonsquare": (1, 2, 9, 20, (2, 3), (1, 2), (1, 1)),
    "wide-5x5s3-pad2": (1, 3, 11, 19, 5, 3, 2),
}
POOL_IDS = list(POOL_CASES)


def pool_inputs(case, dtype=np.float32):
    N, C, H, W, ks, stride, padding = POOL_CASES[case]
    return rand(N, C, H, W, dtype=dtype, seed=20), ks, stride, padding


def test_pool_output_sizes_follow_caffe_ceil_mode():
    x = rand(2, 3, 32, 32, seed=21)
    shapes = []
    for _ in range(3):
        x, _ = K.maxpool2d_forward(x, 3, 2)
        shapes.append(x.shape[2:])
    assert shapes == [(16, 16), (8, 8), (4, 4)]
    assert K.avgpool2d_forward(rand(1, 1, 16, 16), 3, 2).shape == (1, 1, 8, 8)
    # the padding correction: the last window would start in the bottom padding
    assert K.avgpool2d_forward(rand(1, 1, 4, 5), 3, 3, 2).shape == (1, 1, 2, 3)
    assert ref.pool_output_size(4, 3, 3, 2) == 2


@pytest.fixture(params=["as chosen", "passes", "one output at a time"])
def maxpool_path(request, monkeypatch):
    """Max pooling's two NaN-free paths, each forced on every shape (the separable passes also on
    narrow planes and windows that do not overlap), and the choice of
    :func:`hpcnn.kernels.pool.separable`."""
    from hpcnn.kernels import pool

    if request.param != "as chosen":
        forced = request.param == "passes"
        monkeypatch.setattr(pool, "separable", lambda *args: forced)
    return request.param


@pytest.mark.parametrize("case", POOL_IDS)
def test_maxpool_forward_matches_reference(case, maxpool_path):
    x, ks, stride, padding = pool_inputs(case)
    y, argmax = K.maxpool2d_forward(x, ks, stride, padding)
    ry, rarg = ref.maxpool2d_forward(x, ks, stride, padding)
    np.testing.assert_array_equal(y, ry.astype(np.float32))
    np.testing.assert_array_equal(argmax, rarg)


@pytest.mark.parametrize("case", POOL_IDS)
def test_maxpool_backward_matches_reference(case, maxpool_path):
    x, ks, stride, padding = pool_inputs(case)
    y, argmax = K.maxpool2d_forward(x, ks, stride, padding)
    dy = rand(*y.shape, seed=22)
    dx = K.maxpool2d_backward(dy, argmax, x.shape)
    assert_close(dx, ref.maxpool2d_backward(dy, x, ks, stride, padding))
    dx64 = K.maxpool2d_backward(dy, argmax.astype(np.int64), x.shape)
    np.testing.assert_array_equal(dx64, dx)


@pytest.mark.parametrize("bad", [-1, 16])
def test_maxpool_backward_rejects_an_argmax_outside_the_plane(bad):
    """An index outside [0, H*W) (a damaged or foreign argmax) is one clear error, checked in the
    backward's own pass, and the arrays given are left as they were."""
    x = rand(2, 3, 4, 4, seed=25)
    y, argmax = K.maxpool2d_forward(x, 2, 2)
    argmax[1, 2, 0, 1] = bad
    before, dy = argmax.copy(), rand(*y.shape, seed=26)
    dy_before = dy.copy()
    with pytest.raises(ValueError, match=r"argmax holds indices outside \[0, 16\)"):
        K.maxpool2d_backward(dy, argmax, x.shape)
    np.testing.assert_array_equal(argmax, before)
    np.testing.assert_array_equal(dy, dy_before)


def test_maxpool_ties_pick_first_cell_and_nan_propagates(maxpool_path):
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    y, argmax = K.maxpool2d_forward(x, 2, 2)
    np.testing.assert_array_equal(argmax[0, 0], [[0, 2], [8, 10]])
    x[0, 0, 1, 1] = np.nan
    y, _ = K.maxpool2d_forward(x, 2, 2)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1, 1])


def test_maxpool_nan_on_a_wide_plane_propagates_to_its_windows_only(maxpool_path):
    """A NaN in one plane of a batch: its windows, and only those, give NaN, with the NaN's
    index; the other planes are untouched by the NaN path."""
    x = rand(2, 2, 6, 32, seed=24)
    x[1, 0, 2, 7] = np.nan
    y, argmax = K.maxpool2d_forward(x, 3, 2)
    ry, rarg = ref.maxpool2d_forward(np.nan_to_num(x, nan=-np.inf), 3, 2)
    hit = np.zeros(y.shape, dtype=bool)
    hit[1, 0, 0:2, 3] = True  # the windows of rows 0-2 and 2-4 and columns 6-8 cover (2, 7)
    assert np.isnan(y[hit]).all() and (argmax[hit] == 2 * 32 + 7).all()
    np.testing.assert_array_equal(y[~hit], ry.astype(np.float32)[~hit])
    np.testing.assert_array_equal(argmax[~hit], rarg[~hit])


@pytest.mark.parametrize("case", POOL_IDS)
def test_maxpool_ties_match_reference_on_overlapping_windows(case, maxpool_path):
    """Values from {-1, 0, 1} and -inf: most windows hold ties, and some hold only -inf, so the
    first-occurrence rule is checked across rows and columns of overlapping windows."""
    x, ks, stride, padding = pool_inputs(case)
    x = np.round(x).astype(np.float32)
    x[..., ::3, 1::2] = -np.inf
    y, argmax = K.maxpool2d_forward(x, ks, stride, padding)
    ry, rarg = ref.maxpool2d_forward(x, ks, stride, padding)
    np.testing.assert_array_equal(y, ry.astype(np.float32))
    # a window of -inf only: the reference finds no '>' and says -1; the kernel names the
    # window's first cell (still a valid index for the backward pass)
    kh, kw, sh, sw, ph, pw = ref._pool_args(ks, stride, padding)
    P, Q = y.shape[2:]
    first = (np.maximum(np.arange(P) * sh - ph, 0)[:, None] * x.shape[3]
             + np.maximum(np.arange(Q) * sw - pw, 0)[None, :])
    np.testing.assert_array_equal(argmax, np.where(rarg < 0, first, rarg))


@pytest.mark.parametrize("case", POOL_IDS)
def test_avgpool_forward_matches_reference(case):
    x, ks, stride, padding = pool_inputs(case)
    y = K.avgpool2d_forward(x, ks, stride, padding)
    assert_close(y, ref.avgpool2d_forward(x, ks, stride, padding))


@pytest.mark.parametrize("case", POOL_IDS)
def test_avgpool_backward_matches_reference(case):
    x, ks, stride, padding = pool_inputs(case)
    dy = rand(*K.avgpool2d_forward(x, ks, stride, padding).shape, seed=23)
    dx = K.avgpool2d_backward(dy, x.shape, ks, stride, padding)
    assert_close(dx, ref.avgpool2d_backward(dy, x.shape, ks, stride, padding))


def test_avgpool_uses_caffe_divisor_at_padded_border():
    # ones, 3x3 window, pad 1: the corner window covers 4 image cells and 5 padding cells but
    # Caffe divides by all 9 (the window lies inside the padded image)
    y = K.avgpool2d_forward(np.ones((1, 1, 4, 4), dtype=np.float32), 3, 2, 1)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9)
    assert y[0, 0, 1, 1] == pytest.approx(9 / 9)


@pytest.mark.parametrize("case", ["3x3s2-pad1-odd", "nonsquare-kernel-pair-stride"])
def test_pool_backward_is_adjoint_float64(case):
    """<pool(x), g> == <x, pool_backward(g)>: avgpool is linear, maxpool is for a fixed argmax."""
    x, ks, stride, padding = pool_inputs(case, dtype=np.float64)
    y = K.avgpool2d_forward(x, ks, stride, padding)
    g = rand(*y.shape, dtype=np.float64, seed=24)
    assert np.vdot(y, g) == pytest.approx(
        np.vdot(x, K.avgpool2d_backward(g, x.shape, ks, stride, padding)), rel=1e-12)
    y, argmax = K.maxpool2d_forward(x, ks, stride, padding)
    assert np.vdot(y, g) == pytest.approx(np.vdot(x, K.maxpool2d_backward(g, argmax, x.shape)),
                                          rel=1e-12)


# ---------------------------------------------------------------------------------------------
# relu, bias, linear


@pytest.mark.parametrize("shape", [(3, 4, 5, 7), (2, 40000), (1,)])
def test_relu_forward_backward(shape):
    x = rand(*shape, seed=30)
    x.flat[0] = 0.0  # the kink: relu'(0) is taken as 0, as in Caffe
    y = K.relu_forward(x)
    np.testing.assert_array_equal(y, ref.relu_forward(x))
    dy = rand(*shape, seed=31)
    np.testing.assert_array_equal(K.relu_backward(dy, y), ref.relu_backward(dy, y))
    # in place
    x2 = x.copy()
    assert K.relu_forward(x2, out=x2) is x2
    np.testing.assert_array_equal(x2, y)


def test_relu_propagates_nan():
    y = K.relu_forward(np.array([np.nan, -1.0, 2.0], dtype=np.float32))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (7, 10), (2, 3, 5)])
def test_bias_forward_backward(shape):
    x = rand(*shape, seed=32)
    b = rand(shape[1], seed=33)
    assert_close(K.bias_forward(x, b), ref.bias_forward(x, b))
    dy = rand(*shape, seed=34)
    db = K.bias_backward(dy)
    assert db.shape == (shape[1],) and db.dtype == np.float32
    assert_close(db, ref.bias_backward(dy))


def test_bias_backward_large_sums_accurately():
    dy = np.full((100, 4, 32, 32), 0.1, dtype=np.float32)
    np.testing.assert_allclose(K.bias_backward(dy), np.float32(0.1) * 100 * 32 * 32, rtol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_backward(with_bias):
    x, w = rand(5, 7, seed=40), rand(3, 7, seed=41)
    b = rand(3, seed=42) if with_bias else None
    y = K.linear_forward(x, w, b)
    assert y.dtype == np.float32
    assert_close(y, ref.linear_forward(x, w, b))
    dy = rand(5, 3, seed=43)
    for got, want in zip(K.linear_backward(dy, x, w), ref.linear_backward(dy, x, w),
                         strict=True):
        assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# softmax cross-entropy


def test_softmax_cross_entropy_matches_reference():
    z = rand(6, 10, seed=50) * 3
    labels = np.array([0, 9, 3, 3, 5, 1])
    loss, dz = K.softmax_cross_entropy(z, labels)
    rloss, rdz = ref.softmax_cross_entropy(z, labels)
    assert isinstance(loss, float) and loss == pytest.approx(rloss, rel=1e-6)
    assert dz.dtype == np.float32
    assert_close(dz, rdz, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dz.sum(axis=1), 0.0, atol=1e-7)


def test_softmax_cross_entropy_uniform_logits_give_log_m():
    loss, dz = K.softmax_cross_entropy(np.zeros((4, 8), dtype=np.float32), np.arange(4))
    assert loss == pytest.approx(np.log(8))
    assert dz[0, 0] == pytest.approx((1 / 8 - 1) / 4)


def test_softmax_cross_entropy_huge_logits_stay_finite():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4 - 1.0]], dtype=np.float32)
    loss, dz = K.softmax_cross_entropy(z, np.array([1, 2]))
    assert np.isfinite(loss) and np.all(np.isfinite(dz))
    rloss, rdz = ref.softmax_cross_entropy(z, [1, 2])
    assert loss == pytest.approx(rloss, rel=1e-6)  # ~ (1e4 + (1 + log(1 + e^-1))) / 2
    assert_close(dz, rdz, rtol=1e-5, atol=1e-7)


def test_softmax_cross_entropy_finite_difference_float64():
    z = rand(3, 5, dtype=np.float64, seed=51)
    labels = np.array([4, 0, 2])
    _, dz = K.softmax_cross_entropy(z, labels)
    eps = 1e-6
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        fd[idx] = (K.softmax_cross_entropy(zp, labels)[0]
                   - K.softmax_cross_entropy(zm, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(dz, fd, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# validation: wrong input raises ValueError naming the shapes

x4 = np.zeros((2, 3, 8, 8), dtype=np.float32)
w4 = np.zeros((4, 3, 3, 3), dtype=np.float32)

BAD_CALLS = {
    "conv-float16": (lambda: K.conv2d_forward(x4.astype(np.float16), w4), "float16"),
    "conv-int": (lambda: K.conv2d_forward(x4, w4.astype(np.int32)), "int32"),
    "conv-mixed-dtypes": (lambda: K.conv2d_forward(x4.astype(np.float64), w4), "(4, 3, 3, 3)"),
    "conv-ndim": (lambda: K.conv2d_forward(x4[0], w4), "(3, 8, 8)"),
    "conv-channels": (lambda: K.conv2d_forward(x4, w4[:, :2]),
                      "x has 3 channels but w expects 2 (x (2, 3, 8, 8), w (4, 2, 3, 3))"),
    "conv-kernel-too-big": (lambda: K.conv2d_forward(x4, np.zeros((4, 3, 11, 3), np.float32),
                                                     padding=1), "(10, 10)"),
    "conv-unknown-algo": (lambda: K.conv2d_forward(x4, w4, algo="fft"), "'lowering'"),
    "conv-stride-0": (lambda: K.conv2d_forward(x4, w4, stride=0), "stride (0, 0)"),
    "conv-negative-padding": (lambda: K.conv2d_forward(x4, w4, padding=(1, -1)), "(1, -1)"),
    "conv-bad-bias": (lambda: K.conv2d_forward(x4, w4, np.zeros(5, np.float32)), "(5,)"),
    "conv-bwd-dy-shape": (lambda: K.conv2d_backward(np.zeros((2, 4, 5, 6), np.float32), x4, w4),
                          "(2, 4, 6, 6)"),
    "conv-bwd-unknown-algo": (lambda: K.conv2d_backward(np.zeros((2, 4, 6, 6), np.float32), x4,
                                                        w4, algo="nope"), "'nope'"),
    "im2col-ndim": (lambda: K.im2col(x4[0], 3), "(3, 8, 8)"),
    "im2col-out-shape": (lambda: K.im2col(x4, 3, out=np.zeros((27, 5), np.float32)), "(27, 72)"),
    "col2im-shape": (lambda: K.col2im(np.zeros((27, 71), np.float32), x4.shape, 3), "(27, 72)"),
    "pool-pad-ge-kernel": (lambda: K.maxpool2d_forward(x4, 2, 2, 2), "(2, 2)"),
    "pool-kernel-too-big": (lambda: K.avgpool2d_forward(x4, 9), "(2, 3, 8, 8)"),
    "pool-empty-last-window": (lambda: K.maxpool2d_forward(x4, 1, 3), "(2, 3, 8, 8)"),
    "maxpool-bwd-argmax-dtype": (lambda: K.maxpool2d_backward(
        np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 4), np.float32), x4.shape),
        "float32"),
    "maxpool-bwd-argmax-range": (lambda: K.maxpool2d_backward(
        np.zeros((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), 64, np.int32), x4.shape),
        "(2, 3, 8, 8)"),
    "avgpool-bwd-dy-shape": (lambda: K.avgpool2d_backward(np.zeros((2, 3, 3, 4), np.float32),
                                                          x4.shape, 2), "(2, 3, 4, 4)"),
    "relu-bwd-shape": (lambda: K.relu_backward(x4, x4[:1]), "(1, 3, 8, 8)"),
    "bias-channels": (lambda: K.bias_forward(x4, np.zeros(4, np.float32)), "(4,)"),
    "linear-features": (lambda: K.linear_forward(np.zeros((2, 5), np.float32),
                                                 np.zeros((3, 4), np.float32)), "(3, 4)"),
    "linear-bwd-dy": (lambda: K.linear_backward(np.zeros((2, 4), np.float32),
                                                np.zeros((2, 5), np.float32),
                                                np.zeros((3, 5), np.float32)), "(2, 3)"),
    "softmax-label-range": (lambda: K.softmax_cross_entropy(np.zeros((2, 3), np.float32),
                                                            np.array([0, 3])), "(2, 3)"),
    "softmax-negative-label": (lambda: K.softmax_cross_entropy(np.zeros((2, 3), np.float32),
                                                               np.array([-1, 0])), "[0, 3)"),
    "softmax-float-labels": (lambda: K.softmax_cross_entropy(np.zeros((2, 3), np.float32),
                                                             np.array([0.0, 1.0])), "float64"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_value_error_naming_shapes(case):
    call, fragment = BAD_CALLS[case]
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call()
