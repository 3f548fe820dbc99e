"""Process-level MPI helpers: node-local rank counts, collective-safe errors, whole-job abort."""

import sys
import traceback

from hpcnn.errors import HpcnnError


def local_size(comm) -> int:
    """How many ranks of ``comm`` share this node (an MPI shared-memory split)."""
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def agree(comm, fn, *args, **kwargs):
    """Run ``fn`` on every rank; if it raised :class:`HpcnnError` on any rank, raise it on all.

    Use it around anything that may fail on some ranks only (reading files, checking a model),
    so that no rank is left waiting in a collective while another exits. The error raised
    everywhere is the one of the lowest failing rank, prefixed with that rank when size > 1.
    """
    err = None
    try:
        result = fn(*args, **kwargs)
    except HpcnnError as e:
        err, result = e, None
    if comm is None or comm.Get_size() == 1:
        if err is not None:
            raise err
        return result
    # Small metadata: lowercase (pickled) collective is fine here, off the hot path.
    errors = comm.allgather(None if err is None else (type(err), str(err)))
    for rank, e in enumerate(errors):
        if e is not None:
            cls, msg = e
            raise cls(msg if msg.startswith("rank ") else f"rank {rank}: {msg}")
    return result


def abort_on_exception(comm, exc: BaseException) -> None:
    """Print ``rank R: <error>`` with its traceback once and end every rank of the job now.

    An uncaught exception on one rank would otherwise leave the others blocked in a collective
    until the job's time limit; ``Abort`` makes the launcher kill them all.
    """
    rank = comm.Get_rank() if comm is not None else 0
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(f"{tb}rank {rank}: {type(exc).__name__}: {exc}\n")
    sys.stderr.flush()
    if comm is not None and comm.Get_size() > 1:
        from hpcnn.parallel import watchdog

        watchdog.stop()  # Abort ends the job: the peers must not report this rank as dead first
        comm.Abort(1)
    sys.exit(1)


def reduce_timing(comm, values, root=0):
    """Min, mean and max over the ranks of a few per-rank numbers (one ``Gather`` of float64).

    ``values`` maps names to this rank's number (for instance seconds per step). Returns, on
    ``root``, ``{name: {"min": .., "mean": .., "max": ..}}``; ``None`` on the other ranks. Every
    rank must pass the same names in the same order.
    """
    import numpy as np

    names = list(values)
    mine = np.array([float(values[k]) for k in names], dtype=np.float64)
    size = comm.Get_size() if comm is not None else 1
    if size == 1:
        table = mine[None, :]
    else:
        table = np.empty((size, len(names)), dtype=np.float64) if comm.Get_rank() == root else None
        comm.Gather(mine, table, root=root)
        if comm.Get_rank() != root:
            return None
    return {k: {"min": float(table[:, j].min()), "mean": float(table[:, j].mean()),
                "max": float(table[:, j].max())} for j, k in enumerate(names)}
