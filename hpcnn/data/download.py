"""Download the official dataset files, verifying their MD5 before they are put in place.

Each file is streamed into a temporary file in the destination folder, hashed on the way, and
renamed to its final name only when its MD5 matches the official one; otherwise the temporary
file is deleted and :class:`hpcnn.errors.DataError` names the file, the expected and the received
MD5. Files already present and valid are skipped. Only ``urllib`` is used; a mirror may be an
``http(s)://`` or ``file://`` URL, or a local folder.

Two limits bound a download: ``timeout`` for each network operation (connect, each read) and
``max_time`` for the whole transfer of one file, so a server that trickles bytes cannot keep it
going for ever. On any failure, or when the limit is reached, the temporary ``.part`` file is
removed: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from hpcnn.atomic import atomic_path
from hpcnn.data import cifar, idx, registry
from hpcnn.errors import DataError, UsageError

# yann.lecun.com is often down; this is the mirror torchvision uses.
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}
_CHUNK = 1 << 20
MAX_TIME = 1800.0  # seconds for one file's whole transfer (CIFAR-10's 163 MB at 100 KB/s)


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _url(base: str, name: str) -> str:
    if "://" not in base:  # a local folder
        base = Path(base).expanduser().resolve().as_uri()
    if base.endswith(name):
        return base
    return base.rstrip("/") + "/" + name


def _temp_in(folder: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def check_limits(timeout: float, max_time: float) -> None:
    """UsageError unless both limits are finite positive numbers of seconds."""
    for name, v in (("timeout", timeout), ("max_time", max_time)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UsageError(f"download {name} must be a positive number of seconds, got {v!r}")


class _TooLong(Exception):
    """The transfer went past its time limit."""


def _transfer(url, tmp, h, timeout, deadline, cancel):
    """Stream ``url`` into ``tmp``, hashing into ``h``; stops when ``cancel`` is set or past
    ``deadline`` (time.monotonic()). Raises what urllib raises."""
    # "r+b": the file made by mkstemp; if the caller gave up and removed it meanwhile, this
    # fails instead of creating a new one that nobody would remove
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "r+b") as f:
        read = getattr(r, "read1", r.read)  # read1: returns what has arrived, not a full chunk
        while chunk := read(_CHUNK):
            if cancel.is_set() or time.monotonic() > deadline:
                raise _TooLong
            h.update(chunk)
            f.write(chunk)


def fetch(url: str, target: Path, md5: str, *, timeout: float = 60.0,
          max_time: float = MAX_TIME) -> None:
    """Download ``url`` to ``target`` via a temporary file in its folder, if its MD5 is ``md5``.

    ``timeout`` bounds each network operation, ``max_time`` the whole transfer (both seconds).
    """
    check_limits(timeout, max_time)
    tmp = _temp_in(target.parent, target.name)
    cancel = threading.Event()
    try:
        h = hashlib.md5(usedforsecurity=False)
        outcome = []

        def work():
            try:
                _transfer(url, tmp, h, min(timeout, max_time), time.monotonic() + max_time,
                          cancel)
                outcome.append(None)
            except BaseException as e:  # handed to the caller
                outcome.append(e)

        # The transfer runs in a thread so the limit also holds while urllib waits for a
        # trickling server's headers; past it, the thread is told to stop and left behind.
        worker = threading.Thread(target=work, name="hpcnn-download", daemon=True)
        worker.start()
        worker.join(max_time + 1.0)
        if worker.is_alive() or isinstance(outcome[0], _TooLong):
            raise DataError(f"{target}: download from {url} did not finish within "
                            f"{max_time:g} s (--max-time); nothing was saved")
        e = outcome[0]
        if isinstance(e, (urllib.error.URLError, http.client.HTTPException, OSError)):
            if isinstance(e, urllib.error.HTTPError):
                reason = f"HTTP {e.code} {e.reason}"
            else:
                reason = getattr(e, "reason", None) or e
            raise DataError(f"{target}: download from {url} failed: {reason}") from None
        if e is not None:
            raise e
        got = h.hexdigest()
        if got != md5:
            raise DataError(
                f"{target}: MD5 mismatch for the download from {url}: expected {md5}, got {got}; "
                "nothing was saved"
            )
        with atomic_path(target, tmp):
            pass  # downloaded and checked: fsync, rename, fsync of the folder
    finally:
        cancel.set()
        tmp.unlink(missing_ok=True)


def _idx_valid(path: Path, checksum: idx.Checksum) -> bool:
    if not path.is_file():
        return False
    if path.suffix == ".gz":
        return _md5_file(path) == checksum.gz
    return _md5_file(path) == checksum.raw


def _download_idx(
    dataset: str, base: str, dest: Path, timeout: float, max_time: float,
    log: Callable[[str], None]
) -> None:
    for stem, checksum in registry.OFFICIAL_MD5[dataset].items():
        have = [p for p in (dest / f"{stem}.gz", dest / stem) if _idx_valid(p, checksum)]
        if have:
            log(f"{have[0]}: present, MD5 ok, skipped")
            continue
        url = _url(base, f"{stem}.gz")
        log(f"{dest / (stem + '.gz')}: downloading {url}")
        fetch(url, dest / f"{stem}.gz", checksum.gz, timeout=timeout, max_time=max_time)


def _cifar_complete(dest: Path) -> bool:
    names = cifar.TRAIN_FILES + cifar.TEST_FILES
    return all(
        (dest / n).is_file() and (dest / n).stat().st_size == cifar.batch_bytes() for n in names
    )


def _extract_cifar(archive: Path, dest: Path, log: Callable[[str], None]) -> None:
    """Copy the batch files and batches.meta.txt out of the archive into ``dest`` (flat)."""
    wanted = cifar.TRAIN_FILES + cifar.TEST_FILES + (cifar.META_FILE,)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in wanted:
                member = f"{cifar.ARCHIVE_DIR}/{name}"
                try:
                    info = tar.getmember(member)
                except KeyError:
                    raise DataError(f"{archive}: archive has no {member}") from None
                if not info.isfile():
                    raise DataError(f"{archive}: {member} is not a regular file")
                if name != cifar.META_FILE and info.size != cifar.batch_bytes():
                    raise DataError(
                        f"{archive}: {member} is {info.size} bytes, expected {cifar.batch_bytes()}"
                    )
                tmp = _temp_in(dest, name)
                with atomic_path(dest / name, tmp), tar.extractfile(info) as src, \
                        open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                log(f"{dest / name}: extracted")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract: {e}") from None


def _download_cifar(
    base: str, dest: Path, timeout: float, max_time: float, log: Callable[[str], None]
) -> None:
    if _cifar_complete(dest):
        log(f"{dest}: all CIFAR-10 batch files present with the right size, skipped")
        return
    url = _url(base, cifar.ARCHIVE)
    archive = dest / cifar.ARCHIVE
    log(f"{archive}: downloading {url}")
    fetch(url, archive, cifar.ARCHIVE_MD5, timeout=timeout, max_time=max_time)
    try:
        _extract_cifar(archive, dest, log)
    finally:
        archive.unlink(missing_ok=True)


def download_dataset(
    dataset: str,
    dest: str | Path | None = None,
    *,
    mirror: str | None = None,
    timeout: float = 60.0,
    max_time: float = MAX_TIME,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download ``dataset``'s official files into ``dest`` and return that folder.

    ``dest`` defaults to ``$HPCNN_DATA/<dataset>`` if HPCNN_DATA is set, else the user cache
    (the folder :func:`hpcnn.data.resolve_data_dir` looks in). ``mirror``: a base URL (or local
    folder) replacing the default in MIRRORS. ``timeout``: seconds for each network operation;
    ``max_time``: seconds for each file's whole transfer. ``log`` receives one line per file.
    """
    dataset = registry.canonical_name(dataset)
    if dataset not in registry.FILE_DATASETS:
        raise UsageError(f"{dataset} is generated, there is nothing to download")
    check_limits(timeout, max_time)
    log = log or (lambda _msg: None)
    if dest is None:
        dest = registry._base_dir(dataset, None)[0]
    dest = Path(dest).expanduser()
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot create the folder: {e.strerror or e}") from None
    base = mirror or MIRRORS[dataset]
    try:
        if dataset == "cifar10":
            _download_cifar(base, dest, timeout, max_time, log)
        else:
            _download_idx(dataset, base, dest, timeout, max_time, log)
    except BaseException:
        if created and not any(dest.iterdir()):
            dest.rmdir()  # leave nothing behind
        raise
    return dest
