"""Seconds per operation kind, for the op tables of ``python -m hpcnn.bench ops``.

The algorithms take a ``timer`` and wrap each op in ``with timer("gemm"):``; the default
:data:`NO_TIMER` costs one call and records nothing.
"""

import time
from contextlib import contextmanager, nullcontext


class OpTimer:
    """Accumulates wall seconds per op kind (``seconds[kind]``), in first-seen order."""

    def __init__(self):
        self.seconds = {}

    @contextmanager
    def __call__(self, kind):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - t


def NO_TIMER(kind):  # noqa: N802 (a constant that is called)
    return nullcontext()
