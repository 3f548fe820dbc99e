"""Atomic file replacement: a file is either the old one or the complete new one, never half.

The one way hpcnn writes a file that must survive a crash (checkpoints, HDF5 stores, downloads,
the autotune cache)::

    with atomic_path(final) as tmp:      # tmp: a unique name in final's folder
        write_everything_to(tmp)
    # here: tmp was fsynced, renamed over final, and the folder fsynced

On any exception inside the block the temporary file is removed and the exception propagates;
``final`` is untouched.
"""

import os
from contextlib import contextmanager
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_path(path):
    """fsync a file or folder by name (silently skipped where the file system refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_name(final, prefix="."):
    """A name next to ``final`` that no other process writes: ``.<name>-<pid>.tmp``."""
    final = Path(final)
    return final.parent / f"{prefix}{final.stem}-{os.getpid()}{final.suffix}{TMP_SUFFIX}"


@contextmanager
def atomic_path(final, tmp=None, before_rename=None):
    """Yield a temporary path; on a clean exit make it ``final`` atomically (see module doc).

    ``tmp`` overrides the temporary name (it must be in ``final``'s folder);
    ``before_rename(tmp)`` runs after the fsync, just before the rename (a test hook).
    """
    final = Path(final)
    tmp = Path(tmp) if tmp is not None else temporary_name(final)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename(tmp)
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_path(final.parent)
