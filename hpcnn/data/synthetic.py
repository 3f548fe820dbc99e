"""A learnable synthetic image dataset, for speed work and for runs without real data.

Each class has a fixed random smooth template; a sample is its class template, shifted by a few
pixels, plus Gaussian pixel noise, clipped to [0, 1] (the range of normalised MNIST). A CNN learns
it quickly and a nearest-class-mean classifier already gets well above chance, yet it is not
trivial: the shifts and the noise make single pixels unreliable.
"""

from __future__ import annotations

import numpy as np

NOISE_STD = 0.5  # of the Gaussian pixel noise; images span [0, 1]
CLASS_WEIGHT = 0.5  # share of a template that is class-specific; the rest is common to all classes
_CHUNK = 8192  # samples generated at once, to bound temporary memory


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian blur; ``B @ img @ B.T`` smooths a 2-D image."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    b = np.exp(-0.5 * (d / sigma) ** 2)
    return b / b.sum(axis=1, keepdims=True)


def max_shift(shape: tuple[int, int, int]) -> int:
    """Largest random shift in pixels, in each direction: 2 for 28x28 and 32x32, 0 below 12x12."""
    return min(shape[1:]) // 12


def make_templates(
    shape: tuple[int, int, int], classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random templates of shape (classes, C, H + 2*s, W + 2*s) in [0, 1], s = max_shift."""
    c, h, w = shape
    s = max_shift(shape)
    hp, wp = h + 2 * s, w + 2 * s
    # A part shared by all classes makes them look alike, so the noise matters.
    common = rng.standard_normal((1, c, hp, wp))
    t = (1 - CLASS_WEIGHT) * common + CLASS_WEIGHT * rng.standard_normal((classes, c, hp, wp))
    bh = _blur_matrix(hp, max(1.0, h / 10))
    bw = _blur_matrix(wp, max(1.0, w / 10))
    t = bh @ t @ bw.T  # blur each (hp, wp) plane
    lo = t.min(axis=(1, 2, 3), keepdims=True)
    hi = t.max(axis=(1, 2, 3), keepdims=True)
    return ((t - lo) / (hi - lo)).astype(np.float32)  # each template spans [0, 1]


def _samples(
    templates: np.ndarray, n: int, shape: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    classes = len(templates)
    c, h, w = shape
    shift = max_shift(shape)
    # Balanced classes in a random order.
    y = rng.permutation(np.arange(n, dtype=np.int64) % classes)
    x = np.empty((n, c, h, w), dtype=np.float32)
    ch = np.arange(c)[None, :, None, None]
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        m = stop - start
        dy = rng.integers(0, 2 * shift + 1, size=m)
        dx = rng.integers(0, 2 * shift + 1, size=m)
        rows = (dy[:, None] + np.arange(h))[:, None, :, None]  # (m, 1, h, 1)
        cols = (dx[:, None] + np.arange(w))[:, None, None, :]  # (m, 1, 1, w)
        lab = y[start:stop, None, None, None]
        img = templates[lab, ch, rows, cols]  # (m, c, h, w): shifted crops, float32
        img += NOISE_STD * rng.standard_normal(img.shape, dtype=np.float32)
        np.clip(img, 0.0, 1.0, out=img)
        x[start:stop] = img
    return x, y


def make_synthetic(
    n_train: int,
    n_test: int,
    shape: tuple[int, int, int] = (1, 28, 28),
    classes: int = 10,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``(x_train, y_train, x_test, y_test)``.

    Images are float32 (N, C, H, W), C-contiguous, in [0, 1]; labels are int64 in 0..classes-1,
    balanced. The same arguments give the same arrays. Train and test use independent random
    streams, so the test split does not depend on ``n_train``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"sample counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    seq_templates, seq_train, seq_test = np.random.SeedSequence(seed).spawn(3)
    templates = make_templates(shape, classes, np.random.default_rng(seq_templates))
    x_train, y_train = _samples(templates, n_train, shape, np.random.default_rng(seq_train))
    x_test, y_test = _samples(templates, n_test, shape, np.random.default_rng(seq_test))
    return x_train, y_train, x_test, y_test
