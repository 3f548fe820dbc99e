"""Checkpoint files: one HDF5 file per checkpoint, written atomically, verified before use.

Format 2 holds full-shape named arrays, so any strategy at any rank count loads any checkpoint
(each rank takes its slice)::

    /param/<name>     float32  the parameter, full shape (with a leading axis of one row per rank
                               where ranks legitimately differ, as between averages of
                               --sync average: meta "rows" > 1)
    /momentum/<name>  float32  its SGD momentum, same shape
    attrs             format = "hpcnn-checkpoint", version = 2, meta (JSON: step, epoch, position
                      in the epoch, net, input shape, the arrays' full shapes, rows,
                      configuration, ranks, strategy, LR schedule, RNG states, early-stopping
                      state), checksum (SHA-256 of the datasets and meta)

Format 1 (flat ``/params`` and ``/momentum`` rows of the whole model in layer order, with the
parameter names and shapes in its meta) is read and converted to format-2 names.

Writing goes through :func:`hpcnn.atomic.atomic_path`: a crash at any point leaves either the old
set of checkpoints or the old set plus the complete new one, never a half-written ``ckpt-*.h5``.

Reading trusts nothing: before any array is read, the file's layout is checked (only groups and
datasets reached by hard links, no external or virtual storage, float32 datasets whose names and
shapes are the ones the caller expects, and nothing else), the metadata's types and ranges are
checked, and only then is the data read and the checksum compared. Every failure is one
:class:`hpcnn.errors.DataError` line naming the file.

Test hook: ``HPCNN_TEST_CKPT_PAUSE=STEP`` makes the writer of the checkpoint of step STEP print
``test hook: paused before renaming <tmp>`` on stderr and sleep, between the fsync of the
temporary file and its rename, so a test can kill the process there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from hpcnn.atomic import atomic_path
from hpcnn.errors import DataError, UsageError
from hpcnn.h5check import attr
from hpcnn.h5check import datasets as h5_datasets

FORMAT = "hpcnn-checkpoint"
VERSION = 2
BEST = "best.h5"
MAX_ROWS = 1 << 16  # per-rank rows a checkpoint may hold
MAX_META_BYTES = 16 << 20
_NAME = re.compile(r"^ckpt-(\d+)\.h5$")
_TMP_PREFIX = ".ckpt-"
_TMP_SUFFIX = ".h5.tmp"
PAUSE_ENV = "HPCNN_TEST_CKPT_PAUSE"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}.h5"


def checkpoint_step(path) -> int | None:
    m = _NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _checksum(arrays: dict[str, np.ndarray], meta_json: str) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    h.update(meta_json.encode())
    return h.hexdigest()


def _one_line(e) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _pause_hook(step):
    def hook(tmp):
        want = os.environ.get(PAUSE_ENV)
        if want and step is not None and want.strip() == str(step):
            print(f"test hook: paused before renaming {tmp}", file=sys.stderr, flush=True)
            time.sleep(600)
    return hook


def write_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write named ``arrays`` and ``meta`` to ``path`` atomically.

    Raises :class:`UsageError` naming the folder when it cannot be written.
    """
    import h5py

    path = Path(path)
    meta_json = json.dumps(meta, sort_keys=True)
    tmp = path.parent / f"{_TMP_PREFIX}{path.stem}-{os.getpid()}{_TMP_SUFFIX}"
    try:
        with atomic_path(path, tmp, before_rename=_pause_hook(meta.get("step"))):
            with h5py.File(tmp, "w") as f:
                for name, a in arrays.items():
                    f.create_dataset(name, data=np.ascontiguousarray(a, np.float32))
                # fixed-length strings: kept in the object header (see hpcnn.h5check)
                f.attrs["format"] = np.bytes_(FORMAT.encode())
                f.attrs["version"] = VERSION
                f.attrs["meta"] = np.bytes_(meta_json.encode())
                f.attrs["checksum"] = np.bytes_(_checksum(arrays, meta_json).encode())
                f.flush()
    except OSError as e:
        raise UsageError(f"cannot write checkpoint {path}: {e.strerror or _one_line(e)}") \
            from None
    return path


# reading --------------------------------------------------------------------------------------
def _int(meta, key, lo, hi=2**62):
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise DataError(f"metadata {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def check_meta(meta: dict, version: int) -> None:
    """Types and ranges of what resuming uses; DataError (without the path) otherwise."""
    if not isinstance(meta, dict):
        raise DataError("metadata is not a JSON object")
    for key, lo in (("step", 0), ("epoch", 1), ("index", 0), ("loss_n", 0), ("ranks", 1),
                    ("batch", 1), ("steps_per_epoch", 0)):
        _int(meta, key, lo)
    loss_sum = meta.get("loss_sum")
    if isinstance(loss_sum, bool) or not isinstance(loss_sum, (int, float)) or \
            not math.isfinite(loss_sum):
        raise DataError(f"metadata 'loss_sum' must be a finite number, got {loss_sum!r}")
    if version >= 2:
        _int(meta, "rows", 1, MAX_ROWS)
        shapes = meta.get("arrays")
        if not isinstance(shapes, dict) or not all(
                isinstance(s, list) and all(isinstance(d, int) and not isinstance(d, bool)
                                            and 0 <= d < 2**40 for d in s)
                for s in shapes.values()):
            raise DataError("metadata 'arrays' must map names to shapes")
    for key in ("rng", "early_stop", "config", "lr_schedule", "strategy_state"):
        if key in meta and meta[key] is not None and not isinstance(meta[key], dict):
            raise DataError(f"metadata {key!r} must be an object")
    es = meta.get("early_stop") or {}
    for key in ("best",):
        v = es.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise DataError(f"metadata early_stop.{key} must be a number, got {v!r}")
    for key in ("best_epoch", "bad", "patience"):
        v = es.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise DataError(f"metadata early_stop.{key} must be a non-negative integer, "
                            f"got {v!r}")


def _v1_names(meta):
    """Format 1: the flat rows' (name, offset, size, shape) from its meta."""
    params = meta.get("params")
    if not isinstance(params, list):
        raise DataError("format-1 metadata has no parameter list")
    out, off = [], 0
    for item in params:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40
                        for d in item[1])):
            raise DataError("format-1 metadata has a malformed parameter entry")
        n = math.prod(item[1])
        out.append((item[0], off, n, tuple(item[1])))
        off += n
    return out, off


def _expect_matches(meta, version, expected, mismatch):
    """Raise DataError(``mismatch(meta)``) unless the file holds exactly ``expected`` arrays."""
    if expected is None:
        return
    if version >= 2:
        got = {k: tuple(v) for k, v in meta["arrays"].items()}
    else:
        got = {}
        for name, _, _, shape in _v1_names(meta)[0]:
            got[f"param/{name}"] = got[f"momentum/{name}"] = shape
    if got != {k: tuple(v) for k, v in expected.items()}:
        raise DataError(mismatch(meta) if mismatch else
                        "holds other parameters than this run's model")


def read_checkpoint(path: str | Path, expected: dict | None = None, mismatch=None,
                    ) -> tuple[dict[str, np.ndarray], dict]:
    """``(arrays, meta)`` of a checkpoint file, arrays by format-2 name.

    ``expected`` ({name: full shape}) is checked against the file before any data is read;
    ``mismatch(meta)`` words the error when it differs. :class:`DataError` naming the file when
    it is not a valid checkpoint (missing, not HDF5, truncated, another format, hostile layout or
    metadata, checksum mismatch).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        return _read(path, expected, mismatch)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise DataError(f"{path}: unreadable checkpoint (truncated or corrupt HDF5: "
                        f"{_one_line(e)})") from None


def _read(path, expected, mismatch):
    import h5py

    with h5py.File(path, "r") as f:
        try:
            version = int(attr(f, "version", "iu"))
        except DataError:
            version = None
        # format 2 writes fixed-length strings; format 1 (older hpcnn) wrote variable-length
        # ones, read only when the file says it is version 1
        kinds = "SO" if version == 1 else "S"
        try:
            fmt = attr(f, "format", kinds)
        except DataError:
            fmt = None
        if fmt != FORMAT:
            raise DataError(f"not an hpcnn checkpoint (no format={FORMAT} attribute)")
        if version not in (1, VERSION):
            raise DataError(f"checkpoint version {version!r} is not 1 or {VERSION}")
        meta_json, stored = attr(f, "meta", kinds), attr(f, "checksum", kinds)
        if not isinstance(meta_json, str) or not isinstance(stored, str):
            raise DataError("checkpoint without meta or checksum attributes")
        if len(meta_json) > MAX_META_BYTES:
            raise DataError(f"metadata of {len(meta_json)} bytes (limit {MAX_META_BYTES})")
        try:
            meta = json.loads(meta_json)
        except ValueError:
            raise DataError("corrupt checkpoint metadata") from None
        check_meta(meta, version)
        _expect_matches(meta, version, expected, mismatch)
        datasets = dict(h5_datasets(f))
        if version >= 2:
            rows = meta["rows"]
            want = {k: (tuple(v) if rows == 1 else (rows, *v)) for k, v in meta["arrays"].items()}
        else:
            total = _v1_names(meta)[1]
            rows = datasets["params"].shape[0] if "params" in datasets and \
                datasets["params"].ndim == 2 else 0
            if not 1 <= rows <= MAX_ROWS:
                raise DataError("format-1 /params is missing or misshapen")
            want = {"params": (rows, total), "momentum": (rows, total)}
        if set(datasets) != set(want):
            extra, missing = sorted(set(datasets) - set(want)), sorted(set(want) - set(datasets))
            raise DataError(f"unexpected datasets {extra[:5]}, missing {missing[:5]}")
        for name, ds in datasets.items():
            if ds.dtype != np.float32 or tuple(ds.shape) != want[name]:
                raise DataError(f"dataset {name!r} is {ds.dtype} {tuple(ds.shape)}, expected "
                                f"float32 {want[name]}")
        arrays = {name: ds[...] for name, ds in datasets.items()}
    if _checksum(arrays, meta_json) != stored:
        raise DataError("checksum mismatch, the checkpoint is corrupt")
    if version == 1:
        arrays, meta = _from_v1(arrays, meta, rows)
    return arrays, meta


def _from_v1(arrays, meta, rows):
    names, _ = _v1_names(meta)
    out, shapes = {}, {}
    for name, off, n, shape in names:
        for kind, src in (("param", "params"), ("momentum", "momentum")):
            a = arrays[src][:, off:off + n].reshape((rows, *shape))
            out[f"{kind}/{name}"] = a[0] if rows == 1 else a
            shapes[f"{kind}/{name}"] = list(shape)
    meta = dict(meta, rows=rows, arrays=shapes, format_version=1,
                strategy_state={"since_average": meta.get("since_average", 0)})
    return out, meta


# the folder ---------------------------------------------------------------------------------
def list_checkpoints(directory: str | Path) -> list[Path]:
    """The ``ckpt-<step>.h5`` files of ``directory``, newest (highest step) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        step = checkpoint_step(p)
        if step is not None and p.is_file():
            found.append((step, p))
    return [p for _, p in sorted(found, reverse=True)]


def prune(directory: str | Path, keep: int, upto_step: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints of steps up to ``upto_step`` (the one just
    written); checkpoints of higher steps are never this run's to delete. Returns the deleted."""
    gone = []
    mine = [p for p in list_checkpoints(directory) if checkpoint_step(p) <= upto_step]
    for p in mine[keep:]:
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
        probe = directory / f"{_TMP_PREFIX}probe-{os.getpid()}{_TMP_SUFFIX}"  # stale: removed
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write checkpoints in {directory}: "
                         f"{e.strerror or e}") from None


def newest_valid(directory: str | Path, warn, expected=None, mismatch=None,
                 ) -> tuple[Path, dict, dict] | None:
    """The newest checkpoint of ``directory`` that loads, as ``(path, arrays, meta)``, or None.

    Each newer one that fails to load is reported through ``warn(message)`` and skipped.
    """
    for p in list_checkpoints(directory):
        try:
            arrays, meta = read_checkpoint(p, expected, mismatch)
        except DataError as e:
            warn(f"warning: skipping {e}")
            continue
        return p, arrays, meta
    return None
