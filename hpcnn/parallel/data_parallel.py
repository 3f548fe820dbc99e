"""Synchronous data parallelism: every rank holds the whole model.

:class:`DataParallel` averages gradients every step (PyTorch DDP, Horovod). The model's gradients
live in one flat float32 buffer (:class:`hpcnn.parallel.flatbuf.FlatGroup`) cut into a few
size-capped *buckets* in reverse layer order (the order backward produces them). Each bucket is
reduced with a non-blocking in-place ``Iallreduce`` as soon as the last of its layers finishes
backward, so communication runs while earlier layers still compute (:class:`BucketReducer`).

:class:`ParamAveraging` lets every rank step on its own slice and averages the parameters (and,
if asked, the momentum buffers) every K steps (DL4J's parameter averaging). With K = 1 and plain
SGD it equals gradient averaging.
"""

import time

import numpy as np

from hpcnn import profile
from hpcnn.nn.loss import SOFTMAX_CE
from hpcnn.parallel.flatbuf import DEFAULT_BUCKET_MB, layer_buckets, make_buckets  # noqa: F401
from hpcnn.parallel.strategy import CommStats, Strategy, check_same_model, comm_size


def model_buckets(model, bucket_mb):
    """:func:`make_buckets` for a whole :class:`hpcnn.nn.Sequential`, the cap given in MiB."""
    return layer_buckets(model.layers, model.group, bucket_mb)


class BucketReducer:
    """Sum ``group``'s gradients over ``comm`` in buckets, each started as its layers finish.

    Parameters
    ----------
    comm : mpi4py communicator (size > 1)
    group : hpcnn.parallel.flatbuf.FlatGroup
    layers : the layers owning the group's parameters, in forward order
    bucket_mb : float, bucket size cap in MiB (PyTorch DDP's ``bucket_cap_mb``, default 25)
    overlap : start each bucket during backward (else all after it, for comparison)
    progress : call ``MPI.Request.Testall`` on pending reductions after every layer's backward.
        MPICH advances non-blocking collectives only inside MPI calls; without these polls a
        reduction started early mostly waits until :meth:`finish`.
    stats : CommStats; the time and bytes go under ``kind``
    """

    def __init__(self, comm, group, layers, bucket_mb, overlap, progress, stats,
                 kind="allreduce"):
        if not bucket_mb > 0:
            raise ValueError(f"bucket size must be positive, got {bucket_mb} MiB")
        self.comm, self.group, self.stats, self.kind = comm, group, stats, kind
        self.overlap, self.progress = overlap, progress
        self.buckets = layer_buckets(layers, group, bucket_mb)
        self._views = [group.grad[lo:hi] for lo, hi, _ in self.buckets]  # contiguous: no copies
        self._launch_at = {}
        for k, (_, _, layer) in enumerate(self.buckets):
            self._launch_at.setdefault(layer, []).append(k)
        self._reqs = []
        self._launched = 0
        self.launched_in_backward = 0

    def begin(self):
        self._reqs = []
        self._launched = 0
        self.launched_in_backward = 0

    def on_layer_done(self, layer):
        # Buckets become ready in launch order (their ready layers decrease), so a bucket is
        # launched by index and every rank issues the same collectives in the same order.
        if not self.overlap:
            return
        ks = self._launch_at.get(layer)
        if ks:
            t = time.perf_counter()
            for k in ks:
                self._launch(k)
            self.launched_in_backward = self._launched
            self.stats.add(self.kind, time.perf_counter() - t)
        elif self.progress and self._reqs:
            from mpi4py import MPI

            t = time.perf_counter()
            MPI.Request.Testall(self._reqs)
            self.stats.add(self.kind + "_poll", time.perf_counter() - t)

    def _launch(self, k):
        from mpi4py import MPI

        view = self._views[k]
        self._reqs.append(self.comm.Iallreduce(MPI.IN_PLACE, view, op=MPI.SUM))
        self.stats.add(self.kind, 0.0, view.nbytes)
        self._launched = k + 1

    def finish(self):
        """Start any bucket not yet started, then wait for all of them."""
        from mpi4py import MPI

        with self.stats.timed(self.kind):
            for k in range(self._launched, len(self.buckets)):
                self._launch(k)
            MPI.Request.Waitall(self._reqs)
        self._reqs = []
        self._launched = 0


def local_loss(logits, y, scale, loss=None):
    """``loss`` (default softmax cross-entropy, :mod:`hpcnn.nn.loss`) of ``logits`` against
    ``y``; its gradient scaled by ``scale`` (``len(y) / global batch``: the mean over the global
    batch once summed over ranks)."""
    return (loss or SOFTMAX_CE)(logits, y, scale)


class DataParallel(Strategy):
    """Keep a :class:`hpcnn.nn.Sequential` identical on every rank of ``comm`` by summing
    gradients of the loss normalised by the global batch.

    At construction the parameters are checked to match on every rank (names and shapes), then
    broadcast from rank 0.

    Parameters
    ----------
    comm : mpi4py communicator or None (None or size 1: plain serial training)
    model : hpcnn.nn.Sequential
    optimizer : callable ``params -> optimizer`` (for instance ``partial(SGD, lr=...)``)
    bucket_mb, overlap, progress : see :class:`BucketReducer`
    loss : a loss of :mod:`hpcnn.nn.loss` (default softmax cross-entropy)
    """

    name = "data"

    def __init__(self, comm, model, optimizer, bucket_mb=DEFAULT_BUCKET_MB, overlap=True,
                 progress=True, loss=None):
        if not bucket_mb > 0:
            raise ValueError(f"bucket size must be positive, got {bucket_mb} MiB")
        self.comm, self.model = comm, model
        self.loss = loss or SOFTMAX_CE
        self.stats = CommStats()
        self.group = model.group
        self.opt = optimizer(self.group.params)
        self.bucket_mb, self.overlap = bucket_mb, overlap
        self.reducer = None
        if comm_size(comm) > 1:
            self.reducer = BucketReducer(comm, self.group, model.layers, bucket_mb, overlap,
                                         progress, self.stats)
            check_same_model(comm, self.group.params)
            comm.Bcast(self.group.data, root=0)
        # the buckets a reduction uses (also described on one rank)
        self.buckets = self.reducer.buckets if self.reducer else \
            layer_buckets(model.layers, self.group, bucket_mb)

    def forward_backward(self, x, y):
        self.group.zero_grad()
        logits = self.model.forward(x)
        loss, dlogits = self.loss(logits, y, 1.0 / self.size)
        if self.reducer is None:
            self.model.backward(dlogits)
        else:
            self.reducer.begin()
            self.model.backward(dlogits, on_layer_done=self.reducer.on_layer_done)
        return loss

    def finish_step(self, lr):
        if self.reducer is not None:
            self.reducer.finish()
        with profile.region("optimizer"):
            self.opt.step(lr)
        self.stats.steps += 1

    def describe(self):
        if self.size == 1:
            return "serial (1 rank)"
        n = len(self.buckets)
        return (f"data parallel over {self.size} ranks: sync grad ({n} bucket{'s' * (n > 1)} "
                f"<= {self.bucket_mb:g} MiB, {'overlap' if self.overlap else 'no overlap'})")

    def bytes_per_step(self, batch):
        return {"allreduce": self.group.nbytes()} if self.size > 1 else {}


class ParamAveraging(Strategy):
    """Local SGD with parameter averaging every ``every`` steps (DL4J's parameter averaging).

    Each rank steps with the gradient of its own slice of the global batch (the mean over its
    slice); after every ``every`` optimizer steps the parameters are averaged with one in-place
    ``Allreduce`` on the flat buffer (and, with ``average_optimizer_state``, the momentum buffers
    too: they are moved into one flat buffer of the same layout first, so that is one more
    ``Allreduce``).

    With K = 1 and plain SGD this is gradient averaging up to rounding: each rank's local step
    rounds at the scale of the weights, so the two drift apart by about an ulp of ``w`` per step.
    """

    name = "average"

    def __init__(self, comm, model, optimizer, every=1, average_optimizer_state=False,
                 loss=None):
        if every < 1:
            raise ValueError(f"averaging period must be >= 1 step, got {every}")
        self.comm, self.model = comm, model
        self.loss = loss or SOFTMAX_CE
        self.stats = CommStats()
        self.group = model.group
        self.opt = optimizer(self.group.params)
        self.every = int(every)
        self.average_optimizer_state = bool(average_optimizer_state)
        self.since = 0  # local steps since the last average
        self._scale = np.float32(1.0 / self.size)
        self.flat_momentum = _flatten_momentum(self.opt) if average_optimizer_state else None
        self.per_rank_rows = self.size > 1
        if self.size > 1:
            check_same_model(comm, self.group.params)
            comm.Bcast(self.group.data, root=0)
            if self.flat_momentum is not None:
                comm.Bcast(self.flat_momentum, root=0)

    def forward_backward(self, x, y):
        self.group.zero_grad()
        loss, dlogits = self.loss(self.model.forward(x), y, 1.0)
        self.model.backward(dlogits)
        return loss

    def finish_step(self, lr):
        with profile.region("optimizer"):
            self.opt.step(lr)
        self.stats.steps += 1
        self.since += 1
        if self.since >= self.every:
            self.average()

    def prepare_eval(self):
        """Evaluate the average, not one rank's model."""
        self.average()

    def average(self):
        """Average now if any step was taken since the last average."""
        if self.since == 0:
            return
        self.since = 0
        if self.size == 1:
            return
        from mpi4py import MPI

        for buf in (self.group.data, self.flat_momentum):
            if buf is not None:
                with self.stats.timed("allreduce", buf.nbytes):
                    self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                buf *= self._scale

    def extra_state(self):
        return dict(super().extra_state(), since_average=int(self.since))

    def load_extra_state(self, extra, same_layout):
        super().load_extra_state(extra, same_layout)
        self.since = int(extra.get("since_average", 0)) if same_layout else 0

    def describe(self):
        every = self.every
        return (f"parameter averaging over {self.size} ranks: sync average every {every} "
                f"step{'s' * (every > 1)}"
                f"{' (with momentum)' if self.average_optimizer_state else ''}")

    def bytes_per_step(self, batch):
        if self.size == 1:
            return {}
        n = self.group.nbytes() * (2 if self.flat_momentum is not None else 1)
        return {"allreduce": n / self.every}


def _flatten_momentum(opt):
    """Re-home ``opt.momentum_buffers`` as views of one flat float32 buffer (values kept)."""
    total = sum(v.size for v in opt.momentum_buffers)
    flat = np.zeros(total, dtype=np.float32)
    off = 0
    for i, v in enumerate(opt.momentum_buffers):
        flat[off:off + v.size] = v.ravel()
        opt.momentum_buffers[i] = flat[off:off + v.size].reshape(v.shape)
        off += v.size
    return flat
