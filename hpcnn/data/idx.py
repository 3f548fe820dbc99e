"""Reader for IDX files (MNIST, Fashion-MNIST), gzip-compressed (``.gz``) or raw.

Every problem with a file raises :class:`hpcnn.errors.DataError` with a one-line message that names
the file and what is wrong. The format (all integers big-endian)::

    bytes 0-3   magic: 0x00 0x00 <type 0x08 = ubyte> <ndim>  (images 2051, labels 2049)
    ndim x 4    one uint32 size per dimension (images: N, rows, cols; labels: N)
    rest        N * prod(sizes[1:]) unsigned bytes in C order

Reading is bounded in time and memory whatever the file holds: a file, or the data a ``.gz``
declares in its IDX header, may not exceed :data:`MAX_BYTES` (the largest official file is
47 MB), and a ``.gz`` is decompressed as a stream that stops as soon as it holds more than its
header declares, so a small "decompression bomb" costs a few milliseconds, not gigabytes.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpcnn.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_KINDS = {"images": (IMAGES_MAGIC, 3), "labels": (LABELS_MAGIC, 1)}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_BYTES = 64 << 20  # per IDX file: above the 47,040,016 bytes of MNIST's train images
_STEP = 1 << 20  # decompressed bytes produced per round


class Checksum(NamedTuple):
    """Official MD5s of one IDX file: of the ``.gz`` as distributed, and of the IDX bytes inside."""

    gz: str
    raw: str


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_payload(path: str | Path, kind: str | None = None) -> tuple[bytes, bytes]:
    """``(stored, payload)``: the file's bytes, and the IDX bytes (gunzipped if it is ``.gz``).

    ``kind`` ("images" or "labels"), when given, lets a ``.gz`` stop decompressing as soon as
    it yields more than its IDX header declares. Nothing above :data:`MAX_BYTES` is read.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            stored = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(stored) > MAX_BYTES:
        raise DataError(f"{path}: more than {MAX_BYTES} bytes, larger than any IDX file hpcnn "
                        f"reads (the largest official one is 47,040,016 bytes)")
    if path.suffix != ".gz":
        return stored, stored
    return stored, gunzip_bounded(path, stored, kind)


def _declared_size(head: bytes, kind: str) -> int | None:
    """The payload size an IDX header declares, or None when the header is not a valid one of
    ``kind`` (:func:`parse_idx` then says what is wrong)."""
    magic, ndim = _KINDS[kind]
    if int.from_bytes(head[:4], "big") != magic:
        return None
    dims = np.frombuffer(head, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    if 0 in dims:
        return None
    return 4 + 4 * ndim + int(np.prod([int(d) for d in dims]))  # Python ints: no overflow


def gunzip_bounded(path: str | Path, stored: bytes, kind: str | None = None) -> bytes:
    """Decompress gzip ``stored`` as a stream, at most :data:`MAX_BYTES` and, with ``kind``, no
    more than the IDX header inside declares; DataError naming ``path`` otherwise."""
    where = f"{path} (decompressed)"
    header = 4 + 4 * _KINDS[kind][1] if kind else None
    limit = MAX_BYTES
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    pending = stored
    try:
        while True:
            chunk = d.decompress(pending, min(_STEP, limit + 1 - len(out)))  # >= 1: see below
            pending = d.unconsumed_tail
            out += chunk
            if header is not None and len(out) >= header:
                declared = _declared_size(bytes(out[:header]), kind)
                header = None
                if declared is None:
                    return bytes(out)  # parse_idx names the header's fault
                if declared > MAX_BYTES:
                    raise DataError(f"{where}: header declares {declared} bytes, more than the "
                                    f"{MAX_BYTES} of any IDX file hpcnn reads")
                limit = declared
            if len(out) > limit:
                what = "its header declares" if limit < MAX_BYTES else "hpcnn reads"
                raise DataError(f"{where}: holds more than the {limit} bytes {what}; "
                                f"decompression stopped there")
            if d.eof:
                rest = d.unused_data
                if not rest.strip(b"\0"):
                    return bytes(out)
                d, pending = zlib.decompressobj(16 + zlib.MAX_WBITS), rest  # next gzip member
            elif not chunk and not pending:
                raise DataError(f"{path}: not a valid gzip file (compressed data ends early, "
                                f"after {len(out)} bytes)")
    except zlib.error as e:
        raise DataError(f"{path}: not a valid gzip file ({e})") from None


def check_md5(path: str | Path, checksum: Checksum, stored: bytes, payload: bytes) -> None:
    """Raise DataError unless the file matches its official MD5.

    A ``.gz`` passes if the compressed bytes match the official ``.gz`` MD5, or, failing that, if
    the decompressed bytes match the official payload MD5 (the same data re-compressed locally).
    A raw file must match the payload MD5.
    """
    path = Path(path)
    if path.suffix == ".gz":
        got_gz = md5_hex(stored)
        if got_gz == checksum.gz:
            return
        got_raw = md5_hex(payload)
        if got_raw != checksum.raw:
            raise DataError(
                f"{path}: MD5 mismatch: expected {checksum.gz} (official .gz), got {got_gz}; "
                f"decompressed data: expected {checksum.raw}, got {got_raw}"
            )
    else:
        got_raw = md5_hex(payload)
        if got_raw != checksum.raw:
            raise DataError(
                f"{path}: MD5 mismatch: expected {checksum.raw} (official decompressed data), "
                f"got {got_raw}"
            )


def parse_idx(path: str | Path, payload: bytes, kind: str) -> np.ndarray:
    """Check the header of an IDX ``payload`` against its size and return the data as a uint8 view.

    ``kind`` is ``"images"`` (magic 2051, 3 dims) or ``"labels"`` (magic 2049, 1 dim); ``path`` only
    names the file in error messages.
    """
    magic_expected, ndim = _KINDS[kind]
    where = f"{path}" + (" (decompressed)" if Path(path).suffix == ".gz" else "")
    if len(payload) < 4:
        raise DataError(f"{where}: {len(payload)} bytes, too short for an IDX header")
    magic = int.from_bytes(payload[:4], "big")
    if magic != magic_expected:
        hint = ""
        if payload[:2] == _GZIP_MAGIC:
            hint = "; the file looks gzip-compressed, name it *.gz"
        raise DataError(
            f"{path}: bad magic number {magic}, expected {magic_expected} (IDX {kind}){hint}"
        )
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{where}: truncated header: {len(payload)} bytes, need {header}")
    dims = tuple(int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4))
    if 0 in dims:
        raise DataError(f"{path}: header has a zero dimension {dims}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    sizes = f"{header} + {' * '.join(map(str, dims))} = {expected} bytes"
    if len(payload) < expected:
        raise DataError(f"{where}: truncated: {len(payload)} bytes, header says {sizes}")
    if len(payload) > expected:
        raise DataError(
            f"{where}: {len(payload) - expected} trailing bytes after the data: "
            f"{len(payload)} bytes, header says {sizes}"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(
    path: str | Path,
    *,
    md5: Checksum | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read an IDX images file. Returns a read-only uint8 array of shape (N, rows, cols).

    ``md5``: the official checksums to verify against (None skips the check). ``shape``: the
    required (rows, cols), e.g. (28, 28); None accepts any.
    """
    stored, payload = read_payload(path, "images")
    x = parse_idx(path, payload, "images")
    if shape is not None and x.shape[1:] != tuple(shape):
        raise DataError(
            f"{path}: images are {x.shape[1]}x{x.shape[2]}, expected {shape[0]}x{shape[1]}"
        )
    if md5 is not None:
        check_md5(path, md5, stored, payload)
    return x


def read_idx_labels(
    path: str | Path, *, md5: Checksum | None = None, num_classes: int = 10
) -> np.ndarray:
    """Read an IDX labels file. Returns int64 labels of shape (N,), each in 0..num_classes-1."""
    stored, payload = read_payload(path, "labels")
    y = parse_idx(path, payload, "labels")
    bad = np.flatnonzero(y >= num_classes)
    if bad.size:
        raise DataError(
            f"{path}: label {y[bad[0]]} at index {bad[0]} is out of range 0-{num_classes - 1} "
            f"({bad.size} of {y.size} labels out of range)"
        )
    if md5 is not None:
        check_md5(path, md5, stored, payload)
    return y.astype(np.int64)


def read_idx_pair(
    images_path: str | Path,
    labels_path: str | Path,
    *,
    md5_images: Checksum | None = None,
    md5_labels: Checksum | None = None,
    shape: tuple[int, int] | None = None,
    num_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split: ``(images uint8 (N, rows, cols), labels int64 (N,))``, counts checked."""
    x = read_idx_images(images_path, md5=md5_images, shape=shape)
    y = read_idx_labels(labels_path, md5=md5_labels, num_classes=num_classes)
    if len(x) != len(y):
        raise DataError(
            f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels"
        )
    return x, y


def write_idx(path: str | Path, data: np.ndarray) -> Path:
    """Write a uint8 array (1-D labels or 3-D images) as an IDX file, gzip-compressed if ``.gz``.

    Used by the tests and handy for making small fixtures; it writes what :func:`parse_idx` reads.
    """
    path = Path(path)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    if data.ndim not in (1, 3):
        raise ValueError(f"write_idx takes 1-D labels or 3-D images, got shape {data.shape}")
    header = bytes([0, 0, 0x08, data.ndim]) + np.asarray(data.shape, dtype=">u4").tobytes()
    payload = header + data.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
