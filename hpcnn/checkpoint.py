"""Checkpoint files: one HDF5 file per checkpoint, written atomically, verified on load.

A checkpoint holds everything a run needs to continue exactly where it stopped::

    /params      float32 (R, P)  the flat parameter buffer (R = 1, or one row per rank when the
                                 ranks' parameters differ, as between averages of --sync average)
    /momentum    float32 (R, P)  the SGD momentum buffers, flattened in the same layout
    attrs        format = "hpcnn-checkpoint", version, meta (JSON: step, epoch, position in the
                 epoch, net and parameter shapes, configuration, ranks, parallel mode, LR schedule,
                 RNG states, early-stopping state), checksum (SHA-256 of the datasets and meta)

Writing is atomic: a temporary file in the same folder is written, flushed and fsynced, then
renamed over the final name, and the folder is fsynced. A crash at any point leaves either the
old set of checkpoints or the old set plus the complete new one, never a half-written
``ckpt-*.h5``. Loading recomputes the checksum, so a truncated or corrupted file is refused with a
:class:`hpcnn.errors.DataError` naming it.

Test hook: ``HPCNN_TEST_CKPT_PAUSE=STEP`` makes the writer of the checkpoint of step STEP print
``test hook: paused before renaming <tmp>`` on stderr and sleep, between the fsync of the
temporary file and its rename, so a test can kill the process there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from hpcnn.errors import DataError, UsageError

FORMAT = "hpcnn-checkpoint"
VERSION = 1
BEST = "best.h5"
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP_PREFIX = ".ckpt-"
_TMP_SUFFIX = ".h5.tmp"
PAUSE_ENV = "HPCNN_TEST_CKPT_PAUSE"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.h5"


def _checksum(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(meta_json.encode())
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (some file systems); the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pause_hook(step, tmp: Path) -> None:
    want = os.environ.get(PAUSE_ENV)
    if want and step is not None and want.strip() == str(step):
        print(f"test hook: paused before renaming {tmp}", file=sys.stderr, flush=True)
        time.sleep(600)


def write_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write ``arrays`` and ``meta`` to ``path`` atomically (temp file, fsync, rename, dir fsync).

    Raises :class:`UsageError` naming the folder when it cannot be written.
    """
    import h5py

    path = Path(path)
    meta_json = json.dumps(meta, sort_keys=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.stem}-{os.getpid()}{_TMP_SUFFIX}"
    try:
        with h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                f.create_dataset(name, data=np.ascontiguousarray(a))
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["meta"] = meta_json
            f.attrs["checksum"] = _checksum(arrays, meta_json)
            f.flush()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _pause_hook(meta.get("step"), tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        why = e.strerror or str(e)
        raise UsageError(f"cannot write checkpoint {path}: {why}") from None
    _fsync_dir(path.parent)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a checkpoint file; :class:`DataError` naming it when it is not one
    (missing, not HDF5, truncated, another format, checksum mismatch)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise DataError(f"{path}: not an hpcnn checkpoint (no format={FORMAT} attribute)")
            if int(f.attrs.get("version", -1)) != VERSION:
                raise DataError(f"{path}: checkpoint version {f.attrs.get('version')} is not "
                                f"{VERSION}")
            meta_json = str(f.attrs["meta"])
            stored = str(f.attrs["checksum"])
            arrays = {name: f[name][...] for name in f.keys()}
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: unreadable checkpoint (truncated or corrupt HDF5: "
                        f"{first})") from None
    if _checksum(arrays, meta_json) != stored:
        raise DataError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    try:
        meta = json.loads(meta_json)
    except ValueError:
        raise DataError(f"{path}: corrupt checkpoint metadata") from None
    return arrays, meta


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``ckpt-<step>.h5`` files of ``directory``, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def prune(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; returns the deleted paths."""
    gone = []
    for p in list_checkpoints(directory)[keep:]:
        try:
            p.unlink()
            gone.append(p)
        except OSError:
            pass
    return gone


def remove_stale_temporaries(directory: str | Path) -> None:
    """Remove temporary files left by a writer that died before its rename."""
    directory = Path(directory)
    for p in directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"):
        try:
            p.unlink()
        except OSError:
            pass


def check_writable(directory: str | Path) -> None:
    """Create ``directory`` if needed and prove a file can be written there (UsageError if not)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{_TMP_PREFIX}probe-{os.getpid()}{_TMP_SUFFIX}"
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write checkpoints in {directory}: "
                         f"{e.strerror or e}") from None


def newest_valid(directory: str | Path, warn) -> tuple[Path, dict, dict] | None:
    """The newest checkpoint of ``directory`` that loads, as ``(path, arrays, meta)``, or None.

    Each newer one that fails to load is reported through ``warn(message)`` and skipped.
    """
    for p in list_checkpoints(directory):
        try:
            arrays, meta = read_checkpoint(p)
        except DataError as e:
            warn(f"warning: skipping {e}")
            continue
        return p, arrays, meta
    return None
