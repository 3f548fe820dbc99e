"""The one interface between training and parallelism: a :class:`Strategy` owns the step.

The training loop, evaluation, checkpoints and the benchmarks talk to a strategy through these
calls only, and never reach past them::

    loss = strategy.forward_backward(x, y)   # this rank's part of the global batch
    strategy.finish_step(lr)                 # reductions, optimizer, averaging
    labels = strategy.predict(x)             # evaluation (collective under hybrid)
    total, correct, n = strategy.score(x, y) # evaluation by the strategy's loss (data parallel)
    strategy.prepare_eval()                  # e.g. average the parameters first
    strategy.timings()                       # wait seconds and bytes sent per collective kind
    strategy.state() / load_state(...)       # full named parameters and momentum
    strategy.describe()                      # one line for the log
    strategy.bytes_per_step(batch)           # analytic bytes sent per collective kind

Every method is collective over the strategy's communicator: all ranks call it at the same
point. Gradients are normalised by the global batch where the loss is computed (the strategies
scale the loss gradient, then *sum* over ranks), so no gradient buffer is rescaled after a
reduction.

Bytes are counted as each rank's payload per collective kind: the buffer of an allreduce or a
reduce-scatter, the rank's own block of an all-gather, the buffer of a broadcast at its root
(nothing elsewhere), the buffer a rank contributes to a reduce. The analytic
:meth:`Strategy.bytes_per_step` counts the same, so the two can be compared exactly.
"""

import math
import time
from contextlib import contextmanager

import numpy as np

from hpcnn import profile
from hpcnn.errors import HpcnnError


class CommStats:
    """Seconds waited and bytes sent, per collective kind, since the last :meth:`reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.wait_s = {}
        self.bytes = {}
        self.steps = 0

    def add(self, kind, seconds=0.0, nbytes=0):
        self.wait_s[kind] = self.wait_s.get(kind, 0.0) + seconds
        self.bytes[kind] = self.bytes.get(kind, 0) + int(nbytes)

    @contextmanager
    def timed(self, kind, nbytes=0):
        t = time.perf_counter()
        with profile.region("allreduce_wait" if kind.startswith("allreduce") else "comm_wait"):
            yield
        self.add(kind, time.perf_counter() - t, nbytes)

    def snapshot(self):
        return {"wait_s": dict(self.wait_s), "bytes": dict(self.bytes), "steps": self.steps}


def check_same_model(comm, params):
    """Raise :class:`HpcnnError` on every rank unless all ranks' parameters match rank 0's.

    Names and shapes are compared (small metadata: lowercase, pickled collectives), and every rank
    learns the verdict, so all fail together instead of some hanging in the next collective.
    """
    mine = [(p.name, tuple(p.data.shape)) for p in params]
    ref = comm.bcast(mine, root=0)
    ok = comm.allreduce(int(ref == mine))
    if ok != comm.Get_size():
        raise HpcnnError(f"the model differs between ranks ({ok} of {comm.Get_size()} match "
                         f"rank 0: {sum(math.prod(s) for _, s in mine)} parameters in "
                         f"{len(mine)} tensors on rank {comm.Get_rank()}, "
                         f"{sum(math.prod(s) for _, s in ref)} in {len(ref)} on rank 0)")


def comm_size(comm):
    return comm.Get_size() if comm is not None else 1


def comm_rank(comm):
    return comm.Get_rank() if comm is not None else 0


class Strategy:
    """Base class: the bookkeeping every strategy shares (see the module docstring).

    Subclasses set ``self.comm`` (all ranks of the job, or None), ``self.model``, ``self.opt``
    (its ``params`` the parameters this rank holds, in order) and ``self.stats``, and implement
    :meth:`forward_backward`, :meth:`finish_step`, :meth:`describe` and :meth:`bytes_per_step`.
    """

    name = "strategy"
    per_rank_rows = False  # True where ranks legitimately hold different parameters

    # the step ---------------------------------------------------------------------------------
    def forward_backward(self, x, y):
        raise NotImplementedError

    def finish_step(self, lr):
        raise NotImplementedError

    def step(self, x, y, lr):
        """One whole step; returns this rank's loss (mean over the examples it computed)."""
        loss = self.forward_backward(x, y)
        self.finish_step(lr)
        return loss

    def predict(self, x):
        """Predicted class of each row of ``x`` (this rank's examples; there may be none)."""
        if len(x) == 0:
            return np.zeros(0, np.int64)
        return np.argmax(self.model.forward(x, train=False), axis=1)

    def score(self, x, y):
        """(summed loss, correct predictions, predictions) of the strategy's loss (``self.loss``,
        :mod:`hpcnn.nn.loss`) on this rank's examples, the model whole on this rank."""
        return self.loss.score(self.model.forward(x, train=False), y)

    def prepare_eval(self):
        """Make the parameters ready for evaluation (nothing to do for most strategies)."""

    # reporting --------------------------------------------------------------------------------
    def timings(self):
        """``{"wait_s": {kind: s}, "bytes": {kind: n}, "steps": k}`` since the last reset."""
        return self.stats.snapshot()

    def reset_timings(self):
        self.stats.reset()

    def describe(self):
        raise NotImplementedError

    def bytes_per_step(self, batch):
        raise NotImplementedError

    @property
    def size(self):
        return comm_size(self.comm)

    @property
    def rank(self):
        return comm_rank(self.comm)

    def num_params(self):
        return self.model.num_params()

    # state ------------------------------------------------------------------------------------
    def _gather_full(self, p, local):
        """``local`` (this rank's part of parameter ``p``) gathered to full shape on rank 0 of
        ``self.comm``; None elsewhere. Unsplit parameters are rank 0's own."""
        if p.shard is None:
            return local.copy() if self.rank == 0 else None
        return self._gather_rows(p, local)

    def _gather_rows(self, p, local):
        raise NotImplementedError  # only strategies that split parameters

    def state(self):
        """(arrays, extra): full-shape named arrays on rank 0 (None elsewhere) and small
        strategy metadata (JSON-able, the same on every rank).

        Arrays are ``param/<name>`` and ``momentum/<name>``; with :attr:`per_rank_rows` on several
        ranks each has a leading axis of one row per rank.
        """
        rows = self.per_rank_rows and self.size > 1
        out = {}
        for p, v in zip(self.opt.params, self.opt.momentum_buffers, strict=True):
            for kind, local in (("param", p.data), ("momentum", v)):
                if rows:
                    full = self._gather_all_ranks(local)
                else:
                    full = self._gather_full(p, local)
                out[f"{kind}/{p.name}"] = full
        return (out if self.rank == 0 else None), self.extra_state()

    def _gather_all_ranks(self, local):
        buf = np.empty((self.size, *local.shape), np.float32) if self.rank == 0 else None
        self.comm.Gather(np.ascontiguousarray(local, np.float32), buf, root=0)
        return buf

    def extra_state(self):
        return self._carried_state()

    def load_extra_state(self, extra, same_layout):
        self._load_carried(extra, same_layout)

    MAX_CARRIED = 1 << 18  # floats of carried state a checkpoint's metadata may hold

    def _carried_state(self):
        """A stateful model's per-rank rows (``model.carried``: an RNN's hidden states of this
        rank's streams), gathered in rank order on rank 0 as ``{"carried": rows}`` (collective;
        the other ranks return {}: only rank 0's is written). Omitted beyond MAX_CARRIED."""
        carried = getattr(self.model, "carried", None)
        if carried is None or carried.size * self.size > self.MAX_CARRIED:
            return {}
        parts = self.comm.gather(carried, root=0) if self.size > 1 else [carried]
        return {"carried": np.concatenate(parts).tolist()} if self.rank == 0 else {}

    def _load_carried(self, extra, same_layout):
        """This rank's rows of a checkpoint's carried state, kept as ``model.resumed_carried``
        for the resumed epoch (ignored unless the ranks and the rows split alike)."""
        self.model.resumed_carried = None
        rows = extra.get("carried")
        if not rows or not same_layout:
            return
        try:
            full = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            return
        if full.ndim == 2 and len(full) % self.size == 0 and np.isfinite(full).all():
            per = len(full) // self.size
            self.model.resumed_carried = full[self.rank * per:(self.rank + 1) * per].copy()

    def expected_state(self):
        """{array name: full shape} this strategy saves and loads (rows excluded)."""
        out = {}
        for p in self.opt.params:
            for kind in ("param", "momentum"):
                out[f"{kind}/{p.name}"] = tuple(int(d) for d in p.full_shape)
        return out

    def load_state(self, get, rows, extra=None, same_layout=False):
        """Load full named arrays: ``get(name)`` returns the full array (with a leading axis of
        ``rows`` rows when ``rows`` > 1) on every rank; each rank takes its slice.

        Rows from as many ranks as this run has, under a strategy keeping per-rank rows, are taken
        rank by rank; otherwise the rows are averaged (the consensus model).
        """
        own_row = rows > 1 and rows == self.size and self.per_rank_rows
        for p, v in zip(self.opt.params, self.opt.momentum_buffers, strict=True):
            for kind, dest in (("param", p.data), ("momentum", v)):
                a = get(f"{kind}/{p.name}")
                if rows > 1:
                    a = a[self.rank] if own_row else a.mean(axis=0, dtype=np.float64)
                dest[...] = p.local_part(np.asarray(a, dtype=np.float32))
        self.load_extra_state(extra or {}, same_layout and (rows == self.size or rows == 1))
