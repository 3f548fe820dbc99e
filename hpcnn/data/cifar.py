"""Reader for the CIFAR-10 binary version (``cifar-10-batches-bin/``).

Each batch file holds 10,000 records of 3,073 bytes: one label byte (0-9), then 3,072 pixel bytes,
the 1,024 red values, then green, then blue (planar RGB), each plane 32x32 in row-major order.
There are no official per-file checksums for the ``.bin`` files, so we check sizes and labels;
the archive they come from is verified on download (see :mod:`hpcnn.data.download`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hpcnn.errors import DataError

RECORDS = 10_000  # records per official batch file; tests lower it to keep fixtures small
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32  # 3073
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
META_FILE = "batches.meta.txt"
ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_DIR = "cifar-10-batches-bin"  # the folder inside the archive
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


def batch_bytes(records: int | None = None) -> int:
    """Size of a batch file: ``records`` (default RECORDS, officially 10,000) * 3,073 bytes."""
    return (RECORDS if records is None else records) * RECORD_BYTES


def read_cifar_batch(
    path: str | Path, records: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file. Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    ``records``: how many records the file must hold; None means the official 10,000. Only tests
    pass a smaller number, to keep their fixture files small.
    """
    path = Path(path)
    records = RECORDS if records is None else records
    expected = batch_bytes(records)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if size != expected:
        raise DataError(
            f"{path}: wrong size {size} bytes, expected {expected} "
            f"({records} records of {RECORD_BYTES} bytes)"
        )
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if raw.size != expected:  # the file changed under us
        raise DataError(f"{path}: read {raw.size} bytes, expected {expected}")
    raw = raw.reshape(records, RECORD_BYTES)
    labels = raw[:, 0]
    bad = np.flatnonzero(labels >= len(CLASSES))
    if bad.size:
        raise DataError(
            f"{path}: label {labels[bad[0]]} in record {bad[0]} is out of range 0-9 "
            f"({bad.size} of {records} labels out of range)"
        )
    images = raw[:, 1:].reshape(records, *IMAGE_SHAPE)  # planar RGB is already (C, H, W)
    return images, labels.astype(np.int64)


def read_class_names(path: str | Path) -> list[str]:
    """Class names from ``batches.meta.txt``: one per line, blank lines ignored, exactly 10."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="ascii").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read class names: {e}") from None
    names = [n for n in names if n]
    if len(names) != len(CLASSES):
        raise DataError(f"{path}: {len(names)} class names, expected {len(CLASSES)}")
    return names


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write records in the official binary format: images uint8 (N, 3, 32, 32), labels (N,)."""
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    if images.shape[1:] != IMAGE_SHAPE or labels.shape != images.shape[:1]:
        raise ValueError(
            f"expected images (N, 3, 32, 32) and labels (N,), got {images.shape} and {labels.shape}"
        )
    rec = np.empty((len(images), RECORD_BYTES), dtype=np.uint8)
    rec[:, 0] = labels
    rec[:, 1:] = images.reshape(len(images), -1)
    path = Path(path)
    rec.tofile(path)
    return path
