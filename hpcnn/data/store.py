"""HDF5 dataset store: one file per dataset, read by each rank a batch at a time.

``python -m hpcnn.data prepare --dataset cifar10 --out cifar10.h5`` converts the original files;
``python -m hpcnn.train --dataset h5:cifar10.h5`` trains from it. Layout::

    /train/images  uint8 (N, C, H, W), chunks of a few samples (~32 KiB), Fletcher-32 checksums
    /train/labels  uint8 (N,), Fletcher-32 checksums
    /test/images, /test/labels   the same for the test split
    /mean          float32 (C, H, W), the train split's per-pixel mean after /255 (subtracted
                   when attrs subtract_mean is true: cifar10, as the in-memory loader does),
                   Fletcher-32 checksums
    attrs          format = "hpcnn-store", version, dataset, classes (JSON), sources (JSON: path,
                   bytes and MD5 of every original file), content_md5 (JSON: MD5 of each
                   dataset's bytes at prepare time), prepared (time)

Every byte that training reads is verified. Opening checks the structure before reading any
data: each dataset is where it should be (no soft or external links, no external or virtual
storage), has the right dtype and shape, carries Fletcher-32 checksums and has all its chunks
written (an unwritten chunk would read as zeros). Then it reads the labels and the mean image
(a few hundred KiB), checks them against the MD5s recorded at prepare time and checks the labels'
range. Images stay on disk. :class:`StoreImages` reads rows on demand and normalises them exactly as
:func:`hpcnn.data.load_dataset` does (``uint8 / 255`` in float32, minus the mean image when the
dataset subtracts it), so training from the store gives the same numbers as from the original
files. Each chunk carries a Fletcher-32 checksum that HDF5 verifies on every read, so a corrupted
chunk fails with an error (:class:`StoreReadError`) instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from hpcnn.atomic import atomic_path
from hpcnn.data import idx, registry
from hpcnn.errors import DataError, RankLocalError, UsageError, one_line

FORMAT = "hpcnn-store"
VERSION = 2  # 2: labels and mean image carry checksums too, and their MD5 is checked on open
CHUNK_BYTES = 32 * 1024  # per chunk: small, so a random sample costs one small read
MAX_CHUNK_BYTES = 64 << 20  # a chunk is read (and decompressed) whole: refuse bigger ones
MAX_CLASSES = 256  # labels are uint8
PREFIX = "h5:"
SPLITS = ("train", "test")


class StoreReadError(DataError, RankLocalError):
    """A read from an opened store failed (a chunk fails its checksum, the file went away).

    A :class:`hpcnn.errors.DataError` (one line, exit status 2) that happens on one rank in the
    middle of training (:class:`hpcnn.errors.RankLocalError`): ``python -m hpcnn.train`` ends the
    whole job with it rather than exit that rank alone and leave the others in a collective.
    """


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5_array(a) -> str:
    """MD5 of an array's bytes in C order (an h5py dataset is read in blocks of rows; the
    blocking does not change the digest)."""
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
        with atomic_path(out, tmp), h5py.File(tmp, "w") as f:
            for split in SPLITS:
                x, y = arrays[split]
                f.create_dataset(f"{split}/images", data=x, chunks=(min(rows, len(x)), *sample),
                                 fletcher32=True)
                f.create_dataset(f"{split}/labels", data=y.astype(np.uint8), fletcher32=True)
                content[f"{split}/images"] = _md5_array(x)
                content[f"{split}/labels"] = _md5_array(y.astype(np.uint8))
            mean = mean_image(arrays["train"][0])
            f.create_dataset("mean", data=mean, fletcher32=True)
            content["mean"] = _md5_array(mean)
            text = dict(format=FORMAT, dataset=name, classes=json.dumps(classes),
                        sources=json.dumps(sources), content_md5=json.dumps(content),
                        prepared=time.strftime("%Y-%m-%d %H:%M:%S"))
            # fixed-length strings: kept in the object header, read without following a
            # pointer into the heap (a corrupt variable-length string can hang HDF5)
            f.attrs.update({k: np.bytes_(v.encode()) for k, v in text.items()})
            f.attrs.update(version=VERSION, subtract_mean=subtract)
    except OSError as e:
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
        except Exception as e:  # h5py raises OSError, ValueError, RuntimeError, ...
            raise StoreReadError(f"{self.path}: cannot read {self._d.name} (corrupt store? "
                                 f"{one_line(e)})") from None
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


def _refuse_links(path, group) -> None:
    """DataError when ``group`` or a group below holds a soft or external link."""
    import h5py

    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
            kind = "an external" if isinstance(link, h5py.ExternalLink) else "a soft"
            raise DataError(f"{path}: {group.name.rstrip('/')}/{name} is {kind} link; a store "
                            f"holds its data itself (re-create it with `python -m hpcnn.data "
                            f"prepare`)")
        obj = group.get(name)
        if isinstance(obj, h5py.Group):
            _refuse_links(path, obj)


def _checked(path, f, key, dtype, ndim) -> "h5py.Dataset":  # noqa: F821
    """``f[key]`` after checking, without reading data, that it is a checksummed ``dtype``
    dataset of ``ndim`` dimensions stored in this file with every chunk written."""
    import h5py

    d = f.get(key)
    where = f"{path}: /{key}"
    if not isinstance(d, h5py.Dataset):
        raise DataError(f"{where} is missing or not a dataset")
    if d.external or d.is_virtual:
        raise DataError(f"{where} keeps its data outside the store (HDF5 external or virtual "
                        f"storage); refused")
    if d.dtype != np.dtype(dtype) or d.ndim != ndim or min(d.shape, default=1) < 1:
        raise DataError(f"{where} is {d.dtype} {d.shape}, expected {np.dtype(dtype).name} with "
                        f"{ndim} non-empty dimension{'s' * (ndim > 1)}")
    if not d.fletcher32 or d.chunks is None:
        raise DataError(f"{where} has no Fletcher-32 checksums, so its reads cannot be "
                        f"verified (re-create the store with `python -m hpcnn.data prepare`)")
    chunk_bytes = int(np.prod(d.chunks, dtype=np.int64)) * d.dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise DataError(f"{where} has chunks of {chunk_bytes} bytes, more than the "
                        f"{MAX_CHUNK_BYTES} allowed")
    want = int(np.prod([-(-n // c) for n, c in zip(d.shape, d.chunks)], dtype=np.int64))
    if d.id.get_num_chunks() != want:
        raise DataError(f"{where}: {d.id.get_num_chunks()} of its {want} chunks are written; "
                        f"the rest would read as zeros (truncated store?)")
    return d


def _attr(path, f, name, kinds="S"):
    """Attribute ``name`` after :func:`hpcnn.h5check.attr`'s type check, the store named."""
    from hpcnn import h5check

    try:
        return h5check.attr(f, name, kinds)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _json_attr(path, f, name, kind):
    try:
        value = json.loads(_attr(path, f, name))
    except (TypeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: attribute {name} is not JSON ({one_line(e)})") from None
    if not isinstance(value, kind):
        raise DataError(f"{path}: attribute {name} is not a JSON {kind.__name__}")
    return value


def _read_verified(path, d, md5) -> np.ndarray:
    """All of a small dataset, checked against the MD5 recorded at prepare time."""
    a = d[...]
    if _md5_array(a) != md5.get(d.name.lstrip("/")):
        raise DataError(f"{path}: {d.name} does not match the MD5 recorded at prepare time "
                        f"(edited or corrupt store)")
    return a


def _open_checked(path, f):
    """The parts of an opened store, every check of :func:`open_store` done."""
    try:
        fmt = _attr(path, f, "format")
    except DataError:
        fmt = None
    if fmt != FORMAT:
        raise DataError(f"{path}: not an hpcnn dataset store (no format={FORMAT} attribute of "
                        f"a store of version {VERSION}; re-create it with `python -m "
                        f"hpcnn.data prepare`)")
    version = _attr(path, f, "version", "iu")
    if version != VERSION:
        raise DataError(f"{path}: store version {version}, this hpcnn reads version {VERSION} "
                        f"(re-create it with `python -m hpcnn.data prepare`)")
    _refuse_links(path, f)
    classes = _json_attr(path, f, "classes", list)
    if not 2 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{path}: attribute classes must list 2 to {MAX_CLASSES} names")
    md5 = _json_attr(path, f, "content_md5", dict)
    subtract = bool(_attr(path, f, "subtract_mean", "b"))
    name = one_line(_attr(path, f, "dataset"))
    parts = {split: (_checked(path, f, f"{split}/images", np.uint8, 4),
                     _checked(path, f, f"{split}/labels", np.uint8, 1)) for split in SPLITS}
    sample = parts["train"][0].shape[1:]
    m = _checked(path, f, "mean", np.float32, 3)
    for split, (d, labels) in parts.items():
        if d.shape[1:] != sample or labels.shape != d.shape[:1]:
            raise DataError(f"{path}: /{split} has images {d.shape} and labels {labels.shape}, "
                            f"expected (N, {', '.join(map(str, sample))}) and (N,)")
        if d.chunks[1:] != sample:
            raise DataError(f"{path}: /{split}/images chunks {d.chunks} do not hold whole "
                            f"images")
    if m.shape != sample:
        raise DataError(f"{path}: /mean is {m.shape}, the images are {sample}")
    mean = _read_verified(path, m, md5)
    if not np.isfinite(mean).all():
        raise DataError(f"{path}: /mean holds values that are not finite")
    out = {}
    for split, (d, labels) in parts.items():
        y = _read_verified(path, labels, md5)
        bad = np.flatnonzero(y >= len(classes))
        if bad.size:
            raise DataError(f"{path}: /{split}/labels: label {y[bad[0]]} at index {bad[0]} is "
                            f"out of range 0-{len(classes) - 1}")
        out[split] = (StoreImages(path, d, mean if subtract else None), y.astype(np.int64))
    prepared = one_line(_attr(path, f, "prepared"))
    return out, classes, name, prepared, mean if subtract else None


def open_store(path) -> StoreDataset:
    """Open and check a store; :class:`DataError` naming the file when it is not a valid one.

    Nothing of the file is trusted before it is checked: see the module docstring.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such HDF5 store (make one with `python -m hpcnn.data "
                        f"prepare --dataset DS --out {path}`)")
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # OSError mostly; h5py may raise others on a crafted file
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt: "
                        f"{one_line(e)})") from None
    try:
        parts, classes, name, prepared, mean = _open_checked(path, f)
    except DataError:
        f.close()
        raise
    except Exception as e:  # h5py: OSError, KeyError, ValueError, TypeError, RuntimeError
        f.close()
        raise DataError(f"{path}: corrupt or incomplete store ({type(e).__name__}: "
                        f"{one_line(e)})") from None
    (xt, yt), (xs, ys) = parts["train"], parts["test"]
    source = (f"{name} from HDF5 store {path} (prepared {prepared}; labels and mean "
              f"MD5-verified, images read on demand, chunk checksums verified on read)")
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
    for key, want in _json_attr(path, f, "content_md5", dict).items():
        try:
            got = _md5_array(f[key])
        except Exception as e:  # h5py: OSError, KeyError, TypeError, ...
            got = f"unreadable ({one_line(e)})"
        good = got == want
        ok &= good
        print(f"  {'ok ' if good else 'BAD'} /{key}: MD5 {got}"
              + ("" if good else f", expected {want}"))
    print("original files (MD5 recorded at prepare time):")
    for src in _json_attr(path, f, "sources", list):
        if not (isinstance(src, dict) and isinstance(src.get("path"), str)
                and isinstance(src.get("md5"), str)):
            print(f"  BAD source entry {one_line(json.dumps(src))[:200]}")
            ok = False
            continue
        p = Path(src["path"])
        if not p.is_file():
            print(f"  --  {p}: not present here (recorded MD5 {src['md5']})")
            continue
        got = _md5_file(p)
        state = "matches" if got == src["md5"] else f"differs (now {got})"
        print(f"  {'ok ' if got == src['md5'] else 'BAD'} {p}: MD5 {src['md5']} {state}")
    ds.close()
    return 0 if ok else 1
