"""This rank's batches of an epoch, gathered in memory or read ahead from a store by a thread.

Every epoch has one global order (a seeded permutation, identical on every rank). Global batch
``i`` is ``order[i * batch:(i + 1) * batch]``; rank ``r`` takes the slice
``[r * per_rank, (r + 1) * per_rank)`` of it, sorted so reads go in increasing index order (the set
of images is what matters, and an HDF5 store needs increasing indices).
"""

from __future__ import annotations

import queue
import threading

import numpy as np


def rank_indices(order, i, batch, per_rank, rank):
    """Sorted indices of rank ``rank``'s share of global batch ``i`` of ``order``."""
    lo = i * batch + rank * per_rank
    return np.sort(order[lo:lo + per_rank])


class EpochBatches:
    """Iterate this rank's ``(x, y)`` for global batches ``start .. stop - 1`` of an epoch.

    With ``prefetch > 0`` a background thread prepares up to ``prefetch`` batches ahead (used for
    HDF5 stores, whose reads then overlap compute); with 0 each batch is gathered on demand, on
    the caller's thread (in-memory arrays: a gather is cheaper than a thread hand-off).
    Call :meth:`close` when leaving the epoch early.
    """

    def __init__(self, x, y, order, batch, per_rank, rank, start, stop, prefetch=0):
        self._make = lambda i: (lambda idx: (x[idx], y[idx]))(
            rank_indices(order, i, batch, per_rank, rank))
        self._next = start
        self._stop = stop
        self._thread = None
        if prefetch > 0 and stop > start:
            self._queue = queue.Queue(maxsize=prefetch)
            self._halt = threading.Event()
            self._thread = threading.Thread(target=self._produce, name="hpcnn-prefetch",
                                            daemon=True)
            self._thread.start()

    def _produce(self):
        for i in range(self._next, self._stop):
            if self._halt.is_set():
                return
            try:
                item = self._make(i)
            except BaseException as e:  # handed to the consumer, raised there
                item = e
            while not self._halt.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def __iter__(self):
        return self

    def __next__(self):
        if self._next >= self._stop:
            raise StopIteration
        self._next += 1
        if self._thread is None:
            return self._make(self._next - 1)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self):
        if self._thread is not None:
            self._halt.set()
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._thread.join()
            self._thread = None
