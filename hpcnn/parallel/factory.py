"""Build the strategy a run asks for: ``--parallel data|hybrid`` and its options."""

from hpcnn.errors import UsageError
from hpcnn.parallel.flatbuf import DEFAULT_BUCKET_MB

PARALLEL_CHOICES = ("data", "hybrid")


def parse_grid(text):
    """``"DxM"`` -> (D, M); UsageError when it is not two positive integers."""
    try:
        d, m = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise UsageError(f"--grid must look like DxM (for instance 2x2), got {text!r}") from None
    if d < 1 or m < 1:
        raise UsageError(f"--grid needs positive D and M, got {text!r}")
    return d, m


def build_strategy(comm, model, optimizer, *, parallel="data", sync="grad", grid=None,
                   scheme=None, bucket_mb=None, overlap=True, average_every=None,
                   average_optimizer_state=False, progress=True, loss=None):
    """The strategy for ``model`` on the ranks of ``comm``; ``optimizer(params)`` builds the
    optimizer over the parameters a rank holds; ``loss`` one of :mod:`hpcnn.nn.loss` (None:
    softmax cross-entropy). Options that do not apply raise UsageError."""
    from hpcnn.parallel.data_parallel import DataParallel, ParamAveraging
    from hpcnn.parallel.hybrid import DEFAULT_SCHEME, Hybrid

    bucket_mb = DEFAULT_BUCKET_MB if bucket_mb is None else bucket_mb
    if parallel not in PARALLEL_CHOICES:
        raise UsageError(f"unknown --parallel {parallel!r}; choose from "
                         f"{', '.join(PARALLEL_CHOICES)}")
    if parallel == "data":
        if grid is not None or scheme is not None:
            raise UsageError("--grid and --hybrid-scheme need --parallel hybrid")
        if sync == "average":
            return ParamAveraging(comm, model, optimizer, average_every or 1,
                                  average_optimizer_state, loss=loss)
        return DataParallel(comm, model, optimizer, bucket_mb, overlap, progress, loss=loss)
    if loss is not None and getattr(loss, "name", None) != "softmax_cross_entropy":
        raise UsageError(f"--parallel hybrid splits a classifier's fully connected head under "
                         f"softmax cross-entropy; it does not take the {loss.name} loss "
                         f"(use --parallel data)")
    if sync != "grad":
        raise UsageError("--parallel hybrid averages gradients every step: --sync average "
                         "is a data-parallel option")
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_SELF
    dims = parse_grid(grid) if isinstance(grid, str) else grid
    return Hybrid(comm, model, optimizer, dims, scheme or DEFAULT_SCHEME, bucket_mb, overlap,
                  progress)
