"""``python -m hpcnn.data``: download datasets and describe them.

    python -m hpcnn.data download mnist [--dir DIR] [--mirror URL]
    python -m hpcnn.data describe mnist [--data-dir DIR]
    python -m hpcnn.data prepare --dataset cifar10 --out cifar10.h5 [--data-dir DIR]
    python -m hpcnn.data describe h5:cifar10.h5

Errors print one line, ``error: ...``, on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import numpy as np

from hpcnn.argtypes import positive_float
from hpcnn.data import download as dl
from hpcnn.data import registry, store
from hpcnn.errors import HpcnnError, UsageError, one_line


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 from main) instead of printing usage."""

    def error(self, message):
        raise UsageError(message)


def channel_stats(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Per-channel (min, max, mean, std) of float32 (N, C, H, W), shape (C, 4), float64 sums.

    Works through ``chunk`` samples at a time so no full-size float64 copy is made.
    """
    c = x.shape[1]
    lo = np.full(c, np.inf)
    hi = np.full(c, -np.inf)
    s = np.zeros(c)
    ss = np.zeros(c)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float64)
        lo = np.minimum(lo, part.min(axis=(0, 2, 3)))
        hi = np.maximum(hi, part.max(axis=(0, 2, 3)))
        s += part.sum(axis=(0, 2, 3))
        ss += (part * part).sum(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    return np.stack([lo, hi, mean, std], axis=1)


def print_classes_and_pixels(ds) -> None:
    """The class counts per split and the per-channel pixel statistics of a loaded dataset."""
    counts = {
        split: np.bincount(y, minlength=ds.num_classes)
        for split, y in (("train", ds.y_train), ("test", ds.y_test))
    }
    labels = [f"{i} {name}" if name != str(i) else name for i, name in enumerate(ds.classes)]
    width = max(len("class"), *(len(s) for s in labels))
    print()
    print(f"{'class':<{width}}  {'train':>7}  {'test':>7}")
    for i, label in enumerate(labels):
        print(f"{label:<{width}}  {counts['train'][i]:>7}  {counts['test'][i]:>7}")
    print(f"{'total':<{width}}  {len(ds.y_train):>7}  {len(ds.y_test):>7}")

    how = "/255 minus train per-pixel mean" if ds.mean is not None else "/255"
    print()
    print(f"pixel values after normalisation ({how}):")
    print(f"{'split':<6} {'channel':>7} {'min':>8} {'max':>8} {'mean':>8} {'std':>8}")
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        for ch, (lo, hi, mean, std) in enumerate(channel_stats(x)):
            print(f"{split:<6} {ch:>7} {lo:>8.4f} {hi:>8.4f} {mean:>8.4f} {std:>8.4f}")


def describe(args: argparse.Namespace) -> int:
    if args.dataset.startswith(store.PREFIX):
        return store.describe_store(args.dataset[len(store.PREFIX):], print_classes_and_pixels)
    t0 = time.perf_counter()
    kwargs = {}
    if args.shape:
        if registry.canonical_name(args.dataset) != "synthetic":
            raise UsageError("--shape applies to the synthetic dataset only")
        kwargs["synthetic_shape"] = args.shape
    # MD5s are reported per file below rather than failing the load.
    ds = registry.load_dataset(args.dataset, args.data_dir, verify_md5=False, **kwargs)
    elapsed = time.perf_counter() - t0
    c, h, w = ds.input_shape
    print(ds.source)
    print(f"loaded in {elapsed:.2f} s; images {c}x{h}x{w} (C x H x W) float32, "
          f"{ds.num_classes} classes")

    print_classes_and_pixels(ds)

    if ds.name not in registry.FILE_DATASETS:
        return 0
    print()
    print("files:")
    checks = registry.check_files(ds.name, args.data_dir)
    for chk in checks:
        print(f"  {'ok ' if chk.ok else 'BAD'} {chk.path}: {chk.detail}")
    return 0 if all(chk.ok for chk in checks) else 1


def prepare(args: argparse.Namespace) -> int:
    store.prepare_store(args.dataset, args.out, args.data_dir, verify_md5=not args.no_md5)
    return 0


def download(args: argparse.Namespace) -> int:
    dest = dl.download_dataset(
        args.dataset, args.dir, mirror=args.mirror, timeout=args.timeout,
        max_time=args.max_time, log=print
    )
    print(f"{registry.canonical_name(args.dataset)}: files ready in {dest}")
    return 0


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m hpcnn.data",
        description="Download and inspect hpcnn's datasets: " + ", ".join(registry.DATASETS) + ".",
        epilog=(
            f"Files are looked for in --data-dir, else ${registry.ENV_VAR}/<dataset>, else "
            f"{registry.cache_dir()}/<dataset>."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("download", help="fetch the official files and verify their MD5")
    d.add_argument("dataset", help="mnist, fashion-mnist or cifar10")
    d.add_argument("--dir", help=f"destination (default: ${registry.ENV_VAR}/<dataset> or cache)")
    d.add_argument("--mirror", help="base URL (http, https or file://) or local folder")
    d.add_argument("--timeout", type=positive_float, default=60.0,
                   help="seconds for each network operation: connect, each read (default 60)")
    d.add_argument("--max-time", type=positive_float, default=dl.MAX_TIME,
                   help=f"seconds for each file's whole transfer (default {dl.MAX_TIME:g})")
    d.set_defaults(func=download)

    s = sub.add_parser(
        "describe",
        help="counts, shape, normalised pixel statistics and file checks",
        description="Load a dataset; print sample counts per split and class, the image shape, "
        "per-channel min/max/mean/std after normalisation, and each file's check (MD5). "
        "Exits with 1 when a file fails its check.",
    )
    s.add_argument("dataset", help=", ".join(registry.DATASETS) + " or h5:FILE (a store)")
    s.add_argument("--data-dir", help="folder holding the dataset's files")
    s.add_argument("--shape", type=_shape, help="synthetic only: image shape C,H,W")
    s.set_defaults(func=describe)

    r = sub.add_parser(
        "prepare",
        help="convert a dataset's original files to one HDF5 store (train with --dataset h5:FILE)",
        description="Read and check the original files, then write one HDF5 file: uint8 images "
        "chunked by blocks of samples (with checksums), labels, class names, the mean image and "
        "the MD5 of every source file. Written to a temporary file, then renamed.",
    )
    r.add_argument("--dataset", required=True, help=", ".join(registry.FILE_DATASETS))
    r.add_argument("--out", required=True, help="the .h5 file to write")
    r.add_argument("--data-dir", help="folder holding the dataset's files")
    r.add_argument("--no-md5", action="store_true", help="skip the official MD5 check (IDX)")
    r.set_defaults(func=prepare)
    return p


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds, so temporary files are removed on the way


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HpcnnError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
