"""FISTA: the objective within 1e-4 (relative) of reference optima (a long float64 ISTA run, and
scikit-learn's Lasso where installed), the step from power iteration, dictionary learning, and
the CLI's bad input."""

import numpy as np
import pytest

from hpcnn.errors import UsageError
from hpcnn.kernels.sparse import NUMPY_OPS
from hpcnn.unsup import fista as fi
from hpcnn.unsup.__main__ import main


def problem(n=30, V=16, K=24, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, V)).astype(dtype), fi.random_dictionary(V, K, seed + 1)


def test_power_iteration_gives_the_spectral_norm():
    for V, K in ((16, 24), (64, 25), (5, 3)):
        _, D = problem(V=V, K=K)
        assert fi.spectral_norm_sq(D) == pytest.approx(np.linalg.norm(D, 2) ** 2, rel=1e-9)


@pytest.mark.parametrize("lam", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_near_long_ista(lam, dtype):
    X, D = problem(dtype=dtype)
    Z = fi.fista(X, D, lam, 300)
    ref = fi.fista(X.astype(np.float64), D, lam, 20000, momentum=False)  # ISTA, O(1/k)
    F, F_ref = fi.objective(X, D, Z, lam), fi.objective(X, D, ref, lam)
    assert abs(F - F_ref) <= 1e-4 * F_ref
    # and FISTA is far ahead of ISTA after the same few iterations
    F_ista = fi.objective(X, D, fi.fista(X, D, lam, 300, momentum=False), lam)
    assert F - F_ref < F_ista - F_ref


@pytest.mark.parametrize("lam", [0.05, 0.3])
def test_objective_near_sklearn_lasso(lam):
    lm = pytest.importorskip("sklearn.linear_model")
    X, D = problem()
    V = D.shape[0]
    Z = fi.fista(X, D, lam, 300)
    # sklearn's Lasso: (1 / (2 n_samples)) |y - A w|^2 + alpha |w|_1 with A = D (V rows), so
    # alpha = lam / V gives our per-row problem divided by V
    lasso = lm.Lasso(alpha=lam / V, fit_intercept=False, tol=1e-12, max_iter=100000)
    Z_ref = np.stack([lasso.fit(D, x).coef_.copy() for x in X])
    F, F_ref = fi.objective(X, D, Z, lam), fi.objective(X, D, Z_ref, lam)
    assert abs(F - F_ref) <= 1e-4 * F_ref


def test_numpy_ops_give_the_same_codes():
    X, D = problem(dtype=np.float32)
    np.testing.assert_allclose(fi.fista(X, D, 0.2, 50), fi.fista(X, D, 0.2, 50, ops=NUMPY_OPS),
                               rtol=1e-4, atol=1e-5)


def test_lambda_zero_is_least_squares_and_large_lambda_zero_codes():
    X, D = problem(K=8)  # tall D: a unique least-squares solution
    Z = fi.fista(X, D, 0.0, 3000)
    ls = np.linalg.lstsq(D, X.T, rcond=None)[0].T
    np.testing.assert_allclose(Z, ls, atol=1e-6)
    lam_max = np.abs(X @ D).max()  # above it, 0 is optimal
    assert not np.any(fi.fista(X, D, lam_max * 1.01, 50))


def test_dictionary_learning_lowers_the_objective():
    X, D = problem(n=200, V=16, K=20)
    D2, hist = fi.learn_dictionary(X, D, 0.2, 8, 60, len(X))
    assert hist[-1] < hist[0]
    np.testing.assert_allclose(np.linalg.norm(D2, axis=0), 1.0, rtol=1e-12)
    F = fi.objective(X, D2, fi.fista(X, D2, 0.2, 300), 0.2) / len(X)
    assert F < hist[0]


def test_bad_problems():
    X, D = problem()
    with pytest.raises(UsageError, match="lambda must be >= 0"):
        fi.fista(X, D, -0.1, 10)
    with pytest.raises(UsageError, match="16 entries"):
        fi.fista(X[:, :15], D, 0.1, 10)
    with pytest.raises(UsageError, match="NaN"):
        fi.fista(X, np.full_like(D, np.nan), 0.1, 10)


def test_cli_reference_gap(capsys):
    rc = main(["fista", "--dataset", "synthetic", "--patches", "200", "--iters", "300",
               "--lam", "0.1", "--reference", "--reference-iters", "20000", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    gap = float(out.split("FISTA - reference = ")[1].split()[0])
    assert abs(gap) < 1e-4


def test_cli_learns_and_saves(tmp_path, capsys):
    path = tmp_path / "d.npy"
    rc = main(["fista", "--dataset", "synthetic", "--patches", "200", "--iters", "20",
               "--atoms", "12", "--learn", "3", "--save-dictionary", str(path),
               "--png", str(tmp_path / "d.png"),
               "--threads", "1"])
    assert rc == 0 and np.load(path).shape == (64, 12) and (tmp_path / "d.png").exists()
    assert "dictionary step    3" in capsys.readouterr().out
    rc = main(["fista", "--dataset", "synthetic", "--patches", "50", "--iters", "5",
               "--dictionary", str(path), "--threads", "1"])
    assert rc == 0


@pytest.mark.parametrize("argv, match", [
    (["--lam", "-0.5"], "--lam must be >= 0"),
    (["--patch-size", "7", "--dictionary", "D.npy"], "have 49 features"),
    (["--dictionary", "missing.npy"], "cannot read dictionary"),
    (["--dictionary", "bad.h5"], "bad.h5"),
    (["--lam", "inf"], "finite"),
])
def test_cli_bad_input_one_line_exit_2(argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("D.npy", fi.random_dictionary(64, 10))
    open("bad.h5", "wb").write(b"not hdf5")
    rc = main(["fista", "--dataset", "synthetic", "--patches", "20", "--iters", "2",
               "--threads", "1", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err


def test_cli_dictionary_from_patches(capsys):
    rc = main(["fista", "--dataset", "synthetic", "--patches", "100", "--iters", "10",
               "--dictionary", "patches", "--atoms", "8", "--learn", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "dictionary patches (64, 8)" in out
