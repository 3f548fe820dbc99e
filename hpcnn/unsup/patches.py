"""Image patches for the sparse autoencoder and sparse coding, and a PNG of learned filters.

Every rank draws the same global set of patches from the same seed (a few MB at most) and keeps
its own block of rows, so the data of N ranks together is exactly the serial run's.
"""

import struct
import zlib

import numpy as np

from hpcnn.errors import UsageError


def sample_patches(images, count, size=8, seed=0, min_std=1e-3):
    """``count`` random ``size`` x ``size`` patches of ``images`` (N, H, W) or (N, 1, H, W).

    Patches with (almost) no contrast (std <= ``min_std``: MNIST's blank background) are drawn
    again, up to 20 tries per patch, so the set holds strokes. Returns float64 (count, size**2).
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3:
        raise UsageError(f"patches need grey images (N, H, W) or (N, 1, H, W), got shape "
                         f"{images.shape}")
    n, h, w = images.shape
    if n == 0 or h < size or w < size:
        raise UsageError(f"cannot cut {size}x{size} patches from {n} images of {h}x{w}")
    if count < 1:
        raise UsageError(f"need at least one patch, got {count}")
    rng = np.random.default_rng(seed)
    out = np.empty((count, size * size))
    for k in range(count):
        for _ in range(20):
            i, r, c = rng.integers(n), rng.integers(h - size + 1), rng.integers(w - size + 1)
            p = images[i, r:r + size, c:c + size]
            if p.std() > min_std:
                break
        out[k] = p.ravel()
    return out


def normalize_patches(p):
    """UFLDL's normalisation for a sigmoid output: remove each patch's mean, clip to +-3 standard
    deviations (of all pixels), rescale to [0.1, 0.9]."""
    p = p - p.mean(axis=1, keepdims=True)
    s = 3 * p.std()
    if s == 0:
        return np.full_like(p, 0.5)
    return (np.clip(p, -s, s) / s + 1) * 0.4 + 0.1


def filter_grid(weights, size=8, scale=4, border=1):
    """Tile the rows of ``weights`` (H, size*size) into one grey uint8 image: each filter scaled
    by its own largest |weight| (mid grey is 0), ``scale``-times enlarged, on a black border."""
    weights = np.asarray(weights, np.float64)
    h = weights.shape[0]
    cols = int(np.ceil(np.sqrt(h)))
    rows = int(np.ceil(h / cols))
    cell = size * scale + border
    img = np.zeros((rows * cell + border, cols * cell + border), np.uint8)
    for k in range(h):
        f = weights[k].reshape(size, size)
        f = f / max(np.abs(f).max(), 1e-12)
        tile = np.round((f + 1) * 127.5).clip(0, 255).astype(np.uint8)
        tile = np.kron(tile, np.ones((scale, scale), np.uint8))
        r, c = divmod(k, cols)
        img[border + r * cell:border + r * cell + size * scale,
            border + c * cell:border + c * cell + size * scale] = tile
    return img


def write_png(path, img):
    """Write a grey uint8 image (H, W) as an 8-bit PNG (zlib only; no plotting library)."""
    img = np.ascontiguousarray(img, np.uint8)
    h, w = img.shape

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))  # filter 0 on each row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def read_png(path):
    """The grey image written by :func:`write_png` (for tests): uint8 (H, W)."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, w, h, idat = 8, 0, 0, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, w + 1)
    return raw[:, 1:].copy()


def synthetic_images(count, side=28, seed=0):
    """Grey images of random oriented bars and blobs in [0, 1] (tests need no dataset files)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    out = np.zeros((count, side, side))
    for i in range(count):
        for _ in range(3):
            th = rng.uniform(0, np.pi)
            c = rng.uniform(4, side - 4, 2)
            d = np.abs((xx - c[0]) * np.sin(th) - (yy - c[1]) * np.cos(th))
            out[i] += np.exp(-d ** 2 / 2.0) * (np.hypot(xx - c[0], yy - c[1]) < side / 3)
    return np.clip(out, 0, 1)
