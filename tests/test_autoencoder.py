"""The sparse autoencoder: gradient against finite differences (float64), the kernel op set
against the NumPy one, training, patches, the filter PNG, the checkpoint, and the CLI's bad
input (one line, exit 2)."""

import numpy as np
import pytest

from hpcnn.errors import UsageError
from hpcnn.kernels.sparse import NUMPY_OPS
from hpcnn.unsup import autoencoder as ae
from hpcnn.unsup.__main__ import main
from hpcnn.unsup.patches import (
    filter_grid,
    normalize_patches,
    read_png,
    sample_patches,
    synthetic_images,
    write_png,
)


def problem(n=23, visible=9, hidden=5, seed=0, dtype=np.float64):
    cfg = ae.SAEConfig(visible=visible, hidden=hidden, rho=0.1, beta=3.0, weight_decay=1e-3)
    rng = np.random.default_rng(seed)
    x = (rng.random((n, visible)) * 0.8 + 0.1).astype(dtype)
    theta = ae.init_params(cfg, seed) + 0.1 * rng.standard_normal(cfg.size)
    return cfg, x, theta


def naive_loss(theta, x, cfg):
    """J written out from the UFLDL notes, per example (no op API)."""
    W1, W2, b1, b2 = ae.unpack(theta, cfg)
    m = len(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    a2 = sig(x @ W1.T + b1)
    a3 = sig(a2 @ W2.T + b2)
    r, rh = cfg.rho, a2.mean(axis=0)
    kl = np.sum(r * np.log(r / rh) + (1 - r) * np.log((1 - r) / (1 - rh)))
    return (np.sum((a3 - x) ** 2) / (2 * m) + cfg.weight_decay / 2 * (np.sum(W1 ** 2)
            + np.sum(W2 ** 2)) + cfg.beta * kl)


@pytest.mark.parametrize("n, visible, hidden", [(23, 9, 5), (1, 4, 3), (300, 7, 2)])
def test_gradient_finite_differences(n, visible, hidden):
    cfg, x, theta = problem(n, visible, hidden)
    model = ae.SparseAutoencoder(cfg, dtype=np.float64)
    f, g = model.loss_and_grad(theta, x, n)
    g = g.copy()
    assert f == pytest.approx(naive_loss(theta, x, cfg), rel=1e-12)
    num = np.zeros_like(theta)
    for i in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[i] += 1e-6
        tm[i] -= 1e-6
        num[i] = (naive_loss(tp, x, cfg) - naive_loss(tm, x, cfg)) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_kernels_equal_numpy_ops(dtype, rtol):
    cfg, x, theta = problem(n=300, visible=16, hidden=7, dtype=dtype)
    f1, g1 = ae.SparseAutoencoder(cfg, dtype=dtype).loss_and_grad(theta, x, len(x))
    f2, g2 = ae.SparseAutoencoder(cfg, dtype=dtype, ops=NUMPY_OPS).loss_and_grad(theta, x,
                                                                                 len(x))
    assert f1 == pytest.approx(f2, rel=rtol)
    np.testing.assert_allclose(g1, g2, rtol=rtol * 10, atol=rtol * 1e-2)


def test_lbfgs_trains_and_reaches_the_sparsity_target():
    images = synthetic_images(20, seed=1)
    x = normalize_patches(sample_patches(images, 400, 8, seed=2))
    cfg = ae.SAEConfig(hidden=9, rho=0.05)
    model = ae.SparseAutoencoder(cfg, dtype=np.float64)
    theta, hist = ae.train(model, ae.init_params(cfg, 0), x, len(x), 40)
    assert all(b <= a for a, b in zip(hist, hist[1:]))  # Armijo: never up
    assert hist[-1] < 0.05 * hist[0]
    rho_hat = model.encode(theta, x).mean(axis=0)
    assert abs(rho_hat.mean() - cfg.rho) < 0.02


def test_sgd_lowers_the_loss():
    cfg, x, theta = problem(n=64, visible=9, hidden=5)
    model = ae.SparseAutoencoder(cfg, dtype=np.float64)
    f0 = model.loss_and_grad(theta, x, len(x))[0]
    theta, _ = ae.train(model, theta, x, len(x), 200, "sgd", lr=0.05, batch=16,
                        rank_rows=lambda lo, hi: x[lo:hi])
    assert model.loss_and_grad(theta, x, len(x))[0] < 0.5 * f0


def test_bad_config():
    for kw in (dict(rho=0.0), dict(rho=1.0), dict(rho=-0.5), dict(beta=-1.0),
               dict(weight_decay=-1e-4), dict(hidden=0)):
        with pytest.raises(UsageError):
            ae.SAEConfig(**kw)


def test_patches_and_png(tmp_path):
    images = synthetic_images(5, seed=0)
    p = sample_patches(images[:, None], 100, 8, seed=0)
    assert p.shape == (100, 64) and np.all(p.std(axis=1) > 1e-3)
    np.testing.assert_array_equal(p, sample_patches(images, 100, 8, seed=0))  # deterministic
    q = normalize_patches(p)
    assert q.min() >= 0.1 - 1e-12 and q.max() <= 0.9 + 1e-12
    w = np.random.default_rng(0).standard_normal((10, 64))
    img = filter_grid(w, 8, scale=2)
    assert img.shape == (3 * 17 + 1, 4 * 17 + 1)  # 3x4 grid of 16-pixel tiles, 1-pixel borders
    write_png(tmp_path / "f.png", img)
    np.testing.assert_array_equal(read_png(tmp_path / "f.png"), img)
    with pytest.raises(UsageError):
        sample_patches(np.zeros((3, 5, 5)), 10, 8)


def test_cli_trains_writes_png_and_checkpoint(tmp_path, capsys):
    from hpcnn.checkpoint import read_checkpoint

    png, ck = tmp_path / "f.png", tmp_path / "w.h5"
    rc = main(["autoencoder", "--dataset", "synthetic", "--patches", "600", "--iters", "15",
               "--hidden", "9", "--threads", "1", "--png", str(png), "--checkpoint", str(ck)])
    assert rc == 0
    assert "done: loss" in capsys.readouterr().out
    assert read_png(png).shape == (3 * 33 + 1, 3 * 33 + 1)
    arrays, meta = read_checkpoint(ck)
    assert arrays["param/W1"].shape == (9, 64) and meta["net"] == "sparse_autoencoder"


@pytest.mark.parametrize("argv, match", [
    (["--rho", "0"], "rho must lie in (0, 1)"),
    (["--rho", "1.5"], "rho must lie in (0, 1)"),
    (["--beta", "-1"], "beta must be >= 0"),
    (["--weight-decay", "-0.1"], "lambda must be >= 0"),
    (["--rho", "nan"], "finite"),
    (["--png", "/nonexistent-dir/f.png"], "does not exist"),
    (["--patches", "100", "--batch-size", "200", "--optimizer", "sgd"], "larger than"),
])
def test_cli_bad_input_one_line_exit_2(argv, match, capsys):
    rc = main(["autoencoder", "--dataset", "synthetic", "--iters", "1", "--threads", "1", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err
