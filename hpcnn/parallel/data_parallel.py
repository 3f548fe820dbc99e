"""Synchronous data parallelism: every rank holds the whole model and averages gradients."""

import numpy as np

from hpcnn.errors import HpcnnError


class DataParallel:
    """Keep a :class:`hpcnn.nn.Sequential` identical on every rank of ``comm``.

    At construction the parameters are checked to match on every rank (count and shapes), then
    broadcast from rank 0. :meth:`sync_grads` averages ``model.flat_grads`` over the ranks with one
    in-place ``Allreduce`` on the contiguous float32 buffer.
    """

    def __init__(self, comm, model):
        self.comm = comm
        self.model = model
        self.size = comm.Get_size() if comm is not None else 1
        if self.size > 1:
            self._check_same_model()
            comm.Bcast(model.flat_params, root=0)

    def _check_same_model(self):
        mine = [(name, p.data.shape) for name, p in self.model.named_params()]
        ref = self.comm.bcast(mine, root=0)
        ok = self.comm.allreduce(int(ref == mine))
        if ok != self.size:
            raise HpcnnError(f"the model differs between ranks ({ok} of {self.size} match rank 0:"
                             f" {self.model.num_params()} parameters here)")

    def sync_grads(self):
        if self.size == 1:
            return
        from mpi4py import MPI

        g = self.model.flat_grads
        self.comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        g *= np.float32(1.0 / self.size)
