"""Flat buffers for a group of parameters that reduce over the same communicator.

A :class:`FlatGroup` moves its parameters' data and gradients into two contiguous float32 arrays
(the parameters keep views), so the optimizer makes one pass over memory and a reduction is a few
large in-place collectives on contiguous memory, cut into size-capped buckets.
"""

import numpy as np

DEFAULT_BUCKET_MB = 25.0


def unique_params(params):
    """``params`` without repeats (by identity), first occurrence kept: a parameter used twice
    is reduced and updated once."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class FlatGroup:
    """Parameters re-homed as views of one flat data buffer and one flat gradient buffer.

    Attributes
    ----------
    params : the parameters, in order, each once
    data, grad : float32 (P,) buffers; ``p.data`` and ``p.grad`` are views into them
    offsets : ``(offset, size)`` of each parameter in the buffers
    """

    def __init__(self, params):
        self.params = unique_params(params)
        total = sum(p.data.size for p in self.params)
        self.data = np.zeros(total, dtype=np.float32)
        self.grad = np.zeros(total, dtype=np.float32)
        self.offsets = []
        off = 0
        for p in self.params:
            n = p.data.size
            self.data[off:off + n] = p.data.ravel()
            self.grad[off:off + n] = p.grad.ravel()
            shape = p.data.shape
            p.data = self.data[off:off + n].reshape(shape)
            p.grad = self.grad[off:off + n].reshape(shape)
            self.offsets.append((off, n))
            off += n

    @property
    def size(self):
        return int(self.data.size)

    def zero_grad(self):
        self.grad.fill(0.0)

    def nbytes(self):
        return int(self.data.nbytes)


def make_buckets(param_layers, param_sizes, cap_elems):
    """Group parameters into buckets in reverse order, each at most ``cap_elems`` elements.

    Parameters
    ----------
    param_layers : sequence of int
        For each parameter, in flat-buffer order, the index of the layer that owns it
        (non-decreasing: the flat buffer is laid out in layer order).
    param_sizes : sequence of int
        For each parameter, its number of elements.
    cap_elems : int
        Bucket size cap in elements. A parameter larger than the cap gets a bucket of its own.

    Returns
    -------
    list of ``(lo, hi, ready_layer)``, in the order the buckets are reduced: bucket ``k`` is the
    flat slice ``[lo, hi)``, and it is ready once backward has finished layer ``ready_layer`` (the
    lowest layer index among its parameters, since backward runs from the last layer down).
    Buckets start and end at parameter boundaries, are disjoint and cover the buffer.
    """
    if len(param_layers) != len(param_sizes):
        raise ValueError(f"{len(param_layers)} layer indices for {len(param_sizes)} parameters")
    if cap_elems < 1:
        raise ValueError(f"bucket cap must be at least 1 element, got {cap_elems}")
    offsets = np.concatenate([[0], np.cumsum(param_sizes, dtype=np.int64)]).astype(int)
    buckets = []
    hi, n, ready = None, 0, None
    for i in range(len(param_sizes) - 1, -1, -1):
        size = int(param_sizes[i])
        if hi is not None and n + size > cap_elems:  # close the current bucket
            buckets.append((int(offsets[i + 1]), hi, ready))
            hi = None
        if hi is None:
            hi, n = int(offsets[i + 1]), 0
        n += size
        ready = int(param_layers[i])
    if hi is not None:
        buckets.append((0, hi, ready))
    return buckets


def layer_buckets(layers, group, bucket_mb):
    """:func:`make_buckets` for ``group``'s parameters owned by ``layers`` (in layer order), the
    cap given in MiB. Every parameter of the group must belong to one of the layers."""
    where = {}
    for li, layer in enumerate(layers):
        for p in layer.params():
            where.setdefault(id(p), li)
    missing = [p.name for p in group.params if id(p) not in where]
    if missing:
        raise ValueError(f"parameters {missing} belong to none of the layers")
    cap = max(1, int(bucket_mb * 2**20) // np.dtype(np.float32).itemsize)
    return make_buckets([where[id(p)] for p in group.params],
                        [p.data.size for p in group.params], cap)
