"""Krizhevsky's hybrid parallelism ("One weird trick", arXiv:1404.5997).

The ranks form a ``D x M`` grid (:class:`hpcnn.parallel.ProcessGrid`): D data groups of M ranks.

- The feature stage (convolutions, pooling) is data-parallel over all N = D*M ranks: each rank
  runs it on its own examples and the gradients are summed over all ranks with the bucketed,
  overlapped ``Iallreduce`` of :class:`hpcnn.parallel.data_parallel.BucketReducer`.
- Every fully connected layer of the head is split by output neurons over the M ranks of a data
  group (weights, bias, gradients, momentum; ``blockdist`` rows, so any width works). Head
  gradients are summed over the D data groups only, never over the model axis: with D = 1 no head
  weight is ever communicated.

Inside the head, activations are kept transposed, ``(features, examples)``: a rank's slice of a
layer's output is then a contiguous block of rows, so the all-gather that rebuilds the next
layer's input and the reduce-scatter that returns each rank its rows of an input gradient are
single ``Allgatherv`` / ``Reduce_scatter`` calls with no copies.

The loss comes out exact from the split logits, as Megatron-LM's vocab-parallel cross entropy
does: the row max and the sum of exponentials are reduced over the model axis, the target logit
comes from the rank that holds that class, and each rank keeps its slice of the gradient. The
classifier is split like every other FC layer rather than replicated: a replicated last layer
would need the whole previous activation on every rank (one more all-gather of examples x 4096
floats, against two reductions of a few floats per example) and its gradient reduced over the
model axis, the very traffic the scheme exists to avoid.

How the features reach the head (``--hybrid-scheme``):

- ``a``: all-gather the features of the group's whole batch, run the head on all of it, and
  reduce-scatter the feature gradients back to their owners;
- ``b``: M rounds; in round r rank r's features are broadcast and every rank runs the head on
  them while round r+1's broadcast is already in flight; the feature gradients are reduced to
  their owner (non-blocking);
- ``c``: M rounds; in round r every rank sends the r-th 1/M of its examples to all others (over
  the M rounds an all-to-all of the features), the head runs on those, and the gradients go back
  by a non-blocking reduce-scatter; round r+1's exchange is in flight meanwhile.
"""

import time

import numpy as np

from hpcnn import profile
from hpcnn.errors import UsageError
from hpcnn.parallel.data_parallel import BucketReducer
from hpcnn.parallel.flatbuf import DEFAULT_BUCKET_MB, FlatGroup
from hpcnn.parallel.grid import ProcessGrid, blockdist
from hpcnn.parallel.strategy import CommStats, Strategy, check_same_model

SCHEMES = ("a", "b", "c")
DEFAULT_SCHEME = "a"


def _mpi():
    from mpi4py import MPI

    return MPI


def _vspec(buf, sizes, mpitype):
    """``[buf, sizes, displacements, type]``: the buffer argument of a ``...v`` collective whose
    blocks of ``sizes`` elements lie back to back in rank order."""
    sizes = [int(n) for n in sizes]
    displs = [0]
    for n in sizes[:-1]:
        displs.append(displs[-1] + n)
    return [buf, sizes, displs, mpitype]


class SplitHead:
    """The head's FC layers split by output rows over ``comm`` (the model axis).

    Works on transposed activations: :meth:`forward` takes the full input ``x`` (n, F) held alike
    by every rank of ``comm`` and returns this rank's rows of the logits, (c, n);
    :meth:`backward` takes their gradient and returns this rank's *partial* gradient of ``x``
    (n, F): the sum over the ranks of ``comm`` is the true one.
    """

    def __init__(self, layers, comm, stats):
        from hpcnn.nn.layers import Linear, ReLU

        self.comm, self.stats = comm, stats
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.layers = list(layers)
        self.rows = []  # per Linear: (counts, starts) over the ranks of comm
        for layer in self.layers:
            if isinstance(layer, Linear):
                out = layer.weight.full_shape[0]
                dist = [blockdist(out, self.size, r) for r in range(self.size)]
                count, start = dist[self.rank]
                layer.weight.take_rows(start, count)
                layer.bias.take_rows(start, count)
                self.rows.append(([c for c, _ in dist], [s for _, s in dist]))
            elif not isinstance(layer, ReLU):
                raise UsageError(f"hybrid parallelism splits fully connected layers and ReLU; "
                                 f"the head has {layer.kind} layer {layer.name!r}")
        linears = [layer for layer in self.layers if isinstance(layer, Linear)]
        if not linears or not isinstance(self.layers[-1], Linear):
            raise UsageError("hybrid parallelism needs a head that ends in a fully connected "
                             "layer (the classifier)")
        self.num_classes = linears[-1].weight.full_shape[0]
        self.class_start = self.rows[-1][1][self.rank]
        self.in_features = linears[0].weight.full_shape[1]
        self._saved = []

    def params(self):
        return [p for layer in self.layers for p in layer.params()]

    # communication on the model axis -----------------------------------------------------------
    def _allgather_rows(self, local, counts, width):
        """Rows of every rank stacked: local (c, width) -> (sum c, width)."""
        MPI = _mpi()
        full = np.empty((sum(counts), width), np.float32)
        with self.stats.timed("allgather", local.nbytes):
            self.comm.Allgatherv(np.ascontiguousarray(local),
                                 _vspec(full, [c * width for c in counts], MPI.FLOAT))
        return full

    def _reduce_scatter_rows(self, partial, counts):
        """Sum ``partial`` (R, width) over the ranks; return this rank's block of rows."""
        MPI = _mpi()
        width = partial.shape[1]
        mine = np.empty((counts[self.rank], width), np.float32)
        with self.stats.timed("reduce_scatter", partial.nbytes):
            self.comm.Reduce_scatter(np.ascontiguousarray(partial), mine,
                                     [c * width for c in counts], op=MPI.SUM)
        return mine

    # compute ---------------------------------------------------------------------------------
    def forward(self, x, train=True):
        """x (n, F) full -> this rank's logit rows (c, n)."""
        from hpcnn.nn.layers import Linear

        saved = []
        a = None  # transposed activation of the previous layer, this rank's rows
        li = 0
        n = x.shape[0]
        for layer in self.layers:
            if isinstance(layer, Linear):
                w, b = layer.weight.data, layer.bias.data
                with profile.region("gemm", f"{layer.name} fwd"):
                    if li == 0:
                        inp = x
                        y = np.dot(w, x.T)
                    else:
                        inp = self._allgather_rows(a, self.rows[li - 1][0], n) \
                            if self.size > 1 else a
                        y = np.dot(w, inp)
                    y += b[:, None]
                saved.append(inp)
                a = y
                li += 1
            else:  # ReLU
                with profile.region("activation", f"{layer.name} fwd"):
                    a = np.maximum(a, np.float32(0.0))
                saved.append(a)
        if train:
            self._saved = saved
        return a

    def backward(self, d):
        """d: gradient of this rank's logit rows (c, n) -> partial gradient of x (n, F)."""
        from hpcnn.nn.layers import Linear

        li = len(self.rows) - 1
        for k in range(len(self.layers) - 1, -1, -1):
            layer, inp = self.layers[k], self._saved[k]
            if isinstance(layer, Linear):
                w = layer.weight.data
                with profile.region("gemm", f"{layer.name} bwd"):
                    if li == 0:
                        layer.weight.grad += np.dot(d, inp)
                    else:
                        layer.weight.grad += np.dot(d, inp.T)
                    layer.bias.grad += d.sum(axis=1, dtype=np.float64).astype(np.float32)
                    if li == 0:
                        d = np.dot(d.T, w)  # (n, F) partial
                    else:
                        partial = np.dot(w.T, d)  # (F_prev, n) partial
                if li > 0:
                    d = self._reduce_scatter_rows(partial, self.rows[li - 1][0]) \
                        if self.size > 1 else partial
                li -= 1
            else:  # ReLU: inp is its output
                with profile.region("activation", f"{layer.name} bwd"):
                    d = np.where(inp > 0, d, np.float32(0.0))
        self._saved = []
        return d

    def loss(self, z, labels, scale):
        """Exact softmax cross-entropy from split logits.

        z (c, n): this rank's classes ``class_start .. class_start+c-1`` for n examples; labels
        (n,) the same on every rank. Returns (mean loss over the n examples, dz (c, n)) with dz the
        gradient of ``scale`` x the summed loss, this rank's rows.
        """
        MPI = _mpi()
        n = z.shape[1]
        z = z.astype(np.float64)
        m = z.max(axis=0) if z.shape[0] else np.full(n, -np.inf)
        if self.size > 1:
            with self.stats.timed("allreduce_loss", m.nbytes):
                self.comm.Allreduce(MPI.IN_PLACE, m, op=MPI.MAX)
        e = np.exp(z - m)
        lo, c = self.class_start, z.shape[0]
        own = (labels >= lo) & (labels < lo + c)
        cols = np.nonzero(own)[0]
        rows = labels[own] - lo
        sums = np.zeros(2 * n)
        sums[:n] = e.sum(axis=0)
        sums[n + cols] = z[rows, cols] - m[cols]
        if self.size > 1:
            with self.stats.timed("allreduce_loss", sums.nbytes):
                self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        s, target = sums[:n], sums[n:]
        loss = float(np.mean(np.log(s) - target))
        dz = e * (scale / s)
        dz[rows, cols] -= scale
        return loss, dz.astype(np.float32)

    def gather_logits(self, z):
        """All classes' logits (C, n) on every rank from this rank's rows (c, n)."""
        if self.size == 1:
            return z
        return self._allgather_rows(z, self.rows[-1][0], z.shape[1])


class Hybrid(Strategy):
    """Convolutions data-parallel over all ranks, FC layers split over each data group.

    Parameters
    ----------
    comm : mpi4py communicator (all ranks of the job)
    model : hpcnn.nn.Sequential, built alike on every rank (rank 0's parameters are broadcast
        before the head is split, so each slice equals the serial initialisation's rows)
    optimizer : callable ``params -> optimizer``
    grid : (D, M) with D * M = ranks; default (1, N)
    scheme : "a", "b" or "c" (see the module docstring)
    bucket_mb, overlap, progress : the feature gradients' reduction
        (:class:`hpcnn.parallel.data_parallel.BucketReducer`)
    """

    name = "hybrid"

    def __init__(self, comm, model, optimizer, grid=None, scheme=DEFAULT_SCHEME,
                 bucket_mb=DEFAULT_BUCKET_MB, overlap=True, progress=True):
        if scheme not in SCHEMES:
            raise UsageError(f"unknown hybrid scheme {scheme!r}; choose from "
                             f"{', '.join(SCHEMES)}")
        if not model.head:
            raise UsageError(f"net {model.name} has no fully connected head: hybrid "
                             f"parallelism needs one")
        size = comm.Get_size()
        dims = (1, size) if grid is None else tuple(grid)
        if len(dims) != 2 or dims[0] * dims[1] != size or min(dims) < 1:
            raise UsageError(f"grid {'x'.join(map(str, dims))} does not match the {size} ranks "
                             f"(D x M must equal the rank count)")
        self.comm, self.model, self.scheme = comm, model, scheme
        self.stats = CommStats()
        self.grid = ProcessGrid(comm, dims)
        self.dims = self.grid.dims
        self.dcomm, self.mcomm = self.grid.data_comm, self.grid.model_comm
        self.bucket_mb, self.overlap = bucket_mb, overlap
        if size > 1:  # one initialisation everywhere, then each rank keeps its rows
            check_same_model(comm, model.params())
            comm.Bcast(model.group.data, root=0)
        self.head = SplitHead(model.head, self.mcomm, self.stats)
        self.features = model.features
        self.feat_group = FlatGroup(p for layer in self.features for p in layer.params())
        self.head_group = FlatGroup(self.head.params())
        model.group = None  # the whole-model buffer: no longer anyone's
        self.opt = optimizer(self.feat_group.params + self.head_group.params)
        self.reducer = None
        if size > 1 and self.feat_group.size:
            self.reducer = BucketReducer(comm, self.feat_group, self.features, bucket_mb,
                                         overlap, progress, self.stats)
        self._head_req = None

    # the step ---------------------------------------------------------------------------------
    def _features(self, x, train=True):
        return self.model.forward(x, train, upto=self.model.head_start)

    def _feature_backward(self, d):
        on_done = None
        if self.reducer is not None:
            self.reducer.begin()
            on_done = self.reducer.on_layer_done
        self.model.backward(d, on_layer_done=on_done, upto=self.model.head_start)

    def _counts(self, n):
        """Examples per rank of the model axis (one small Allgather)."""
        MPI = _mpi()
        counts = np.empty(self.mcomm.Get_size(), np.int64)
        with self.stats.timed("allgather", 8):
            self.mcomm.Allgather(np.array([n], np.int64), [counts, MPI.INT64_T])
        return counts

    def _gather_examples(self, a, counts):
        """Rows (examples) of every rank of the model axis, stacked in rank order."""
        MPI = _mpi()
        width = int(np.prod(a.shape[1:], dtype=np.int64))
        dtype = MPI.FLOAT if a.dtype == np.float32 else MPI.INT64_T
        out = np.empty((int(counts.sum()), *a.shape[1:]), a.dtype)
        with self.stats.timed("allgather", a.nbytes):
            self.mcomm.Allgatherv(np.ascontiguousarray(a), _vspec(out, counts * width, dtype))
        return out

    def forward_backward(self, x, y):
        self.feat_group.zero_grad()
        self.head_group.zero_grad()
        feats = np.ascontiguousarray(self._features(x), np.float32)  # (n, F): sent as is
        n = feats.shape[0]
        scale = 1.0 / (n * self.size)  # the loss is normalised by the global batch
        if self.mcomm.Get_size() == 1:
            loss, dfeat = self._head_step(feats, np.asarray(y, np.int64), scale)
        else:
            counts = self._counts(n)
            if (counts != n).any():
                raise UsageError(f"hybrid: ranks of a data group hold different batch shares "
                                 f"{counts.tolist()}")
            run = {"a": self._scheme_a, "b": self._scheme_b, "c": self._scheme_c}[self.scheme]
            loss, dfeat = run(feats, np.asarray(y, np.int64), counts, scale)
        self._start_head_reduction()
        self._feature_backward(dfeat.reshape(feats.shape))
        return loss

    def _head_step(self, x, labels, scale):
        """Head forward, loss and backward on examples ``x`` held alike by the model axis."""
        z = self.head.forward(x)
        with profile.region("loss"):
            loss, dz = self.head.loss(z, labels, scale)
        return loss, self.head.backward(dz)

    def _scheme_a(self, feats, y, counts, scale):
        x = self._gather_examples(feats, counts)
        labels = self._gather_examples(y, counts)
        loss, dx = self._head_step(x, labels, scale)
        return loss, self.head._reduce_scatter_rows(dx, counts.tolist())

    def _scheme_b(self, feats, y, counts, scale):
        MPI = _mpi()
        M, me, n = self.mcomm.Get_size(), self.mcomm.Get_rank(), feats.shape[0]
        labels = self._gather_examples(y, counts).reshape(M, n)
        bufs = [feats if r == me else np.empty_like(feats) for r in range(M)]
        dfeat = np.empty_like(feats)

        def post(r):
            with self.stats.timed("bcast", feats.nbytes if r == me else 0):
                return self.mcomm.Ibcast(bufs[r], root=r)

        pending, reduces, sends, losses = post(0), [], [], []
        for r in range(M):
            with self.stats.timed("bcast"):
                pending.Wait()
            if r + 1 < M:
                pending = post(r + 1)  # the next rank's features travel during this round
            loss, dx = self._head_step(bufs[r], labels[r], scale)
            losses.append(loss)
            sends.append(dx)
            with self.stats.timed("reduce", dx.nbytes):
                reduces.append(self.mcomm.Ireduce(dx, dfeat if r == me else None,
                                                  op=MPI.SUM, root=r))
        with self.stats.timed("reduce"):
            MPI.Request.Waitall(reduces)
        return float(np.mean(losses)), dfeat

    def _scheme_c(self, feats, y, counts, scale):
        MPI = _mpi()
        M, n = self.mcomm.Get_size(), feats.shape[0]
        labels = self._gather_examples(y, counts).reshape(M, n)
        chunks = [blockdist(n, M, r) for r in range(M)]
        chunks = [(c, s) for c, s in chunks if c > 0]
        dfeat = np.empty_like(feats)
        recv = [np.empty((M * c, *feats.shape[1:]), np.float32) for c, _ in chunks]

        def post(k):
            c, s = chunks[k]
            part = np.ascontiguousarray(feats[s:s + c])
            with self.stats.timed("allgather", part.nbytes):
                return self.mcomm.Iallgather(part, recv[k])

        pending, scatters, losses, weights = post(0), [], [], []
        for k, (c, s) in enumerate(chunks):
            with self.stats.timed("allgather"):
                pending.Wait()
            if k + 1 < len(chunks):
                pending = post(k + 1)
            loss, dx = self._head_step(recv[k], labels[:, s:s + c].reshape(-1), scale)
            losses.append(loss)
            weights.append(c)
            with self.stats.timed("reduce_scatter", dx.nbytes):
                scatters.append(self.mcomm.Ireduce_scatter_block(dx, dfeat[s:s + c],
                                                                 op=MPI.SUM))
        with self.stats.timed("reduce_scatter"):
            MPI.Request.Waitall(scatters)
        return float(np.average(losses, weights=weights)), dfeat

    def _start_head_reduction(self):
        """Sum the head's gradients over the data axis, during the features' backward."""
        if self.dcomm.Get_size() == 1 or not self.head_group.size:
            return
        MPI = _mpi()
        t = time.perf_counter()
        self._head_req = self.dcomm.Iallreduce(MPI.IN_PLACE, self.head_group.grad, op=MPI.SUM)
        self.stats.add("allreduce_head", time.perf_counter() - t, self.head_group.nbytes())

    def finish_step(self, lr):
        if self.reducer is not None:
            self.reducer.finish()
        if self._head_req is not None:
            with self.stats.timed("allreduce_head"):
                self._head_req.Wait()
            self._head_req = None
        with profile.region("optimizer"):
            self.opt.step(lr)
        self.stats.steps += 1

    def predict(self, x):
        """Collective over the data group: every rank calls it, with its own (maybe no) rows."""
        if len(x):
            feats = self._features(x, train=False)
        else:  # no examples here, but the collectives of the head still need this rank
            feats = np.zeros((0, self.head.in_features), np.float32)
        n = feats.shape[0]
        if self.mcomm.Get_size() == 1:
            return np.argmax(self.head.forward(feats, train=False), axis=0)
        counts = self._counts(n)
        z = self.head.gather_logits(self.head.forward(self._gather_examples(feats, counts),
                                                      train=False))
        lo = int(counts[:self.mcomm.Get_rank()].sum())
        return np.argmax(z[:, lo:lo + n], axis=0)

    # state ------------------------------------------------------------------------------------
    def _gather_rows(self, p, local):
        """Rows of a split parameter gathered on world rank 0 (data group 0, model rank 0)."""
        MPI = _mpi()
        if self.grid.coords[0] != 0:
            return None
        width = int(np.prod(p.full_shape[1:], dtype=np.int64))
        M = self.mcomm.Get_size()
        sizes = [blockdist(p.full_shape[0], M, r)[0] * width for r in range(M)]
        root = self.mcomm.Get_rank() == 0
        full = np.empty(p.full_shape, np.float32) if root else None
        self.mcomm.Gatherv(np.ascontiguousarray(local, np.float32),
                           _vspec(full, sizes, MPI.FLOAT) if root else None, root=0)
        return full if self.rank == 0 else None

    # reporting --------------------------------------------------------------------------------
    def describe(self):
        D, M = self.dims
        fcs = ", ".join(f"{layer.name} {layer.weight.full_shape[0]}"
                        for layer in self.head.layers if layer.params())
        n = len(self.reducer.buckets) if self.reducer else 0
        return (f"hybrid grid {D}x{M} scheme {self.scheme}: features data-parallel over "
                f"{self.size} ranks ({n} bucket{'s' * (n != 1)} <= {self.bucket_mb:g} MiB, "
                f"{'overlap' if self.overlap else 'no overlap'}), head ({fcs}) split over "
                f"{M} rank{'s' * (M > 1)}"
                + (f", its gradients summed over {D} data groups" if D > 1 else ""))

    def bytes_per_step(self, batch):
        """Analytic bytes this rank sends per step at global batch ``batch`` (see
        :mod:`hpcnn.parallel.strategy` for how each kind is counted)."""
        D, M = self.dims
        n = batch // self.size  # examples per rank
        out = {}

        def add(kind, nbytes):
            out[kind] = out.get(kind, 0) + int(nbytes)

        if self.reducer is not None:
            add("allreduce", self.feat_group.nbytes())
        if D > 1 and self.head_group.size:
            add("allreduce_head", self.head_group.nbytes())
        if M == 1:
            return out
        F, me = self.head.in_features, self.mcomm.Get_rank()
        add("allgather", 8)  # the counts

        def head_pass(rows):  # head forward + loss + backward on ``rows`` examples
            counts = [c for c, _ in self.head.rows]
            for li in range(1, len(counts)):
                add("allgather", 4 * counts[li - 1][me] * rows)
                add("reduce_scatter", 4 * sum(counts[li - 1]) * rows)
            add("allreduce_loss", 8 * rows + 16 * rows)

        add("allgather", 8 * n)  # the labels
        if self.scheme == "a":
            add("allgather", 4 * n * F)
            head_pass(M * n)
            add("reduce_scatter", 4 * M * n * F)
        elif self.scheme == "b":
            add("bcast", 4 * n * F)
            for _ in range(M):
                head_pass(n)
                add("reduce", 4 * n * F)
        else:
            for r in range(M):
                c = blockdist(n, M, r)[0]
                if c:
                    add("allgather", 4 * c * F)
                    head_pass(M * c)
                    add("reduce_scatter", 4 * M * c * F)
        return out
