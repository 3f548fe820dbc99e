"""Every convolution strategy (hpcnn.kernels.conv.ALGOS, and "auto") against the references.

- awkward small shapes against the naive loops of tests/reference.py, float32 and float64, at 1
  and 2 Numba threads;
- every reference layer of hpcnn/bench/conv_layers.json at batch 2, against a vectorized float64
  NumPy reference (checked against the naive one here too);
- tiny chunks, so that the multi-chunk and multi-band paths run;
- the autotuner: forced modes, choices stable for a given cache file, corrupt and foreign cache
  files falling back cleanly, tuners holding their own choices, no import of conv.
"""

import json
import os
import subprocess
import sys
import warnings

import numba
import numpy as np
import pytest

from hpcnn.kernels import autotune, conv, mec, pipelined
from tests import reference as ref

ALGOS = list(conv.ALGOS)
THREADS = [1, 2] if numba.config.NUMBA_NUM_THREADS >= 2 else [1]
LAYERS_FILE = os.path.join(os.path.dirname(conv.__file__), "..", "bench", "conv_layers.json")

# (N, C, H, W, K, (R, S), stride, padding)
CASES = {
    "batch1-C1-1x1": (1, 1, 5, 4, 3, (1, 1), 1, 0),
    "1x1-C3": (3, 3, 6, 7, 5, (1, 1), 1, 0),
    "1x1-stride2": (2, 4, 7, 6, 3, (1, 1), 2, 0),
    "1x1-pad1": (2, 3, 4, 5, 2, (1, 1), 1, 1),
    "odd-3x3-pad1": (2, 3, 7, 9, 4, (3, 3), 1, 1),
    "nonsquare-3x5-pad(1,2)": (3, 2, 9, 7, 3, (3, 5), 1, (1, 2)),
    "5x5-pad2-C3": (2, 3, 11, 10, 4, (5, 5), 1, 2),
    "5x5-stride2-pad3": (1, 3, 12, 9, 2, (5, 5), 2, 3),
    "7x7-stride3-pad3-C1": (2, 1, 13, 11, 3, (7, 7), 3, 3),
    "2x2-stride(1,3)-pad0": (3, 2, 6, 10, 2, (2, 2), (1, 3), 0),
    "stride(2,1)-pad(0,1)": (2, 3, 9, 8, 3, (3, 3), (2, 1), (0, 1)),
    "kernel-fills-padded": (2, 2, 3, 4, 2, (5, 6), 1, 1),
}


def _inputs(case, dtype, seed=0):
    N, C, H, W, K, (R, S), stride, padding = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b, stride, padding


def _close(got, want, dtype):
    """float32: 1e-4 of the largest reference value; float64: 1e-10."""
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert got.dtype == dtype
    tol = (1e-4 if dtype == np.float32 else 1e-10) * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=tol)


@pytest.fixture
def threads():
    old = numba.get_num_threads()

    def set_(n):
        numba.set_num_threads(n)

    yield set_
    numba.set_num_threads(old)


@pytest.fixture
def fresh_autotune(monkeypatch):
    """The default tuner (of calls that name none): no cache file, tuning on, no remembered
    choices (before and after)."""
    monkeypatch.delenv("HPCNN_AUTOTUNE_CACHE", raising=False)
    monkeypatch.delenv("HPCNN_AUTOTUNE", raising=False)
    conv.DEFAULT_TUNER.reset()
    yield conv.DEFAULT_TUNER
    conv.DEFAULT_TUNER.reset()


# ---------------------------------------------------------------------------------------------
# strategies vs the naive reference


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_algo_matches_reference(case, dtype, n_threads, threads, fresh_autotune):
    threads(n_threads)
    x, w, b, stride, padding = _inputs(CASES[case], dtype)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(9).standard_normal(y_ref.shape).astype(dtype)
    grads_ref = ref.conv2d_backward(dy, x, w, stride, padding)
    for algo in [*ALGOS, "auto"]:
        _close(conv.conv2d_forward(x, w, b, stride, padding, algo=algo), y_ref, dtype)
        for got, want in zip(conv.conv2d_backward(dy, x, w, stride, padding, algo=algo),
                             grads_ref, strict=True):
            _close(got, want, dtype)
        dx, dw, db = conv.conv2d_backward(dy, x, w, stride, padding, algo=algo,
                                          input_grad=False)
        assert dx is None
        _close(dw, grads_ref[1], dtype)
        _close(db, grads_ref[2], dtype)


@pytest.mark.parametrize("algo", ALGOS)
def test_forward_without_bias(algo):
    x, w, _, stride, padding = _inputs(CASES["odd-3x3-pad1"], np.float32)
    _close(conv.conv2d_forward(x, w, None, stride, padding, algo=algo),
           ref.conv2d_forward(x, w, None, stride, padding), np.float32)


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("algo", [a for a in ALGOS if a not in ("lowering", "direct")])
def test_tiny_chunks_run_many_chunks_and_bands(algo, n_threads, threads):
    """64-byte chunks: one output pixel per chunk, bands of one row, every image split."""
    threads(n_threads)
    case = (3, 3, 7, 6, 4, (3, 3), 1, 1)
    x, w, b, stride, padding = _inputs(case, np.float64)
    s2, p2 = (1, 1), (1, 1)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(3).standard_normal(y_ref.shape)
    grads_ref = ref.conv2d_backward(dy, x, w, stride, padding)
    fwd, bwd = conv.ALGOS[algo]
    for chunk in (64, 2000, 1 << 30):  # rows of one pixel, bands, several whole images
        _close(fwd(x, w, b, s2, p2, chunk=chunk), y_ref, np.float64)
        for got, want in zip(bwd(dy, x, w, s2, p2, chunk=chunk), grads_ref, strict=True):
            _close(got, want, np.float64)
        dx, dw, db = bwd(dy, x, w, s2, p2, input_grad=False, chunk=chunk)
        assert dx is None
        _close(dw, grads_ref[1], np.float64)
        _close(db, grads_ref[2], np.float64)


# (N, C, H, W, K, (R, S), stride, padding): output channels 1..40 (panels of 8 and 16 with
# dropped columns), 1..7 output pixels per image (tiles of fewer than 6), windows of S*C = 3..15
# floats (the weight gradient's 16-wide reads run past them), stride 2 (data gradient from
# "chunked"), padding above R-1 (likewise)
DIRECT_CASES = [
    (1, 3, 5, 5, 24, (5, 5), 1, 2),
    (3, 1, 3, 3, 1, (3, 3), 1, 0),
    (2, 5, 4, 3, 17, (3, 3), 1, 1),
    (2, 2, 6, 7, 40, (3, 2), 1, (2, 1)),
    (3, 4, 9, 8, 9, (3, 3), 2, 1),
    (2, 3, 4, 5, 7, (1, 1), 1, 1),
    (5, 6, 2, 3, 33, (1, 3), (1, 2), 0),
]


@pytest.mark.parametrize("n_threads", THREADS)
@pytest.mark.parametrize("case", DIRECT_CASES, ids=str)
def test_direct_ragged_tiles(case, n_threads, threads, monkeypatch):
    """"direct" against the naive reference where its tiles, panels and weight-gradient chunks
    are ragged; weight-gradient bands of one output row and of the whole image."""
    from hpcnn.kernels import direct

    threads(n_threads)
    x, w, b, stride, padding = _inputs(case, np.float32, seed=5)
    stride, padding = ref.pair(stride), ref.pair(padding)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(6).standard_normal(y_ref.shape).astype(np.float32)
    grads_ref = ref.conv2d_backward(dy, x, w, stride, padding)
    _close(direct.forward(x, w, b, stride, padding), y_ref, np.float32)
    for chunk in (1, 1 << 30):
        monkeypatch.setattr(direct, "BAND_PIXELS", chunk)
        for got, want in zip(direct.backward(dy, x, w, stride, padding), grads_ref, strict=True):
            _close(got, want, np.float32)
        dx, dw, db = direct.backward(dy, x, w, stride, padding, input_grad=False)
        assert dx is None
        _close(dw, grads_ref[1], np.float32)
        _close(db, grads_ref[2], np.float32)


@pytest.mark.parametrize("case", DIRECT_CASES[:4], ids=str)
def test_direct_gradients_by_finite_differences(case):
    """"direct" is float32 only (float64 runs "chunked"), so the finite differences are taken in
    float32: y is linear in x, in w and in b, so L(t + v) - L(t - v) = 2 <dL/dt, v> holds up to
    rounding for any direction v, with no truncation error, and L = sum(y * G) is summed in
    float64."""
    from hpcnn.kernels import direct

    x, w, b, stride, padding = _inputs(case, np.float32, seed=7)
    stride, padding = ref.pair(stride), ref.pair(padding)
    rng = np.random.default_rng(8)
    G = rng.standard_normal(direct.forward(x, w, b, stride, padding).shape).astype(np.float32)
    dx, dw, db = direct.backward(G, x, w, stride, padding)

    def loss(x_, w_, b_):
        return float(np.sum(direct.forward(x_, w_, b_, stride, padding).astype(np.float64) * G))

    for name, grad in (("x", dx), ("w", dw), ("b", db)):
        v = rng.standard_normal(grad.shape).astype(np.float32)
        args = {"x": x, "w": w, "b": b}
        plus = dict(args, **{name: args[name] + v})
        minus = dict(args, **{name: args[name] - v})
        numeric = (loss(plus["x"], plus["w"], plus["b"])
                   - loss(minus["x"], minus["w"], minus["b"])) / 2
        analytic = float(np.sum(grad.astype(np.float64) * v))
        assert abs(numeric - analytic) <= 1e-4 * (abs(analytic) + np.abs(grad).sum()), name


def test_chunk_size_from_environment(monkeypatch):
    monkeypatch.setenv("HPCNN_CONV_CHUNK", "1K")
    assert pipelined.chunk_bytes() == 1024
    x, w, b, stride, padding = _inputs(CASES["5x5-pad2-C3"], np.float32)
    y_ref = ref.conv2d_forward(x, w, b, stride, padding)
    for algo in ("chunked", "pipelined", "mec"):
        _close(conv.conv2d_forward(x, w, b, stride, padding, algo=algo), y_ref, np.float32)
    monkeypatch.setenv("HPCNN_CONV_CHUNK", "lots")
    with pytest.raises(ValueError, match="HPCNN_CONV_CHUNK"):
        pipelined.chunk_bytes()


def test_chunked_and_pipelined_agree_bitwise(threads):
    """Same chunks, same per-chunk steps: the two schedules give identical bits."""
    threads(THREADS[-1])
    x, w, b, stride, padding = _inputs((4, 8, 9, 9, 6, (3, 3), 1, 1), np.float32)
    ya = conv.conv2d_forward(x, w, b, stride, padding, algo="chunked")
    yb = conv.conv2d_forward(x, w, b, stride, padding, algo="pipelined")
    assert np.array_equal(ya, yb)
    dy = np.ones_like(ya)
    for ga, gb in zip(conv.conv2d_backward(dy, x, w, stride, padding, algo="chunked"),
                      conv.conv2d_backward(dy, x, w, stride, padding, algo="pipelined")):
        assert np.array_equal(ga, gb)


# ---------------------------------------------------------------------------------------------
# the reference layers, at batch 2, against a vectorized float64 reference


def _fast_ref_forward(x, w, b, stride, padding):
    (sh, sw), (ph, pw) = ref.pair(stride), ref.pair(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = (H + 2 * ph - R) // sh + 1, (W + 2 * pw - S) // sw + 1
    xp = ref.pad_nchw(x.astype(np.float64), ph, pw)
    y = np.zeros((N, K, P, Q))
    for r in range(R):
        for s in range(S):
            patch = xp[:, :, r:r + (P - 1) * sh + 1:sh, s:s + (Q - 1) * sw + 1:sw]
            y += np.einsum("nchw,kc->nkhw", patch, w[:, :, r, s].astype(np.float64))
    return y + b.astype(np.float64)[None, :, None, None]


def _fast_ref_backward(dy, x, w, stride, padding):
    (sh, sw), (ph, pw) = ref.pair(stride), ref.pair(padding)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    _, _, P, Q = dy.shape
    dy = dy.astype(np.float64)
    xp = ref.pad_nchw(x.astype(np.float64), ph, pw)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    for r in range(R):
        for s in range(S):
            sl = (slice(None), slice(None), slice(r, r + (P - 1) * sh + 1, sh),
                  slice(s, s + (Q - 1) * sw + 1, sw))
            dw[:, :, r, s] = np.einsum("nkhw,nchw->kc", dy, xp[sl])
            dxp[sl] += np.einsum("nkhw,kc->nchw", dy, w[:, :, r, s].astype(np.float64))
    return dxp[:, :, ph:ph + H, pw:pw + W], dw, dy.sum(axis=(0, 2, 3))


def test_fast_reference_matches_naive_reference():
    for case in ("5x5-stride2-pad3", "stride(2,1)-pad(0,1)", "nonsquare-3x5-pad(1,2)"):
        x, w, b, stride, padding = _inputs(CASES[case], np.float64)
        y = ref.conv2d_forward(x, w, b, stride, padding)
        np.testing.assert_allclose(_fast_ref_forward(x, w, b, stride, padding), y, atol=1e-12)
        for got, want in zip(_fast_ref_backward(y, x, w, stride, padding),
                             ref.conv2d_backward(y, x, w, stride, padding), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-10)


def _reference_layers():
    with open(LAYERS_FILE) as f:
        data = json.load(f)
    return [(f"{name}/{layer['name']}", layer) for name in ("cifar10_quick", "googlenet")
            for layer in data[name]["layers"]]


@pytest.mark.parametrize("layer", [lay for _, lay in _reference_layers()],
                         ids=[name for name, _ in _reference_layers()])
def test_reference_layers_at_batch_2(layer, fresh_autotune):
    case = (2, layer["C"], layer["H"], layer["W"], layer["K"], (layer["R"], layer["R"]),
            layer["stride"], layer["pad"])
    x, w, b, stride, padding = _inputs(case, np.float32)
    w *= np.float32(1.0 / np.sqrt(w[0].size))  # keep outputs O(1)
    y_ref = _fast_ref_forward(x, w, b, stride, padding)
    dy = np.random.default_rng(5).standard_normal(y_ref.shape).astype(np.float32)
    grads_ref = _fast_ref_backward(dy, x, w, stride, padding)
    small = layer["H"] * layer["W"] <= 32 * 32  # "auto" (which runs them all) on cifar only
    for algo in [*ALGOS, "auto"] if small else ALGOS:
        _close(conv.conv2d_forward(x, w, b, stride, padding, algo=algo), y_ref, np.float32)
        for got, want in zip(conv.conv2d_backward(dy, x, w, stride, padding, algo=algo),
                             grads_ref, strict=True):
            _close(got, want, np.float32)


def test_workspace_bytes_from_plans():
    xs, ws_, s, p = (100, 32, 16, 16), (32, 32, 5, 5), 1, 2
    low = conv.workspace_bytes("lowering", xs, ws_, s, p)
    assert low[1] == 32 * 25 * 100 * 16 * 16 * 4  # the whole batch's column matrix
    for algo in ALGOS:
        for backward in (False, True):
            total, lowering = conv.workspace_bytes(algo, xs, ws_, s, p, 4, 1, backward)
            assert total >= lowering >= 0
            if algo != "lowering":
                assert total < low[0] / 10  # chunk-sized, never the batch
    assert conv.workspace_bytes("gemm1x1", xs, (8, 32, 1, 1), 1, 0, 4, 1)[1] == 0
    with pytest.raises(ValueError, match="unknown algo"):
        conv.workspace_bytes("auto", xs, ws_, s, p)


def test_applies_predicates():
    assert mec.gemm1x1_applies((1, 3, 5, 5), (2, 3, 1, 1), (1, 1), (0, 0))
    assert not mec.gemm1x1_applies((1, 3, 5, 5), (2, 3, 1, 1), (2, 2), (0, 0))
    assert not mec.gemm1x1_applies((1, 3, 5, 5), (2, 3, 3, 3), (1, 1), (0, 0))
    assert mec.mec_applies((1, 3, 5, 5), (2, 3, 3, 3), (1, 2), (0, 0))
    assert not mec.mec_applies((1, 3, 5, 5), (2, 3, 3, 3), (2, 1), (0, 0))
    assert "gemm1x1" not in conv.candidates((1, 3, 5, 5), (2, 3, 3, 3), (1, 1), (1, 1), 1)
    assert "pipelined" not in conv.candidates((1, 3, 5, 5), (2, 3, 3, 3), (1, 1), (1, 1), 1)
    assert "pipelined" in conv.candidates((1, 3, 5, 5), (2, 3, 3, 3), (1, 1), (1, 1), 2)


# ---------------------------------------------------------------------------------------------
# autotuner

SHAPE = (4, 8, 9, 9, 6, (3, 3), 1, 1)


def _key_args(x, w, stride=1, padding=1):
    return x.shape, w.shape, (stride, stride), (padding, padding), x.dtype


def _lookup(tuner, direction, x, w):
    """The tuner's choice for conv(x, w) at stride 1, padding 1, among conv's candidates."""
    args = _key_args(x, w)
    return tuner.lookup(direction, *args, conv.candidates(*args[:4], direction=direction))


def _no_tuning(*args, **kwargs):
    raise AssertionError("the autotuner timed candidates although the choice was known")


def test_autotune_off_and_forced(monkeypatch, fresh_autotune):
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    monkeypatch.setattr(fresh_autotune, "tune", _no_tuning)
    monkeypatch.setenv("HPCNN_AUTOTUNE", "off")
    assert conv.resolve_algo("auto", x.shape, w.shape, (1, 1), (1, 1), "t") == "lowering"
    y = conv.conv2d_forward(x, w, b, stride, padding)
    assert np.array_equal(y, conv.conv2d_forward(x, w, b, stride, padding, algo="lowering"))
    monkeypatch.setenv("HPCNN_AUTOTUNE", "mec")
    assert _lookup(fresh_autotune, "backward", x, w) == "mec"
    monkeypatch.setenv("HPCNN_AUTOTUNE", "fastest-please")
    with pytest.raises(ValueError, match="HPCNN_AUTOTUNE"):
        conv.conv2d_forward(x, w, b, stride, padding)


def test_autotune_tunes_once_and_returns_the_winners_result(monkeypatch, fresh_autotune):
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    y = conv.conv2d_forward(x, w, b, stride, padding)  # tunes
    tuner = fresh_autotune
    name = _lookup(tuner, "forward", x, w)
    assert name in conv.ALGOS
    assert np.array_equal(y, conv.conv2d_forward(x, w, b, stride, padding, algo=name))
    times = tuner.timings()[autotune.make_key(*_key_args(x, w)[:4], x.dtype)]["forward"]
    assert set(times) == set(conv.candidates(*_key_args(x, w)[:4], direction="forward"))
    assert times[name] == min(times.values())
    assert _lookup(tuner, "backward", x, w) is None  # tuned apart, on first use
    monkeypatch.setattr(tuner, "tune", _no_tuning)
    assert np.array_equal(y, conv.conv2d_forward(x, w, b, stride, padding))


def test_autotune_cache_file_makes_choices_reproducible(tmp_path, monkeypatch, fresh_autotune):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", str(path))
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    y1 = conv.conv2d_forward(x, w, b, stride, padding)
    g1 = conv.conv2d_backward(np.ones_like(y1), x, w, stride, padding)
    wg1 = conv.conv2d_backward(np.ones_like(y1), x, w, stride, padding, input_grad=False)
    first = fresh_autotune.choices()
    data = json.loads(path.read_text())
    key = autotune.make_key(*_key_args(x, w)[:4], x.dtype)
    assert data["format"] == autotune.FORMAT
    assert {d: data["entries"][key][d] for d in autotune.DIRECTIONS} == first[key]
    # a new process (memory forgotten) with the same file: same choice, no timing, same bits
    fresh_autotune.reset()
    monkeypatch.setattr(fresh_autotune, "tune", _no_tuning)
    for _ in range(2):
        assert np.array_equal(conv.conv2d_forward(x, w, b, stride, padding), y1)
        g2 = conv.conv2d_backward(np.ones_like(y1), x, w, stride, padding)
        assert all(np.array_equal(a, c) for a, c in zip(g1, g2))
        wg2 = conv.conv2d_backward(np.ones_like(y1), x, w, stride, padding, input_grad=False)
        assert all(np.array_equal(a, c) for a, c in zip(wg1[1:], wg2[1:]))
    assert fresh_autotune.choices() == first


def test_autotune_uses_a_planted_choice(tmp_path, monkeypatch, fresh_autotune):
    """Whatever the file says for this key is what runs (determinism given the file)."""
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    key = autotune.make_key(*_key_args(x, w)[:4], x.dtype)
    path = tmp_path / "planted.json"
    path.write_text(json.dumps({"format": autotune.FORMAT, "version": 1,
                                "entries": {key: {"forward": "mec", "backward": "lowering"}}}))
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", str(path))
    monkeypatch.setattr(fresh_autotune, "tune", _no_tuning)
    assert conv.resolve_algo("auto", *_key_args(x, w)[:4], "t", x.dtype, "forward") == "mec"
    assert conv.resolve_algo("auto", *_key_args(x, w)[:4], "t", x.dtype, "backward") == "lowering"
    y = conv.conv2d_forward(x, w, b, stride, padding)
    assert np.array_equal(y, conv.conv2d_forward(x, w, b, stride, padding, algo="mec"))


def test_autotune_retunes_entries_from_before_a_new_strategy(tmp_path, monkeypatch,
                                                             fresh_autotune):
    """An entry whose timings lack one of today's candidates (tuned by an older hpcnn) is
    tuned again, and the file then holds every candidate's time."""
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    args = _key_args(x, w)
    key = autotune.make_key(*args[:4], x.dtype)
    now = conv.candidates(*args[:4], direction="forward")
    old = {"forward": "lowering", "forward_ms": {n: 1.0 for n in now[:-1]}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": autotune.FORMAT, "version": 1, "entries": {key: old}}))
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", str(path))
    assert _lookup(fresh_autotune, "forward", x, w) is None
    conv.conv2d_forward(x, w, b, stride, padding)
    entry = json.loads(path.read_text())["entries"][key]
    assert set(entry["forward_ms"]) == set(now)
    fresh_autotune.reset()
    assert _lookup(fresh_autotune, "forward", x, w) == entry["forward"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"format": "other", "x": 1}',
                                     ""], ids=["corrupt", "list", "foreign-format", "empty"])
def test_autotune_unusable_cache_file_falls_back(content, tmp_path, monkeypatch,
                                                 fresh_autotune):
    path = tmp_path / "bad.json"
    path.write_text(content)
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", str(path))
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    with pytest.warns(autotune.AutotuneWarning, match="unusable"):
        y = conv.conv2d_forward(x, w, b, stride, padding)
    _close(y, ref.conv2d_forward(x, w, b, stride, padding), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        conv.conv2d_backward(np.ones_like(y), x, w, stride, padding)
    assert path.read_text() == content  # never clobbered
    assert _lookup(fresh_autotune, "forward", x, w) in conv.ALGOS


def test_autotune_foreign_entries_are_kept_and_retuned(tmp_path, monkeypatch, fresh_autotune):
    """Entries of another CPU or thread count do not match; a bad strategy name is retuned."""
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    mine = autotune.make_key(*_key_args(x, w)[:4], x.dtype)
    other_threads = autotune.make_key(*_key_args(x, w)[:4], x.dtype, threads=97)
    other_cpu = "cpu=Some Other CPU;" + mine.split(";", 1)[1]
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps({"format": autotune.FORMAT, "version": 1, "entries": {
        other_cpu: {"forward": "lowering"}, other_threads: {"forward": "lowering"},
        "nonsense": 5}}))
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", str(path))
    with pytest.warns(autotune.AutotuneWarning):
        y = conv.conv2d_forward(x, w, b, stride, padding)
    _close(y, ref.conv2d_forward(x, w, b, stride, padding), np.float32)
    entries = json.loads(path.read_text())["entries"]
    assert entries[other_cpu]["forward"] == "lowering"  # left alone
    assert entries[other_threads]["forward"] == "lowering"
    assert entries[mine]["forward"] in conv.ALGOS  # tuned here and merged in

    fresh_autotune.reset()
    del entries["nonsense"]
    entries[mine]["forward"] = "warp-drive"
    path.write_text(json.dumps({"format": autotune.FORMAT, "entries": entries}))
    with pytest.warns(autotune.AutotuneWarning, match="warp-drive"):
        conv.conv2d_forward(x, w, b, stride, padding)
    assert _lookup(fresh_autotune, "forward", x, w) in conv.ALGOS


def test_set_choices_validates():
    with pytest.raises(ValueError, match="bad entry"):
        autotune.Autotuner(conv.ALGOS).set_choices({"k": {"forward": "nope"}})
    with pytest.raises(ValueError, match="bad entry"):  # the names it was given are the valid ones
        autotune.Autotuner(["lowering"]).set_choices({"k": {"forward": "mec"}})


def test_tuners_keep_independent_choices(monkeypatch, fresh_autotune):
    """Two tuners (two runs in one process, say) neither see nor reset each other's choices,
    and the tuner given to the kernels is the one they ask."""
    monkeypatch.setenv("HPCNN_AUTOTUNE_CACHE", "")  # no shared file either
    x, w, b, stride, padding = _inputs(SHAPE, np.float32)
    key = autotune.make_key(*_key_args(x, w)[:4], x.dtype)
    one, two = autotune.Autotuner(conv.ALGOS), autotune.Autotuner(conv.ALGOS)
    one.set_choices({key: {"forward": "mec"}})
    two.set_choices({key: {"forward": "lowering", "backward": "lowering"}})
    assert (_lookup(one, "forward", x, w), _lookup(two, "forward", x, w)) == ("mec", "lowering")
    assert _lookup(one, "backward", x, w) is None
    assert one.choices() == {key: {"forward": "mec"}}
    one.reset()
    assert one.choices() == {} and _lookup(two, "backward", x, w) == "lowering"
    assert _lookup(fresh_autotune, "forward", x, w) is None  # the default one is a third
    # tuning through one tuner leaves the others untouched; each runs its own choice
    monkeypatch.setattr(two, "tune", _no_tuning)
    y = conv.conv2d_forward(x, w, b, stride, padding, tuner=one)
    name = one.choices()[key]["forward"]
    assert np.array_equal(y, conv.conv2d_forward(x, w, b, stride, padding, algo=name))
    assert set(one.timings()[key]) == {"forward"}
    assert np.array_equal(conv.conv2d_forward(x, w, b, stride, padding, tuner=two),
                          conv.conv2d_forward(x, w, b, stride, padding, algo="lowering"))
    assert two.choices() == {key: {"forward": "lowering", "backward": "lowering"}}
    assert two.timings() == {} and fresh_autotune.choices() == {}


def test_importing_autotune_does_not_import_conv():
    """The tuner is told the strategy names and candidates: the module never imports conv.
    (The package ``hpcnn.kernels`` itself imports conv, so it is stood in for by a bare one.)"""
    code = ("import os, sys, types, hpcnn\n"
            "pkg = types.ModuleType('hpcnn.kernels')\n"
            "pkg.__path__ = [os.path.join(os.path.dirname(hpcnn.__file__), 'kernels')]\n"
            "sys.modules['hpcnn.kernels'] = pkg\n"
            "import hpcnn.kernels.autotune\n"
            "print(sorted(m for m in sys.modules if m.startswith('hpcnn.kernels.')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.join(os.path.dirname(conv.__file__), "..", ".."))
    assert r.returncode == 0, r.stderr
    assert "hpcnn.kernels.autotune" in r.stdout
    assert "hpcnn.kernels.conv" not in r.stdout


def _scripted_tune(monkeypatch, script, tuner, repeats=2, close_rounds=3):
    """tuner.tune on fake timings: candidate -> the times its runs take, in order. Returns
    (winner, its result, runs per candidate)."""
    runs = {name: 0 for name in script}

    def fake_time(run, reps):
        name = run()
        ts = script[name][runs[name]:runs[name] + reps]
        runs[name] += reps
        return list(ts), f"result of {name}"

    monkeypatch.setattr(autotune, "_time", fake_time)
    monkeypatch.setattr(tuner, "repeats", repeats)
    monkeypatch.setattr(tuner, "close_rounds", close_rounds)
    best, result = tuner.tune("forward", lambda name: name, (1, 1, 4, 4), (1, 1, 3, 3),
                              (1, 1), (1, 1), np.float32, list(script))
    return best, result, runs


def test_autotune_second_fastest_gets_more_rounds(monkeypatch, fresh_autotune):
    """The two fastest always get the extra rounds, however far apart a noisy first pass put
    them: a candidate that timed 1.5x slower there, and faster in every round after, wins."""
    script = {"lowering": [1.0] * 5, "chunked": [1.5, 1.5, 0.8, 0.8, 0.8], "mec": [3.0, 3.0]}
    best, _, runs = _scripted_tune(monkeypatch, script, fresh_autotune)
    assert best == "chunked"
    assert runs == {"lowering": 5, "chunked": 5, "mec": 2}


def test_autotune_a_slow_spell_on_one_run_does_not_lose_the_layer(monkeypatch, fresh_autotune):
    """Every candidate runs twice, taking turns with the others, before any is dropped: a
    candidate whose first run a slow spell made 6x slower than the best still wins. A
    candidate beyond WARMUP_LIMIT after two rounds gets no third; the others do."""
    script = {"mec": [1.5] * 6, "direct": [9.0, 1.0, 1.0, 1.0, 1.0, 1.0],
              "lowering": [5.0, 5.0]}
    best, result, runs = _scripted_tune(monkeypatch, script, fresh_autotune, repeats=3)
    assert (best, result) == ("direct", "result of direct")
    assert runs == {"mec": 6, "direct": 6, "lowering": 2}
    key = autotune.make_key((1, 1, 4, 4), (1, 1, 3, 3), (1, 1), (1, 1), np.float32)
    assert fresh_autotune.timings()[key]["forward"]["lowering"] == 5.0


def test_direct_is_a_candidate_per_direction():
    """At stride 2 "direct" runs its own forward and weight gradient, not its data gradient."""
    args = ((2, 3, 9, 9), (4, 3, 3, 3), (2, 2), (1, 1))
    assert "direct" in conv.candidates(*args, direction="forward")
    assert "direct" in conv.candidates(*args, direction="wgrad")
    assert "direct" not in conv.candidates(*args, direction="backward")
    assert "direct" not in conv.candidates(*args)
    assert "direct" in conv.candidates((2, 3, 9, 9), (4, 3, 3, 3), (1, 1), (1, 1),
                                       direction="backward")


@pytest.mark.parametrize("chunked_times, winner", [
    ([1.05, 1.05, 1.05, 0.90, 1.05], "lowering"),  # one lucky round does not win
    ([1.05, 1.05, 0.95, 0.95, 0.95], "chunked"),  # faster in most rounds: it wins
])
def test_autotune_close_finish_is_decided_by_more_rounds(chunked_times, winner, monkeypatch,
                                                         fresh_autotune):
    """Two candidates within CLOSE of each other get CLOSE_ROUNDS more runs each, and the one
    with the smallest median over all its runs wins, with its own result; a distant one is not
    run again."""
    script = {"lowering": [1.00] * 5, "chunked": chunked_times, "mec": [3.0, 3.0]}
    best, result, runs = _scripted_tune(monkeypatch, script, fresh_autotune)
    assert (best, result) == (winner, f"result of {winner}")
    assert runs == {"lowering": 5, "chunked": 5, "mec": 2}
    key = autotune.make_key((1, 1, 4, 4), (1, 1, 3, 3), (1, 1), (1, 1), np.float32)
    times = fresh_autotune.timings()[key]["forward"]
    assert times == {"lowering": 1.00, "chunked": float(np.median(chunked_times)), "mec": 3.0}
