"""Dataset names, where their files live, and loading with normalisation.

Where a dataset's files are looked for (:func:`resolve_data_dir`), first match wins:

1. ``data_dir``, when given: the folder that holds the dataset's files;
2. ``$HPCNN_DATA/<dataset>/`` when ``HPCNN_DATA`` is set;
3. the user cache, ``$XDG_CACHE_HOME/hpcnn/<dataset>/`` (default ``~/.cache/hpcnn/<dataset>/``),
   where ``python -m hpcnn.data download`` puts them.

For cifar10 the folder may also hold the files in a ``cifar-10-batches-bin/`` subfolder, as the
official archive unpacks. Nothing is cached on disk: every load reads and checks the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcnn.data import cifar, idx
from hpcnn.data.idx import Checksum
from hpcnn.data.synthetic import make_synthetic
from hpcnn.errors import DataError, UsageError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "synthetic")
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")
ENV_VAR = "HPCNN_DATA"
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}

# IDX file names (without .gz) per split: (images, labels). Fashion-MNIST uses MNIST's names.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGE_SHAPE = (28, 28)

# Official MD5s: of the .gz as distributed, and of the decompressed IDX bytes
# (shared/data/README.md; the .gz sums are the ones the datasets' authors publish).
OFFICIAL_MD5: dict[str, dict[str, Checksum]] = {
    "mnist": {
        "train-images-idx3-ubyte": Checksum(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"
        ),
        "train-labels-idx1-ubyte": Checksum(
            "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"
        ),
        "t10k-images-idx3-ubyte": Checksum(
            "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"
        ),
        "t10k-labels-idx1-ubyte": Checksum(
            "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": Checksum(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"
        ),
        "train-labels-idx1-ubyte": Checksum(
            "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"
        ),
        "t10k-images-idx3-ubyte": Checksum(
            "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"
        ),
        "t10k-labels-idx1-ubyte": Checksum(
            "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"
        ),
    },
}

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "cifar10": list(cifar.CLASSES),
}

SYNTHETIC_TRAIN = 10_000
SYNTHETIC_TEST = 2_000


@dataclass
class Dataset:
    """Train and test splits, normalised, ready for training.

    Images are float32 (N, C, H, W) C-contiguous; labels int64 (N,) in 0..num_classes-1.
    ``source`` is one line saying where the data came from. ``mean`` is the per-pixel mean image
    (C, H, W) that was subtracted (cifar10), or None.
    """

    name: str
    x_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    x_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    classes: list[str]
    source: str
    mean: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
                raise ValueError(
                    f"x_{split} must be C-contiguous float32 (N, C, H, W), "
                    f"got {x.dtype} {x.shape}"
                )
            if y.shape != (len(x),) or y.dtype != np.int64:
                raise ValueError(
                    f"y_{split} must be int64 ({len(x)},), got {y.dtype} {y.shape}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def canonical_name(name: str) -> str:
    """The dataset's name as in DATASETS; accepts e.g. ``fashion_mnist`` and ``CIFAR-10``."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def cache_dir() -> Path:
    """The user cache folder for hpcnn: ``$XDG_CACHE_HOME/hpcnn`` (default ``~/.cache/hpcnn``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hpcnn"


def _base_dir(dataset: str, data_dir: str | Path | None) -> tuple[Path, str]:
    """The folder given by the resolve rules, before the cifar10 subfolder rule, and its origin."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given directory"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser() / dataset, f"from ${ENV_VAR}"
    return cache_dir() / dataset, f"user cache; ${ENV_VAR} is not set"


def _resolve(dataset: str, data_dir: str | Path | None) -> tuple[Path, str]:
    dataset = canonical_name(dataset)
    if dataset not in FILE_DATASETS:
        raise UsageError(f"{dataset} is generated, it has no data directory")
    path, origin = _base_dir(dataset, data_dir)
    if dataset == "cifar10":
        sub = path / cifar.ARCHIVE_DIR
        if not (path / cifar.TRAIN_FILES[0]).exists() and sub.is_dir():
            path = sub
    return path, origin


def resolve_data_dir(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The folder where ``dataset``'s files are expected (see the module docstring for the rules).

    The folder need not exist; :func:`find_dataset_files` says whether the files are there.
    """
    return _resolve(dataset, data_dir)[0]


def idx_path(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` if present, else the raw ``stem``, else None."""
    for p in (directory / f"{stem}.gz", directory / stem):
        if p.is_file():
            return p
    return None


def _missing(dataset: str, directory: Path) -> list[str]:
    """Required files that are absent or (cheaply checkable) of the wrong size."""
    if dataset == "cifar10":
        bad = []
        for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
            p = directory / name
            if not p.is_file():
                bad.append(name)
            elif p.stat().st_size != cifar.batch_bytes():
                bad.append(f"{name} (wrong size {p.stat().st_size})")
        return bad
    stems = [stem for pair in IDX_FILES.values() for stem in pair]
    return [f"{stem}[.gz]" for stem in stems if idx_path(directory, stem) is None]


def find_dataset_files(
    dataset: str, data_dir: str | Path | None = None
) -> tuple[Path | None, str]:
    """Whether ``dataset``'s files are all present: ``(directory or None, one-line reason)``.

    Checks presence (and, for cifar10, file sizes), not checksums: those are checked on load.
    """
    dataset = canonical_name(dataset)
    if dataset not in FILE_DATASETS:
        return None, f"{dataset} is generated, it has no files"
    directory, origin = _resolve(dataset, data_dir)
    if not directory.is_dir():
        return None, f"no {dataset} files: {directory} does not exist ({origin})"
    missing = _missing(dataset, directory)
    if missing:
        return None, (
            f"incomplete {dataset} files in {directory} ({origin}): missing {', '.join(missing)}"
        )
    return directory, f"found {dataset} files in {directory} ({origin})"


def _require_dir(dataset: str, data_dir: str | Path | None) -> tuple[Path, str]:
    directory, origin = _resolve(dataset, data_dir)
    if not directory.is_dir():
        raise DataError(
            f"{directory}: no such directory ({origin}); get the {dataset} files with "
            f"`python -m hpcnn.data download {dataset}` or pass the folder that holds them"
        )
    return directory, origin


def _idx_files(dataset: str, directory: Path) -> dict[str, Path]:
    """Map each IDX stem to its file (gz or raw); DataError naming the first one that is missing."""
    found = {}
    for pair in IDX_FILES.values():
        for stem in pair:
            p = idx_path(directory, stem)
            if p is None:
                hint = f"the {dataset} folder needs all of: " + ", ".join(
                    f"{s}.gz" for pr in IDX_FILES.values() for s in pr
                )
                if idx_path(directory / dataset, stem) is not None:
                    hint = f"did you mean {directory / dataset}?"
                raise DataError(
                    f"{directory / stem}.gz: file not found (nor uncompressed {stem}); {hint}"
                )
            found[stem] = p
    return found


def scale_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) or (N, H, W) -> float32 (N, C, H, W) in [0, 1] (divided by 255)."""
    if images.ndim == 3:
        images = images[:, None]
    out = np.empty(images.shape, dtype=np.float32)
    np.divide(images, 255, out=out, dtype=np.float32)
    return out


def subtract_mean(x_train: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """Subtract the per-pixel mean image of ``x_train`` from it and from ``others``, in place.

    Returns the mean image, float32 (C, H, W).
    """
    mean = x_train.mean(axis=0, dtype=np.float64).astype(np.float32)
    for x in (x_train, *others):
        x -= mean
    return mean


def _load_idx(dataset: str, directory: Path, verify_md5: bool) -> tuple[dict, list[Path]]:
    files = _idx_files(dataset, directory)
    table = OFFICIAL_MD5[dataset]
    arrays = {}
    for split, (img_stem, lab_stem) in IDX_FILES.items():
        x, y = idx.read_idx_pair(
            files[img_stem],
            files[lab_stem],
            md5_images=table[img_stem] if verify_md5 else None,
            md5_labels=table[lab_stem] if verify_md5 else None,
            shape=IDX_IMAGE_SHAPE,
        )
        arrays[split] = (scale_images(x), y)
    return arrays, list(files.values())


def read_cifar_files(directory: Path) -> tuple[dict, list[str], list[Path]]:
    """The CIFAR-10 batches of ``directory`` as read: ({split: (uint8 images, labels)}, class
    names, files read). Shared by the loader and the HDF5 store's converter."""
    used = []
    arrays = {}
    for split, names in (("train", cifar.TRAIN_FILES), ("test", cifar.TEST_FILES)):
        xs, ys = [], []
        for name in names:
            x, y = cifar.read_cifar_batch(directory / name)
            xs.append(x)
            ys.append(y)
            used.append(directory / name)
        arrays[split] = (np.concatenate(xs), np.concatenate(ys))
    classes = list(cifar.CLASSES)
    meta = directory / cifar.META_FILE
    if meta.is_file():
        classes = cifar.read_class_names(meta)
        used.append(meta)
    return arrays, classes, used


def _load_cifar(directory: Path) -> tuple[dict, list[Path], np.ndarray, list[str]]:
    raw, classes, used = read_cifar_files(directory)
    arrays = {split: (scale_images(x), y) for split, (x, y) in raw.items()}
    mean = subtract_mean(arrays["train"][0], arrays["test"][0])
    return arrays, used, mean, classes


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    synthetic_shape: tuple[int, int, int] = (1, 28, 28),
    synthetic_train: int = SYNTHETIC_TRAIN,
    synthetic_test: int = SYNTHETIC_TEST,
    synthetic_classes: int = 10,
    seed: int = 0,
    verify_md5: bool = True,
) -> Dataset:
    """Load and normalise a dataset by name (one of DATASETS).

    mnist, fashion-mnist: pixels / 255 in [0, 1], shape (N, 1, 28, 28); files are checked against
    the official MD5s unless ``verify_md5=False``. cifar10: pixels / 255, minus the per-pixel mean
    image of the train split (as Caffe's cifar10_quick expects), shape (N, 3, 32, 32); sizes and
    labels are checked (there are no official per-file MD5s). synthetic: see
    :func:`hpcnn.data.synthetic.make_synthetic`; ``seed`` only affects it. An HDF5 store
    (``h5:FILE``) is opened by :func:`hpcnn.data.load_dataset` (:mod:`hpcnn.data.loading`).
    """
    name = canonical_name(name)
    if name == "synthetic":
        x_train, y_train, x_test, y_test = make_synthetic(
            synthetic_train, synthetic_test, synthetic_shape, synthetic_classes, seed
        )
        c, h, w = x_train.shape[1:]
        return Dataset(
            name=name,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            classes=[f"class{i}" for i in range(synthetic_classes)],
            source=(
                f"synthetic: {synthetic_classes} classes, {c}x{h}x{w}, "
                f"{len(x_train)} train / {len(x_test)} test, seed {seed}"
            ),
        )
    directory, origin = _require_dir(name, data_dir)
    mean = None
    if name == "cifar10":
        arrays, used, mean, classes = _load_cifar(directory)
        check = "sizes and labels checked"
    else:
        arrays, used = _load_idx(name, directory, verify_md5)
        classes = list(CLASS_NAMES[name])
        check = "MD5 verified" if verify_md5 else "MD5 not checked on load"
    source = f"{name} from {directory} ({origin}): {', '.join(p.name for p in used)}; {check}"
    return Dataset(
        name=name,
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
        classes=classes,
        source=source,
        mean=mean,
    )


def _md5_of_file(path: Path) -> str:
    try:
        return idx.md5_hex(path.read_bytes())
    except OSError:
        return ""


@dataclass
class FileCheck:
    """One file's state for ``describe``: ``ok`` is False when it is missing or fails a check."""

    path: Path
    ok: bool
    detail: str


def check_files(dataset: str, data_dir: str | Path | None = None) -> list[FileCheck]:
    """Check every file of ``dataset``: MD5 for IDX files, size and labels for CIFAR-10 batches."""
    dataset = canonical_name(dataset)
    directory, _ = _require_dir(dataset, data_dir)
    checks = []
    if dataset == "cifar10":
        for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
            p = directory / name
            try:
                cifar.read_cifar_batch(p)
                checks.append(FileCheck(p, True, "size and labels ok (no official per-file MD5)"))
            except DataError as e:
                checks.append(FileCheck(p, False, str(e)))
        meta = directory / cifar.META_FILE
        checks.append(
            FileCheck(meta, True, "present" if meta.is_file() else "absent, built-in class names")
        )
        return checks
    for stem, checksum in OFFICIAL_MD5[dataset].items():
        p = idx_path(directory, stem)
        if p is None:
            checks.append(FileCheck(directory / f"{stem}.gz", False, "missing"))
            continue
        if p.suffix == ".gz" and _md5_of_file(p) == checksum.gz:
            checks.append(FileCheck(p, True, f"MD5 {checksum.gz} matches official .gz"))
            continue
        try:
            stored, payload = idx.read_payload(p)
            idx.check_md5(p, checksum, stored, payload)
        except DataError as e:
            checks.append(FileCheck(p, False, str(e)))
            continue
        checks.append(FileCheck(p, True, f"MD5 {checksum.raw} of the IDX data matches official"))
    return checks
