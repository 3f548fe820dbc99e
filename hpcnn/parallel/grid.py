"""A Cartesian process grid: a data axis and a model axis, one sub-communicator for each.

Pure data parallelism is the grid ``(N, 1)``: every rank holds the whole model and the data axis
spans all ranks. A hybrid scheme (Krizhevsky's "one weird trick": convolutions data-parallel, fully
connected layers model-parallel) uses ``(D, M)`` with ``D * M = N``: ranks in one row of the model
axis share a model replica and split its large layers; ranks along the data axis hold replicas that
average their gradients.
"""


def blockdist(n, size, rank):
    """Split ``n`` items into ``size`` contiguous blocks; return block ``rank`` as (count, start).

    The remainder goes to the low ranks, so counts differ by at most one.

    >>> [blockdist(10, 4, r) for r in range(4)]
    [(3, 0), (3, 3), (2, 6), (2, 8)]
    """
    if n < 0 or size <= 0 or not 0 <= rank < size:
        raise ValueError(f"blockdist needs n >= 0, size > 0 and 0 <= rank < size; "
                         f"got n={n}, size={size}, rank={rank}")
    q, r = divmod(n, size)
    count = q + (1 if rank < r else 0)
    start = rank * q + min(rank, r)
    return count, start


class ProcessGrid:
    """``comm`` arranged as a ``(data, model)`` Cartesian grid.

    Parameters
    ----------
    comm : mpi4py communicator
        The ranks to arrange (never grabbed here: the entry point passes it in).
    dims : (int, int) or None
        Ranks along the data and model axes; a 0 lets ``MPI.Compute_dims`` choose. The default
        ``None`` is ``(size, 1)``, pure data parallelism. ``data * model`` must equal the size.

    Attributes
    ----------
    cart : the Cartesian communicator (rank order kept: ``reorder=False``, so rank 0 stays 0)
    data_comm : ranks with this rank's model coordinate (gradient averaging runs here)
    model_comm : ranks with this rank's data coordinate (a model replica split over ranks)
    dims, coords : the grid's shape and this rank's ``(data, model)`` position
    """

    def __init__(self, comm, dims=None):
        from mpi4py import MPI

        size = comm.Get_size()
        dims = [size, 1] if dims is None else [int(d) for d in dims]
        if len(dims) != 2 or min(dims) < 0:
            raise ValueError(f"grid dims must be two non-negative ints (data, model), got {dims}")
        if 0 in dims:
            fixed = [d for d in dims if d]
            if fixed and size % fixed[0]:
                raise ValueError(f"cannot fit a grid {tuple(dims)} to {size} ranks")
            dims = MPI.Compute_dims(size, dims)
        if dims[0] * dims[1] != size:
            raise ValueError(f"grid {dims[0]} x {dims[1]} does not match the {size} ranks")
        self.dims = tuple(dims)
        self.cart = comm.Create_cart(self.dims, periods=[False, False], reorder=False)
        self.rank = self.cart.Get_rank()
        self.coords = tuple(self.cart.Get_coords(self.rank))
        self.data_comm = self.cart.Sub([True, False])
        self.model_comm = self.cart.Sub([False, True])

    @property
    def data_size(self):
        return self.dims[0]

    @property
    def model_size(self):
        return self.dims[1]

    def free(self):
        """Release the communicators (collective over the grid)."""
        for c in (self.data_comm, self.model_comm, self.cart):
            c.Free()

    def __repr__(self):
        return f"ProcessGrid(dims={self.dims}, coords={self.coords})"
