"""Synchronous data parallelism: every rank holds the whole model and averages its gradients.

Two schemes, both driven by the training step through the same four calls::

    model.zero_grad(); loss = ...forward...
    dp.backward(dlogits)   # model.backward, starting gradient reductions as layers finish
    dp.sync_grads()        # wait for them; gradients are now the average over the ranks
    opt.step(lr)
    dp.after_step()        # parameter averaging every K steps (a no-op for DataParallel)

:class:`DataParallel` averages gradients every step (PyTorch DDP, Horovod). ``model.flat_grads``
is one contiguous float32 buffer whose slices are the layers' gradients; it is cut into a few
size-capped *buckets* in reverse layer order (the order backward produces them). Each bucket is
reduced with a non-blocking in-place ``Iallreduce`` as soon as the last of its layers finishes
backward, so communication runs while earlier layers still compute.

:class:`ParamAveraging` lets every rank step on its own slice and averages the parameters (and,
if asked, the momentum buffers) every K steps (DL4J's parameter averaging). With K = 1 and plain
SGD it equals gradient averaging.
"""

import time

import numpy as np

from hpcnn import profile
from hpcnn.errors import HpcnnError

DEFAULT_BUCKET_MB = 25.0


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


def model_buckets(model, bucket_mb):
    """:func:`make_buckets` for a :class:`hpcnn.nn.Sequential`, with the cap given in MiB."""
    layers, sizes = [], []
    for li, layer in enumerate(model.layers):
        for p in layer.params():
            layers.append(li)
            sizes.append(p.data.size)
    cap = max(1, int(bucket_mb * 2**20) // np.dtype(np.float32).itemsize)
    return make_buckets(layers, sizes, cap)


def check_same_model(comm, model):
    """Raise :class:`HpcnnError` on every rank unless all ranks' parameters match rank 0's.

    Names and shapes are compared (small metadata: lowercase, pickled collectives), and every rank
    learns the verdict, so all fail together instead of some hanging in the next collective.
    """
    mine = [(name, tuple(p.data.shape)) for name, p in model.named_params()]
    ref = comm.bcast(mine, root=0)
    ok = comm.allreduce(int(ref == mine))
    if ok != comm.Get_size():
        raise HpcnnError(f"the model differs between ranks ({ok} of {comm.Get_size()} match "
                         f"rank 0: {model.num_params()} parameters in {len(mine)} tensors on "
                         f"rank {comm.Get_rank()}, {sum(np.prod(s) for _, s in ref)} in "
                         f"{len(ref)} on rank 0)")


class DataParallel:
    """Keep a :class:`hpcnn.nn.Sequential` identical on every rank of ``comm`` by averaging grads.

    At construction the parameters are checked to match on every rank (count and shapes), then
    broadcast from rank 0.

    Parameters
    ----------
    comm : mpi4py communicator or None
        The data axis (``None`` or size 1: everything is a no-op but the backward pass).
    model : hpcnn.nn.Sequential
    bucket_mb : float
        Bucket size cap in MiB (PyTorch DDP's ``bucket_cap_mb``, default 25).
    overlap : bool
        Start each bucket's reduction during backward (default). ``False`` reduces all buckets
        after backward, for comparison.
    progress : bool
        Call ``MPI.Request.Testall`` on the pending reductions after every layer's backward. MPICH
        advances non-blocking collectives only inside MPI calls; without these polls a reduction
        started early mostly waits until ``sync_grads``.

    Attributes
    ----------
    buckets : list of ``(lo, hi, ready_layer)`` (see :func:`make_buckets`)
    last_wait_s : seconds the last :meth:`sync_grads` spent launching and waiting
    last_poll_s : seconds the last backward spent in progress polls
    """

    def __init__(self, comm, model, bucket_mb=DEFAULT_BUCKET_MB, overlap=True, progress=True):
        if not bucket_mb > 0:
            raise ValueError(f"bucket size must be positive, got {bucket_mb} MiB")
        self.comm = comm
        self.model = model
        self.size = comm.Get_size() if comm is not None else 1
        self.overlap = overlap
        self.progress = progress
        self.buckets = model_buckets(model, bucket_mb)
        grads = model.flat_grads
        self._views = [grads[lo:hi] for lo, hi, _ in self.buckets]  # contiguous: no copies
        self._launch_at = {}
        for k, (_, _, layer) in enumerate(self.buckets):
            self._launch_at.setdefault(layer, []).append(k)
        self._reqs = []
        self._launched = 0
        self._scale = np.float32(1.0 / self.size)
        self.last_wait_s = 0.0
        self.last_poll_s = 0.0
        if self.size > 1:
            check_same_model(comm, model)
            comm.Bcast(model.flat_params, root=0)

    # the step ---------------------------------------------------------------------------------
    def backward(self, dy):
        """``model.backward(dy)``, starting each bucket's reduction as soon as it is ready."""
        self._reqs = []
        self._launched = 0
        self.last_poll_s = 0.0
        if self.size == 1 or not self.overlap:
            return self.model.backward(dy)
        return self.model.backward(dy, on_layer_done=self._on_layer_done)

    def _on_layer_done(self, layer):
        # Buckets become ready in launch order (their ready layers decrease), so a bucket is
        # launched by index and every rank issues the same collectives in the same order.
        ks = self._launch_at.get(layer)
        if ks:
            for k in ks:
                self._launch(k)
        elif self.progress and self._reqs:
            from mpi4py import MPI

            t = time.perf_counter()
            MPI.Request.Testall(self._reqs)
            self.last_poll_s += time.perf_counter() - t

    def _launch(self, k):
        from mpi4py import MPI

        self._reqs.append(self.comm.Iallreduce(MPI.IN_PLACE, self._views[k], op=MPI.SUM))
        self._launched = k + 1

    def sync_grads(self):
        """Finish the reductions (starting any not yet started) and scale the sum by 1/N."""
        if self.size == 1:
            self.last_wait_s = 0.0
            return
        from mpi4py import MPI

        t = time.perf_counter()
        for k in range(self._launched, len(self.buckets)):  # --no-overlap, or a plain backward
            self._launch(k)
        with profile.region("allreduce_wait"):
            MPI.Request.Waitall(self._reqs)
        self._reqs = []
        self._launched = 0
        self.last_wait_s = time.perf_counter() - t
        self.model.flat_grads *= self._scale

    def after_step(self):
        """Nothing to do: the parameters stay identical because the gradients were."""

    def sync_params(self):
        """Nothing to do (see :class:`ParamAveraging`)."""
        return 0.0


class ParamAveraging:
    """Local SGD with parameter averaging every ``every`` steps (DL4J's parameter averaging).

    Each rank steps with the gradient of its own slice of the global batch; after every ``every``
    optimizer steps the parameters are averaged with one in-place ``Allreduce`` on a flat buffer
    (and, with ``average_optimizer_state``, the momentum buffers too: they are moved into one flat
    buffer of the same layout first, so that is one more ``Allreduce``).

    With K = 1 and plain SGD this is gradient averaging up to rounding: each rank's local step
    rounds at the scale of the weights, so the two drift apart by about an ulp of ``w`` per step
    (averaging the changes ``w_r - w0`` instead was tried and measured no closer).

    Parameters
    ----------
    comm : mpi4py communicator or None
    model : hpcnn.nn.Sequential
    opt : hpcnn.optim.SGD or None
        Needed only with ``average_optimizer_state``.
    every : int
        Average after every ``every`` steps (K).
    average_optimizer_state : bool
    """

    def __init__(self, comm, model, opt=None, every=1, average_optimizer_state=False):
        if every < 1:
            raise ValueError(f"averaging period must be >= 1 step, got {every}")
        if average_optimizer_state and opt is None:
            raise ValueError("averaging the optimizer state needs the optimizer")
        self.comm = comm
        self.model = model
        self.size = comm.Get_size() if comm is not None else 1
        self.every = int(every)
        self._since = 0  # local steps since the last average
        self._scale = np.float32(1.0 / self.size)
        self.last_wait_s = 0.0
        self.last_poll_s = 0.0
        self.flat_momentum = None
        if average_optimizer_state:
            self.flat_momentum = _flatten_momentum(opt, model)
        if self.size > 1:
            check_same_model(comm, model)
            comm.Bcast(model.flat_params, root=0)
            if self.flat_momentum is not None:
                comm.Bcast(self.flat_momentum, root=0)

    def backward(self, dy):
        self.last_poll_s = 0.0
        return self.model.backward(dy)

    def sync_grads(self):
        """Nothing to reduce: each rank keeps its local gradient."""
        self.last_wait_s = 0.0

    def after_step(self):
        """Count the step; average parameters when ``every`` steps have passed."""
        self._since += 1
        if self._since >= self.every:
            self.last_wait_s += self.sync_params()

    def sync_params(self):
        """Average now if any step was taken since the last average; returns the seconds spent."""
        if self._since == 0:
            return 0.0
        self._since = 0
        if self.size == 1:
            return 0.0
        from mpi4py import MPI

        t = time.perf_counter()
        with profile.region("allreduce_wait"):
            for buf in (self.model.flat_params, self.flat_momentum):
                if buf is not None:
                    self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                    buf *= self._scale
        return time.perf_counter() - t


def _flatten_momentum(opt, model):
    """Re-home ``opt.momentum_buffers`` as views of one flat float32 buffer (values kept)."""
    params = model.params()
    same = len(opt.params) == len(params) and all(
        a is b for a, b in zip(opt.params, params, strict=True))
    if not same:
        raise ValueError("the optimizer's parameters are not the model's, in the model's order")
    flat = np.zeros(model.num_params(), dtype=np.float32)
    for i, ((off, n), v) in enumerate(zip(model.offsets, opt.momentum_buffers, strict=True)):
        flat[off:off + n] = v.ravel()
        opt.momentum_buffers[i] = flat[off:off + n].reshape(v.shape)
    return flat
