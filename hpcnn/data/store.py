"""HDF5 dataset store: one file per dataset, read by each rank a batch at a time.

``python -m hpcnn.data prepare --dataset cifar10 --out cifar10.h5`` converts the original files;
``python -m hpcnn.train --dataset h5:cifar10.h5`` trains from it. Layout::

    /train/images  uint8 (N, C, H, W), chunks of a few samples (~32 KiB), Fletcher-32 checksums
    /train/labels  uint8 (N,)
    /test/images, /test/labels   the same for the test split
    /mean          float32 (C, H, W), the train split's per-pixel mean after /255 (subtracted
                   when attrs subtract_mean is true: cifar10, as the in-memory loader does)
    attrs          format = "hpcnn-store", version, dataset, classes (JSON), sources (JSON: path,
                   bytes and MD5 of every original file), content_md5 (JSON: MD5 of each
                   dataset's bytes at prepare time), prepared (time)

Loading opens the file and checks its structure and labels (a few hundred KiB); images stay on
disk. :class:`StoreImages` reads rows on demand and normalises them exactly as
:func:`hpcnn.data.load_dataset` does (``uint8 / 255`` in float32, minus the mean image when the
dataset subtracts it), so training from the store gives the same numbers as from the original
files. Each chunk carries a Fletcher-32 checksum that HDF5 verifies on every read, so a corrupted
chunk fails with an error instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from hpcnn.data import idx, registry
from hpcnn.errors import DataError, UsageError

FORMAT = "hpcnn-store"
VERSION = 1
CHUNK_BYTES = 32 * 1024  # per chunk: small, so a random sample costs one small read
PREFIX = "h5:"
SPLITS = ("train", "test")


class StoreReadError(RuntimeError):
    """A read from an opened store failed (a chunk fails its checksum, the file went away).

    Not a :class:`hpcnn.errors.DataError` on purpose: it happens on one rank in the middle of
    training, where ``python -m hpcnn.train`` must end the whole job (MPI Abort, naming the rank
    and the file) rather than exit that rank alone and leave the others in a collective.
    """


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5_array(a) -> str:
    """MD5 of an array's bytes (an h5py dataset is read in blocks of rows)."""
    h = hashlib.md5(usedforsecurity=False)
    step = max(1, (8 << 20) // max(1, int(np.prod(a.shape[1:], dtype=np.int64))))
    for lo in range(0, len(a), step):
        h.update(np.ascontiguousarray(a[lo:lo + step]).tobytes())
    return h.hexdigest()


# --- prepare --------------------------------------------------------------------------------


def read_originals(dataset: str, data_dir=None, verify_md5: bool = True):
    """The original files' uint8 arrays, class names, whether the mean is subtracted, and paths.

    Returns ``({split: (images uint8 (N, C, H, W), labels int64)}, classes, subtract_mean,
    files)``, with the same checks as :func:`hpcnn.data.load_dataset`.
    """
    dataset = registry.canonical_name(dataset)
    if dataset not in registry.FILE_DATASETS:
        raise UsageError(f"{dataset} has no original files to convert; choose from "
                         f"{', '.join(registry.FILE_DATASETS)}")
    directory, _ = registry._require_dir(dataset, data_dir)
    arrays, files = {}, []
    if dataset == "cifar10":
        arrays, classes, files = registry.read_cifar_files(directory)
        return arrays, classes, True, files
    found = registry._idx_files(dataset, directory)
    table = registry.OFFICIAL_MD5[dataset]
    for split, (img, lab) in registry.IDX_FILES.items():
        x, y = idx.read_idx_pair(found[img], found[lab],
                                 md5_images=table[img] if verify_md5 else None,
                                 md5_labels=table[lab] if verify_md5 else None,
                                 shape=registry.IDX_IMAGE_SHAPE)
        arrays[split] = (x[:, None], y)
        files += [found[img], found[lab]]
    return arrays, list(registry.CLASS_NAMES[dataset]), False, files


def mean_image(x_train_u8: np.ndarray) -> np.ndarray:
    """The per-pixel mean of ``uint8 / 255``, computed as :func:`registry.subtract_mean` does."""
    return registry.scale_images(x_train_u8).mean(axis=0, dtype=np.float64).astype(np.float32)


def prepare_store(dataset: str, out, data_dir=None, verify_md5: bool = True, log=print) -> Path:
    """Convert ``dataset``'s original files to the HDF5 store ``out`` (written atomically)."""
    import h5py

    out = Path(out)
    arrays, classes, subtract, files = read_originals(dataset, data_dir, verify_md5)
    name = registry.canonical_name(dataset)
    sample = arrays["train"][0].shape[1:]
    rows = max(1, CHUNK_BYTES // int(np.prod(sample)))
    sources = [{"path": str(Path(p).resolve()), "bytes": Path(p).stat().st_size,
                "md5": _md5_file(Path(p))} for p in files]
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        content = {}
        with h5py.File(tmp, "w") as f:
            for split in SPLITS:
                x, y = arrays[split]
                f.create_dataset(f"{split}/images", data=x, chunks=(min(rows, len(x)), *sample),
                                 fletcher32=True)
                f.create_dataset(f"{split}/labels", data=y.astype(np.uint8))
                content[f"{split}/images"] = _md5_array(x)
                content[f"{split}/labels"] = _md5_array(y.astype(np.uint8))
            f.create_dataset("mean", data=mean_image(arrays["train"][0]))
            f.attrs.update(format=FORMAT, version=VERSION, dataset=name,
                           classes=json.dumps(classes), subtract_mean=subtract,
                           sources=json.dumps(sources), content_md5=json.dumps(content),
                           prepared=time.strftime("%Y-%m-%d %H:%M:%S"))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    n = {s: len(arrays[s][1]) for s in SPLITS}
    log(f"{out}: {name}, {n['train']} train / {n['test']} test images "
        f"{'x'.join(map(str, sample))} uint8, chunks of {rows} samples, from {len(files)} files")
    return out


# --- reading --------------------------------------------------------------------------------


class StoreImages:
    """Lazy normalised view of ``/<split>/images``: ``x[i:j]`` or ``x[sorted int array]`` read
    those rows from the file and return float32 (k, C, H, W), as the in-memory loader would."""

    def __init__(self, path, dset, mean):
        self.path = path
        self._d = dset
        self._mean = mean
        self.shape = tuple(dset.shape)
        self.dtype = np.dtype(np.float32)
        self._rows = dset.chunks[0] if dset.chunks else 1

    def __len__(self):
        return self.shape[0]

    def _read(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self._d[key]
        rows = np.asarray(key, dtype=np.int64)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        # One read per chunk touched: a range covering that chunk's wanted rows.
        chunk = rows // self._rows
        cut = np.flatnonzero(np.diff(chunk)) + 1
        for lo, hi in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(rows)]])):
            a, b = rows[lo], rows[hi - 1]
            out[lo:hi] = self._d[a] if hi - lo == 1 else self._d[a:b + 1][rows[lo:hi] - a]
        return out

    def __getitem__(self, key) -> np.ndarray:
        try:
            raw = self._read(key)
        except (OSError, ValueError) as e:
            raise StoreReadError(f"{self.path}: cannot read {self._d.name} (corrupt store? "
                            f"{str(e).splitlines()[0]})") from None
        x = registry.scale_images(raw)
        if self._mean is not None:
            x -= self._mean
        return x


class StoreDataset:
    """The :class:`hpcnn.data.Dataset` interface over an HDF5 store (images read on demand)."""

    def __init__(self, path, f, x_train, y_train, x_test, y_test, classes, source, mean, name):
        self.path, self.file = path, f
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.classes, self.source, self.mean, self.name = classes, source, mean, name

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self):
        return len(self.classes)

    def close(self):
        self.file.close()


def open_store(path) -> StoreDataset:
    """Open and check a store; :class:`DataError` naming the file when it is not a valid one."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such HDF5 store (make one with `python -m hpcnn.data "
                        f"prepare --dataset DS --out {path}`)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: "
                        f"{str(e).splitlines()[0]})") from None
    try:
        if f.attrs.get("format") != FORMAT:
            raise DataError(f"{path}: not an hpcnn dataset store (no format={FORMAT} attribute)")
        classes = json.loads(f.attrs["classes"])
        name = str(f.attrs["dataset"])
        mean = f["mean"][...] if bool(f.attrs["subtract_mean"]) else None
        parts = {}
        for split in SPLITS:
            d, labels = f[f"{split}/images"], f[f"{split}/labels"][...]
            if d.dtype != np.uint8 or d.ndim != 4 or labels.shape != (d.shape[0],):
                raise DataError(f"{path}: /{split} has images {d.dtype} {d.shape} and labels "
                                f"{labels.shape}, expected uint8 (N, C, H, W) and (N,)")
            bad = np.flatnonzero(labels >= len(classes))
            if bad.size:
                raise DataError(f"{path}: /{split}/labels: label {labels[bad[0]]} at index "
                                f"{bad[0]} is out of range 0-{len(classes) - 1}")
            parts[split] = (StoreImages(path, d, mean), labels.astype(np.int64))
        if parts["train"][0].shape[1:] != parts["test"][0].shape[1:]:
            raise DataError(f"{path}: train and test images differ in shape")
    except DataError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        f.close()
        raise DataError(f"{path}: corrupt or incomplete store ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    (xt, yt), (xs, ys) = parts["train"], parts["test"]
    source = (f"{name} from HDF5 store {path} (prepared {f.attrs.get('prepared', '?')}; "
              f"images read on demand, chunk checksums verified on read)")
    return StoreDataset(path, f, xt, yt, xs, ys, classes, source, mean, name)


# --- describe -------------------------------------------------------------------------------


def describe_store(path, print_classes_and_pixels) -> int:
    """Print what ``describe h5:FILE`` shows; returns 1 when a stored checksum fails, else 0."""
    t0 = time.perf_counter()
    ds = open_store(path)
    f = ds.file
    c, h, w = ds.input_shape
    print(ds.source)
    print(f"opened in {time.perf_counter() - t0:.2f} s; images {c}x{h}x{w} (C x H x W) uint8 "
          f"on disk, float32 when read; {ds.num_classes} classes; chunks of "
          f"{f['train/images'].chunks[0]} samples")
    print_classes_and_pixels(ds)
    ok = True
    print()
    print("stored data (MD5 recorded at prepare time):")
    for key, want in json.loads(f.attrs["content_md5"]).items():
        try:
            got = _md5_array(f[key])
        except (OSError, KeyError) as e:
            got = f"unreadable ({str(e).splitlines()[0]})"
        good = got == want
        ok &= good
        print(f"  {'ok ' if good else 'BAD'} /{key}: MD5 {got}"
              + ("" if good else f", expected {want}"))
    print("original files (MD5 recorded at prepare time):")
    for src in json.loads(f.attrs["sources"]):
        p = Path(src["path"])
        if not p.is_file():
            print(f"  --  {p}: not present here (recorded MD5 {src['md5']})")
            continue
        got = _md5_file(p)
        state = "matches" if got == src["md5"] else f"differs (now {got})"
        print(f"  {'ok ' if got == src['md5'] else 'BAD'} {p}: MD5 {src['md5']} {state}")
    ds.close()
    return 0 if ok else 1
