"""Winograd convolution ("winograd", "winograd4"): transforms, generated kernels, gradients.

The strategies also run in tests/test_conv_algos.py with every other one; here they get the
shapes where Winograd itself runs (stride 1, square 3x3 / 5x5, every padding up to r - 1,
partial tiles, batch 1, one-row chunks), float32 and float64, at 1 and 2 threads, plus finite
differences through the data gradient.
"""

import numba
import numpy as np
import pytest

from hpcnn.kernels import _winograd_gen, conv, winograd
from tests import reference as ref

THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]
VARIANTS = [(algo, r) for algo, sizes in winograd.TILE.items() for r in sizes]


@pytest.fixture(params=["rows", "chunk"])
def form(request, monkeypatch):
    """Both forms of the generated transforms, whatever the row length (see
    winograd.ROW_TILES): one tile row at a time, or all the chunk's tiles at once."""
    monkeypatch.setattr(winograd, "ROW_TILES", 1 if request.param == "rows" else 1 << 30)
    return request.param


@pytest.fixture
def threads():
    old = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(old)


@pytest.mark.parametrize("m, r", _winograd_gen.VARIANTS)
def test_matrices_compute_a_1d_correlation(m, r):
    """AT [(G g) * (BT d)] = the m outputs of correlating d (a values) with g (r values)."""
    at, g, bt = _winograd_gen.matrices(m, r)
    a = m + r - 1
    assert at.shape == (m, a) and g.shape == (a, r) and bt.shape == (a, a)
    assert np.array_equal(bt * 256, np.round(bt * 256)), "data transform must be exact in float32"
    rng = np.random.default_rng(0)
    for _ in range(5):
        gg, d = rng.standard_normal(r), rng.standard_normal(a)
        want = np.array([gg @ d[k:k + r] for k in range(m)])
        np.testing.assert_allclose(at @ ((g @ gg) * (bt @ d)), want, atol=1e-12)


def test_generated_kernels_are_up_to_date():
    """_winograd_tiles.py is exactly what the generator writes (regenerate with
    `python hpcnn/kernels/_winograd_gen.py`)."""
    with open(_winograd_gen.TARGET) as f:
        assert f.read() == _winograd_gen.generate()


def test_no_points_for_other_tiles():
    with pytest.raises(ValueError, match="no interpolation points"):
        _winograd_gen.matrices(3, 3)


@pytest.mark.parametrize("m, r", _winograd_gen.VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_transforms_are_g_w_gt_and_its_adjoint(m, r, dtype):
    """U[xi, k, c] = (G w[k, c] G^T)[xi], and dw[k, c] = G^T (sum of the threads' dU) G, the
    partials added in thread order, each against the matrix formula in float64."""
    _, g, _ = _winograd_gen.matrices(m, r)
    a = m + r - 1
    rng = np.random.default_rng(1)
    K, C = 5, 3
    w = rng.standard_normal((K, C, r, r)).astype(dtype)
    U = np.empty((a * a, K, C), dtype=dtype)
    _winograd_gen.weight_transform(w, m, out=U)
    want = np.einsum("uq,kcqs,vs->uvkc", g, w.astype(np.float64), g).reshape(a * a, K, C)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(U, want, rtol=tol, atol=tol)
    _winograd_gen.weight_transform(w, m, turned=True, out=U)  # of w turned by 180 degrees
    want = np.einsum("uq,kcqs,vs->uvkc", g, w[:, :, ::-1, ::-1].astype(np.float64), g)
    np.testing.assert_allclose(U, want.reshape(a * a, K, C), rtol=tol, atol=tol)
    dUs = rng.standard_normal((3, a * a, K, C)).astype(dtype)
    dw = np.empty((K, C, r, r), dtype=dtype)
    winograd._weight_untransform(dUs, m, dw)
    du = dUs.astype(np.float64).sum(axis=0).reshape(a, a, K, C)
    want = np.einsum("uq,uvkc,vs->kcqs", g, du, g)
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol * 10)


def _case(N, C, H, W, K, r, pad, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = (rng.standard_normal((K, C, r, r)) / np.sqrt(C * r * r)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def _close(got, want, dtype):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape and got.dtype == dtype
    tol = (1e-4 if dtype == np.float32 else 1e-10) * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=tol)


SHAPES = [  # (N, C, H, W, K): odd sizes (partial tiles), batch 1, one channel, wide and tall
    (1, 1, 5, 5, 1),
    (2, 3, 7, 9, 4),
    (3, 5, 10, 6, 2),
    (1, 4, 13, 11, 3),
]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("algo, r", VARIANTS)
def test_matches_reference_every_padding(algo, r, dtype, n_threads, threads, form):
    threads(n_threads)
    for i, (N, C, H, W, K) in enumerate(SHAPES):
        for pad in range(r):
            if H + 2 * pad < r or W + 2 * pad < r:
                continue
            x, w, b = _case(N, C, H, W, K, r, pad, dtype, seed=i)
            for direction in ("forward", "backward"):  # the weight gradient may be direct's
                assert winograd.applies(algo, x.shape, w.shape, (1, 1), (pad, pad), direction)
            geo = winograd._geo(x.shape, K, r, (pad, pad), winograd.tile_size(algo, w.shape),
                                x.itemsize, n_threads, None)[0]
            assert geo[14] == (form == "rows")
            y = ref.conv2d_forward(x, w, b, 1, pad)
            dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
            want = ref.conv2d_backward(dy, x, w, 1, pad)
            for chunk in (None, 1):  # default chunks; one tile row per chunk
                fwd, bwd = conv.ALGOS[algo]
                _close(fwd(x, w, b, (1, 1), (pad, pad), chunk=chunk), y, dtype)
                for got, exp in zip(bwd(dy, x, w, (1, 1), (pad, pad), chunk=chunk), want,
                                    strict=True):
                    _close(got, exp, dtype)
                dx, dw, db = bwd(dy, x, w, (1, 1), (pad, pad), input_grad=False, chunk=chunk)
                assert dx is None
                _close(dw, want[1], dtype)
                _close(db, want[2], dtype)


@pytest.mark.parametrize("algo, r", VARIANTS)
def test_gradients_match_finite_differences(algo, r, form):
    """Central differences of sum(y * dy) in float64, for a few entries of x and w."""
    x, w, b = _case(2, 3, 7, 6, 2, r, 1, np.float64, seed=3)
    fwd, bwd = conv.ALGOS[algo]
    dy = np.random.default_rng(4).standard_normal(fwd(x, w, b, (1, 1), (1, 1)).shape)
    dx, dw, _ = bwd(dy, x, w, (1, 1), (1, 1))

    def loss(xx, ww):
        return float((fwd(xx, ww, b, (1, 1), (1, 1)) * dy).sum())

    rng, eps = np.random.default_rng(5), 1e-6
    for arr, grad in ((x, dx), (w, dw)):
        for _ in range(6):
            idx = tuple(int(rng.integers(s)) for s in arr.shape)
            old = arr[idx]
            arr[idx] = old + eps
            up = loss(x, w)
            arr[idx] = old - eps
            down = loss(x, w)
            arr[idx] = old
            assert abs((up - down) / (2 * eps) - grad[idx]) < 1e-6 * max(1.0, abs(grad[idx]))


def test_other_shapes_run_lowering_and_are_not_tuned():
    """Stride 2, a 7x7 kernel or padding >= r: the strategy is correct (chunked lowering) but
    not offered to the autotuner."""
    for xs, ws, stride, pad in (((2, 3, 9, 9), (2, 3, 3, 3), 2, 1),
                                ((1, 2, 12, 12), (3, 2, 7, 7), 1, 3),
                                ((1, 2, 6, 6), (3, 2, 3, 3), 1, 3)):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        for algo in winograd.TILE:
            assert not winograd.applies(algo, xs, ws, (stride, stride), (pad, pad))
            assert algo not in conv.candidates(xs, ws, (stride, stride), (pad, pad))
            _close(conv.conv2d_forward(x, w, None, stride, pad, algo=algo),
                   ref.conv2d_forward(x, w, None, stride, pad), np.float32)
    assert "winograd" in conv.candidates((1, 8, 9, 9), (4, 8, 3, 3), (1, 1), (1, 1),
                                         direction="forward")
    assert "winograd4" in conv.candidates((1, 8, 9, 9), (4, 8, 5, 5), (1, 1), (2, 2),
                                          direction="forward")  # F(4x4, 5x5)
    assert "winograd4" not in conv.candidates((1, 8, 9, 9), (4, 8, 7, 7), (1, 1), (3, 3))


def test_workspace_is_chunk_sized():
    xs, ws = (32, 96, 28, 28), (128, 96, 3, 3)
    lowering = conv.workspace_bytes("lowering", xs, ws, 1, 1)[0]
    for algo in winograd.TILE:
        for backward in (False, True):
            total, lowered = conv.workspace_bytes(algo, xs, ws, 1, 1, 4, 2, backward)
            assert 0 < lowered <= total < lowering / 4  # chunks of >= 256 tiles, not the batch
