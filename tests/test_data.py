"""Tests for hpcnn.data: every fixture file is written here, in the official formats.

Nothing reads /work/shared or the network: downloads go to a local HTTP server or file:// URLs.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from hpcnn.data import (
    DATASETS,
    cifar,
    find_dataset_files,
    load_dataset,
    make_synthetic,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
    registry,
    resolve_data_dir,
    write_idx,
)
from hpcnn.data import download as dl
from hpcnn.data.__main__ import main as cli_main
from hpcnn.data.idx import Checksum
from hpcnn.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[1]
STEMS = [s for pair in registry.IDX_FILES.values() for s in pair]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(data: np.ndarray, magic_type: int = 0x08) -> bytes:
    """An IDX payload built independently of hpcnn's writer."""
    data = np.asarray(data, dtype=np.uint8)
    header = bytes([0, 0, magic_type, data.ndim]) + np.asarray(data.shape, ">u4").tobytes()
    return header + data.tobytes()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def write_mnist(folder: Path, n_train=30, n_test=20, gz=True, seed=0) -> dict:
    """Write the four MNIST files (28x28) into ``folder``; return the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        img_stem, lab_stem = registry.IDX_FILES[split]
        ext = ".gz" if gz else ""
        write_idx(folder / f"{img_stem}{ext}", x)
        write_idx(folder / f"{lab_stem}{ext}", y)
        arrays[split] = (x, y)
    return arrays


def patched_md5_table(folder: Path) -> dict[str, Checksum]:
    """Checksums of the test's own .gz files, in the shape of registry.OFFICIAL_MD5[dataset]."""
    table = {}
    for stem in STEMS:
        stored = (folder / f"{stem}.gz").read_bytes()
        table[stem] = Checksum(md5(stored), md5(gzip.decompress(stored)))
    return table


# --- IDX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)  # non-square on purpose
    y = np.array([0, 9, 3, 3, 1, 2, 8], dtype=np.uint8)
    ext = ".gz" if gz else ""
    pi, pl = tmp_path / f"img{ext}", tmp_path / f"lab{ext}"
    for p, a in ((pi, x), (pl, y)):
        payload = idx_bytes(a)
        p.write_bytes(gzip.compress(payload) if gz else payload)
    xi, yl = read_idx_pair(pi, pl)
    np.testing.assert_array_equal(xi, x)
    np.testing.assert_array_equal(yl, y)
    assert xi.dtype == np.uint8 and yl.dtype == np.int64
    # hpcnn's writer produces exactly these bytes
    write_idx(tmp_path / f"again{ext}", x)
    got = (tmp_path / f"again{ext}").read_bytes()
    assert (gzip.decompress(got) if gz else got) == idx_bytes(x)


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))  # a labels file
    with pytest.raises(DataError) as err:
        read_idx_images(p)
    assert one_line(err) == f"{p}: bad magic number 2049, expected 2051 (IDX images)"
    images = write_idx(tmp_path / "imgs", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match="bad magic number 2051, expected 2049 \\(IDX labels\\)"):
        read_idx_labels(images)


def test_idx_gz_content_without_gz_name(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 28, 28), np.uint8))))
    with pytest.raises(DataError, match="looks gzip-compressed"):
        read_idx_images(p)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    payload = idx_bytes(np.ones((3, 28, 28), np.uint8))[:-10]
    p = tmp_path / ("t.gz" if gz else "t")
    p.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError) as err:
        read_idx_images(p)
    msg = one_line(err)
    assert str(p) in msg and "truncated" in msg
    assert f"{len(payload)} bytes, header says 16 + 3 * 28 * 28 = 2368 bytes" in msg


def test_idx_truncated_gzip_stream(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.ones((3, 28, 28), np.uint8)))[:-20])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx_images(p)


def test_idx_trailing_bytes(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)) + b"\0\0\0")
    with pytest.raises(DataError) as err:
        read_idx_labels(p)
    assert one_line(err).startswith(f"{p}: 3 trailing bytes after the data")


def test_idx_label_out_of_range(tmp_path):
    p = write_idx(tmp_path / "labels.gz", np.array([1, 2, 10, 4, 255], np.uint8))
    with pytest.raises(DataError) as err:
        read_idx_labels(p)
    msg = one_line(err)
    assert msg == f"{p}: label 10 at index 2 is out of range 0-9 (2 of 5 labels out of range)"


def test_idx_count_mismatch(tmp_path):
    pi = write_idx(tmp_path / "img.gz", np.zeros((5, 28, 28), np.uint8))
    pl = write_idx(tmp_path / "lab.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError) as err:
        read_idx_pair(pi, pl)
    assert one_line(err) == f"{pi} has 5 images but {pl} has 4 labels"


def test_idx_image_shape_checked(tmp_path):
    p = write_idx(tmp_path / "img.gz", np.zeros((2, 32, 28), np.uint8))
    with pytest.raises(DataError, match="images are 32x28, expected 28x28"):
        read_idx_images(p, shape=(28, 28))


def test_idx_md5(tmp_path):
    x = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    gz = write_idx(tmp_path / "a.gz", x)
    raw = write_idx(tmp_path / "a", x)
    good = Checksum(md5(gz.read_bytes()), md5(raw.read_bytes()))
    np.testing.assert_array_equal(read_idx_images(gz, md5=good), x)
    np.testing.assert_array_equal(read_idx_images(raw, md5=good), x)
    # same data, compressed differently: the .gz MD5 differs, the payload MD5 still vouches for it
    recompressed = tmp_path / "b.gz"
    recompressed.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=1))
    assert md5(recompressed.read_bytes()) != good.gz
    read_idx_images(recompressed, md5=good)

    bad = Checksum("0" * 32, "1" * 32)
    with pytest.raises(DataError) as err:
        read_idx_images(gz, md5=bad)
    msg = one_line(err)
    assert msg.startswith(f"{gz}: MD5 mismatch: expected {'0' * 32}")
    assert f"got {good.gz}" in msg and f"got {good.raw}" in msg
    with pytest.raises(DataError) as err:
        read_idx_images(raw, md5=bad)
    assert one_line(err) == (
        f"{raw}: MD5 mismatch: expected {'1' * 32} (official decompressed data), got {good.raw}"
    )


# --- MNIST through load_dataset ---------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_format(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", tmp_path, verify_md5=False)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (20, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[:, 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["test"][1])
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.classes[0] == "T-shirt/top" and ds.mean is None
    assert str(tmp_path) in ds.source and "MD5 not checked" in ds.source


def test_load_mnist_verifies_md5(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)  # our random files are not the official ones
    msg = one_line(err)
    first = tmp_path / "train-images-idx3-ubyte.gz"
    assert msg.startswith(f"{first}: MD5 mismatch: expected f68b3c2dcbeaaa9fbdd348bbdeb94873")
    monkeypatch.setitem(registry.OFFICIAL_MD5, "mnist", patched_md5_table(tmp_path))
    ds = load_dataset("mnist", tmp_path)
    assert "MD5 verified" in ds.source and len(ds.y_train) == 30


def test_load_mnist_missing_and_mismatched(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, verify_md5=False)
    assert one_line(err).startswith(f"{tmp_path / 't10k-labels-idx1-ubyte'}.gz: file not found")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))  # 20 images
    with pytest.raises(DataError, match="has 20 images but .* has 19 labels"):
        load_dataset("mnist", tmp_path, verify_md5=False)


def test_unknown_dataset():
    with pytest.raises(UsageError) as err:
        load_dataset("imagenet")
    assert one_line(err) == (
        "unknown dataset 'imagenet'; valid names: mnist, fashion-mnist, cifar10, synthetic"
    )
    assert DATASETS == ("mnist", "fashion-mnist", "cifar10", "synthetic")


# --- CIFAR-10 ----------------------------------------------------------------------------------


def cifar_records(labels, rng) -> tuple[bytes, np.ndarray]:
    """Raw records (label, R plane, G plane, B plane), built by hand; returns bytes and images."""
    out = bytearray()
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    for label, img in zip(labels, images, strict=True):
        out.append(label)
        for plane in img:  # R, G, B, each 32x32 row-major
            out += plane.tobytes()
    return bytes(out), images


def test_cifar_round_trip_planar_rgb(tmp_path):
    rng = np.random.default_rng(2)
    data, images = cifar_records([3, 0, 9, 5], rng)
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(data)
    x, y = read_cifar_batch(p, records=4)
    np.testing.assert_array_equal(y, [3, 0, 9, 5])
    np.testing.assert_array_equal(x, images)
    # byte 1 of record 1 is red (0, 0); byte 1 + 1024 is green (0, 0); byte 1 + 2048 + 33 is
    # blue at row 1, column 1
    r1 = 3073
    assert x[1, 0, 0, 0] == data[r1 + 1]
    assert x[1, 1, 0, 0] == data[r1 + 1 + 1024]
    assert x[1, 2, 1, 1] == data[r1 + 1 + 2048 + 33]
    assert x.dtype == np.uint8 and y.dtype == np.int64


def test_cifar_wrong_size(tmp_path):
    p = tmp_path / "test_batch.bin"
    p.write_bytes(bytes(3 * 3073 + 1))
    with pytest.raises(DataError) as err:
        read_cifar_batch(p, records=3)
    assert one_line(err) == (
        f"{p}: wrong size 9220 bytes, expected 9219 (3 records of 3073 bytes)"
    )
    with pytest.raises(DataError, match="expected 30730000 \\(10000 records of 3073 bytes\\)"):
        read_cifar_batch(p)


def test_cifar_label_out_of_range(tmp_path):
    data, _ = cifar_records([1, 2, 10], np.random.default_rng(3))
    p = tmp_path / "b.bin"
    p.write_bytes(data)
    with pytest.raises(DataError) as err:
        read_cifar_batch(p, records=3)
    assert one_line(err) == (
        f"{p}: label 10 in record 2 is out of range 0-9 (1 of 3 labels out of range)"
    )


def test_cifar_full_size_file(tmp_path):
    rng = np.random.default_rng(4)
    rec = rng.integers(0, 256, size=(10_000, 3073), dtype=np.uint8)
    rec[:, 0] = np.arange(10_000) % 10
    p = tmp_path / "data_batch_1.bin"
    rec.tofile(p)
    assert p.stat().st_size == 30_730_000
    x, y = read_cifar_batch(p)
    assert x.shape == (10_000, 3, 32, 32) and y.shape == (10_000,)
    np.testing.assert_array_equal(x[-1].ravel(), rec[-1, 1:])
    np.testing.assert_array_equal(np.bincount(y), [1000] * 10)


def write_cifar(folder: Path, records: int, seed=5, meta=True) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": [], "test": []}
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        labels = rng.integers(0, 10, size=records)
        data, images = cifar_records(labels, rng)
        (folder / name).write_bytes(data)
        arrays["test" if name.startswith("test") else "train"].append((images, labels))
    if meta:
        (folder / cifar.META_FILE).write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    return {k: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]))
            for k, v in arrays.items()}


def test_cifar_load_subtracts_train_mean(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "RECORDS", 6)  # official files hold 10,000 records
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"  # as the archive unpacks
    arrays = write_cifar(folder, 6)
    monkeypatch.setenv("HPCNN_DATA", str(tmp_path))
    ds = load_dataset("cifar10")
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.classes == [f"c{i}" for i in range(10)]
    train_u8, test_u8 = arrays["train"][0], arrays["test"][0]
    expected_mean = train_u8.mean(axis=0) / 255.0
    np.testing.assert_allclose(ds.mean, expected_mean, atol=1e-6)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(ds.x_test, test_u8 / 255.0 - expected_mean, atol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["train"][1])
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    assert str(folder) in ds.source


# --- locating files ----------------------------------------------------------------------------


def test_resolve_order(tmp_path, monkeypatch):
    monkeypatch.delenv("HPCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir("mnist") == tmp_path / "cache" / "hpcnn" / "mnist"
    monkeypatch.setenv("HPCNN_DATA", str(tmp_path / "data"))
    assert resolve_data_dir("fashion-mnist") == tmp_path / "data" / "fashion-mnist"
    assert resolve_data_dir("mnist", tmp_path / "mine") == tmp_path / "mine"
    # cifar10: the folder itself, or its cifar-10-batches-bin/ subfolder
    assert resolve_data_dir("cifar10") == tmp_path / "data" / "cifar10"
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-bin").mkdir(parents=True)
    assert resolve_data_dir("cifar10") == tmp_path / "data" / "cifar10" / "cifar-10-batches-bin"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HPCNN_DATA")
    assert resolve_data_dir("mnist") == Path.home() / ".cache" / "hpcnn" / "mnist"
    with pytest.raises(UsageError):
        resolve_data_dir("synthetic")


def test_find_dataset_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCNN_DATA", str(tmp_path))
    found, reason = find_dataset_files("mnist")
    assert found is None
    assert reason == f"no mnist files: {tmp_path / 'mnist'} does not exist (from $HPCNN_DATA)"
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    found, reason = find_dataset_files("mnist")
    assert found is None and "missing t10k-images-idx3-ubyte[.gz]" in reason
    write_mnist(tmp_path / "mnist", gz=False)  # raw files count too
    found, reason = find_dataset_files("mnist")
    assert found == tmp_path / "mnist"
    assert reason == f"found mnist files in {tmp_path / 'mnist'} (from $HPCNN_DATA)"
    found, reason = find_dataset_files("mnist", tmp_path / "elsewhere")
    assert found is None and "(given directory)" in reason


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_deterministic():
    a = make_synthetic(50, 20, shape=(3, 16, 16), seed=7)
    b = make_synthetic(50, 20, shape=(3, 16, 16), seed=7)
    c = make_synthetic(50, 20, shape=(3, 16, 16), seed=8)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])
    # the test split does not depend on the train size
    np.testing.assert_array_equal(make_synthetic(10, 20, (3, 16, 16), seed=7)[2], a[2])
    x_train, y_train, _, _ = a
    assert x_train.dtype == np.float32 and x_train.flags.c_contiguous
    assert y_train.dtype == np.int64 and np.bincount(y_train).tolist() == [5] * 10
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0


def test_synthetic_learnable():
    x_train, y_train, x_test, y_test = make_synthetic(2000, 1000, shape=(1, 28, 28), seed=0)
    means = np.stack([x_train[y_train == k].mean(axis=0) for k in range(10)]).reshape(10, -1)
    flat = x_test.reshape(len(x_test), -1)
    dist = (flat**2).sum(1)[:, None] - 2 * flat @ means.T + (means**2).sum(1)[None]
    accuracy = (dist.argmin(axis=1) == y_test).mean()
    assert accuracy > 0.8


def test_load_synthetic():
    ds = load_dataset("synthetic", synthetic_shape=(3, 8, 8), synthetic_train=40,
                      synthetic_test=10, seed=3)
    assert ds.x_train.shape == (40, 3, 8, 8) and ds.input_shape == (3, 8, 8)
    assert ds.num_classes == 10 and ds.source.startswith("synthetic: 10 classes, 3x8x8")


# --- download ----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A local HTTP server serving tmp_path/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_http_md5_mismatch_leaves_nothing(tmp_path, http_mirror):
    www, url = http_mirror
    write_mnist(www)
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as err:
        dl.download_dataset("mnist", dest, mirror=url)
    msg = one_line(err)
    assert msg.startswith(f"{dest / 'train-images-idx3-ubyte.gz'}: MD5 mismatch")
    assert "expected f68b3c2dcbeaaa9fbdd348bbdeb94873, got " in msg
    assert not dest.exists()  # no partial files, and the folder it created is gone


def test_download_http_success_then_skip(tmp_path, http_mirror, monkeypatch):
    www, url = http_mirror
    write_mnist(www)
    monkeypatch.setitem(registry.OFFICIAL_MD5, "mnist", patched_md5_table(www))
    monkeypatch.setenv("HPCNN_DATA", str(tmp_path / "data"))
    lines = []
    dest = dl.download_dataset("mnist", mirror=url, log=lines.append)
    assert dest == tmp_path / "data" / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for stem in STEMS:
        assert (dest / f"{stem}.gz").read_bytes() == (www / f"{stem}.gz").read_bytes()
    assert load_dataset("mnist").source.endswith("MD5 verified")
    lines.clear()
    (www / "train-images-idx3-ubyte.gz").unlink()  # a second run must not fetch anything
    dl.download_dataset("mnist", mirror=url, log=lines.append)
    assert len(lines) == 4 and all(line.endswith("skipped") for line in lines)


def test_download_http_404(tmp_path, http_mirror, monkeypatch):
    _, url = http_mirror
    with pytest.raises(DataError) as err:
        dl.download_dataset("fashion-mnist", tmp_path / "d", mirror=url)
    msg = one_line(err)
    assert msg.startswith(f"{tmp_path / 'd' / 'train-images-idx3-ubyte.gz'}: download from {url}")
    assert msg.endswith("failed: HTTP 404 File not found")
    assert not (tmp_path / "d").exists()


def test_download_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_mnist(src)
    monkeypatch.setitem(registry.OFFICIAL_MD5, "fashion-mnist", patched_md5_table(src))
    dest = dl.download_dataset("fashion-mnist", tmp_path / "out", mirror=src.as_uri())
    assert load_dataset("fashion-mnist", dest).x_train.shape == (30, 1, 28, 28)
    leftovers = [p.name for p in dest.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_download_cifar_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "RECORDS", 2)
    batches = tmp_path / "batches"
    write_cifar(batches, 2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(batches.iterdir()):
            tar.add(p, arcname=f"cifar-10-batches-bin/{p.name}")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / cifar.ARCHIVE).write_bytes(buf.getvalue())

    official = "c32a1d4ab5d03f1284b67883e8d87530"
    with pytest.raises(DataError, match=f"MD5 mismatch .* expected {official}"):
        dl.download_dataset("cifar10", tmp_path / "out", mirror=str(mirror))  # a plain folder
    assert not (tmp_path / "out").exists()

    monkeypatch.setattr(cifar, "ARCHIVE_MD5", md5(buf.getvalue()))
    dest = dl.download_dataset("cifar10", tmp_path / "out", mirror=mirror.as_uri())
    assert sorted(os.listdir(dest)) == sorted(
        [*cifar.TRAIN_FILES, *cifar.TEST_FILES, cifar.META_FILE]
    )  # archive deleted after extraction
    ds = load_dataset("cifar10", dest)
    assert ds.x_train.shape == (10, 3, 32, 32)


# --- command line ------------------------------------------------------------------------------


def test_cli_missing_directory_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "hpcnn.data", "describe", "mnist", "--data-dir", "/nonexistent"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: /nonexistent: no such directory")


def test_cli_describe(tmp_path, capsys, monkeypatch):
    write_mnist(tmp_path)
    assert cli_main(["describe", "mnist", "--data-dir", str(tmp_path)]) == 1  # MD5s differ
    out = capsys.readouterr().out
    assert "total       30       20" in out
    assert "train        0   0.0000   1.0000" in out
    assert f"BAD {tmp_path / 'train-images-idx3-ubyte.gz'}: " in out
    monkeypatch.setitem(registry.OFFICIAL_MD5, "mnist", patched_md5_table(tmp_path))
    assert cli_main(["describe", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert "BAD" not in capsys.readouterr().out


def test_cli_usage_errors(capsys):
    assert cli_main(["describe", "imagenet"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dataset 'imagenet'; valid names:")
    assert cli_main(["download", "synthetic"]) == 2
    with pytest.raises(SystemExit) as ex:
        cli_main(["--help"])
    assert ex.value.code == 0
    assert "describe" in capsys.readouterr().out
