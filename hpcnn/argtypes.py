"""argparse value types shared by the command-line tools: a bad value gives argparse's one-line
error naming the option.

Every number is checked for what it can mean: floats must be finite (``nan`` and ``inf`` are
refused), integers must lie in a range that the code behind them can take (a seed NumPy accepts,
a thread count the OS can start, an image shape whose arrays fit in memory).
"""

import argparse
import math
import os

MAX_SEED = 2**32 - 1  # NumPy's legacy seeds and most RNGs take 32-bit unsigned seeds
MAX_THREADS = min(1024, 4 * (os.cpu_count() or 1))  # 4 per core at most: more only thrash
MAX_IMAGE_ELEMENTS = 1 << 24  # C * H * W of one image: 64 MiB in float32
MAX_SIDE = 4096  # of one image dimension (C, H or W)


def _number(text, cast, what):
    try:
        return cast(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text):
    v = _number(text, int, "a positive integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def nonneg_int(text):
    v = _number(text, int, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _int_in(text, lo, hi, what):
    v = _number(text, int, what)
    if not lo <= v <= hi:
        raise argparse.ArgumentTypeError(f"must be {what}, got {v}")
    return v


def seed_int(text):
    """A random seed: an integer in 0 .. 2**32 - 1."""
    return _int_in(text, 0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def thread_count(text):
    """Threads per process: 1 .. 4 per core (at most 1024)."""
    return _int_in(text, 1, MAX_THREADS,
                   f"an integer from 1 to {MAX_THREADS} (4 per core of this machine)")


def width(text):
    """A layer width (e.g. --hidden): 1 .. 65536."""
    return _int_in(text, 1, 1 << 16, "an integer from 1 to 65536")


def image_shape(text):
    """``C,H,W`` (or ``CxHxW``) of an image: positive, each at most 4096, 2**24 elements."""
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}")
    if max(dims) > MAX_SIDE or math.prod(dims) > MAX_IMAGE_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"image shape {text} is too large: each of C, H, W at most {MAX_SIDE} and "
            f"C*H*W at most {MAX_IMAGE_ELEMENTS}")
    return dims


def finite_float(text):
    v = _number(text, float, "a number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive_float(text):
    v = _number(text, float, "a positive number")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def nonneg_float(text):
    v = _number(text, float, "a number >= 0")
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v
