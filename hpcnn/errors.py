"""Exceptions that the command-line tools turn into one clear line and exit status 2."""


class HpcnnError(Exception):
    """Base class for errors caused by the user's input (bad option, missing or corrupt file).

    The command-line entry points catch it, print ``error: <message>`` on stderr and exit with 2.
    The message is always one line (:func:`one_line`), whatever text it quotes.
    """

    def __str__(self):
        return one_line(super().__str__())


class UsageError(HpcnnError):
    """A bad command-line option or configuration value."""


class DataError(HpcnnError):
    """A dataset file is missing, truncated, corrupt or fails its checksum. The message names it."""


class RankLocalError(HpcnnError):
    """An error on this rank only, in the middle of a run (one rank's read of a store chunk
    failed its checksum), while the other ranks may be waiting in a collective.

    It is not shared by ``agree`` first, so an entry point must not just return: under MPI it
    prints the one ``error: rank R: ...`` line and ends the whole job with exit status 2.
    """


def one_line(text) -> str:
    """``text`` (an exception or a string) as one line: line breaks and runs of white space
    become one space (HDF5's and the OS's messages may hold several lines); an exception with
    an empty message gives its type's name."""
    s = " ".join(str(text).split())
    if not s and isinstance(text, BaseException):
        return type(text).__name__
    return s


def end_job(comm, error, status: int = 2):
    """End the job for ``error`` raised on this rank only (:class:`RankLocalError`): print
    ``error: rank R: <message>`` on stderr, then end every rank with exit status ``status``.

    With one rank (or no ``comm``) it just prints ``error: <message>`` and raises SystemExit.
    With more, MPI Abort ends the others, wherever they wait; the MPI library's own abort
    message is silenced so that the job's stderr holds the one line.
    """
    import os
    import sys

    size = comm.Get_size() if comm is not None else 1
    where = f"rank {comm.Get_rank()}: " if size > 1 else ""
    print(f"error: {where}{one_line(error)}", file=sys.stderr, flush=True)
    if size > 1:
        import time

        sys.stdout.flush()
        time.sleep(0.5)  # let the launcher forward the line before Abort tears the job down
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from hpcnn.parallel import watchdog

        watchdog.stop()  # Abort ends the job: the peers must not report this rank as dead first
        comm.Abort(status)
    raise SystemExit(status)
