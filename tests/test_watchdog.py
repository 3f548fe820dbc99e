"""The peer-death watchdog (hpcnn.parallel.watchdog).

Unit tests drive its protocol over socket pairs in one process (the exit is caught, not taken).
The job tests launch 2 or 3 ranks of ``tests/peer_kill.py`` with ``mpiexec`` and kill one rank
with SIGKILL. Hydra's mpiexec would end the job itself when a rank dies, so the killed rank is
wrapped in a shell that stays alive after its python is killed (``...; exec sleep 60``): the
launcher then sees nothing, as ``srun`` with Slurm's default ``KillOnBadExit=0`` sees nothing,
and only the watchdog can end the job. The same under ``srun`` is in tests/test_slurm.py and
across emulated nodes in tests/test_cluster_local.py.
"""

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

from hpcnn.parallel import watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- the protocol, in one process

class _Exit(Exception):
    pass


@pytest.fixture
def caught(monkeypatch):
    """The watchdog's os._exit and its one line, recorded instead of ending pytest."""
    got = {"status": [], "said": []}

    def fake_exit(status):
        got["status"].append(status)
        raise _Exit

    monkeypatch.setattr(watchdog.os, "_exit", fake_exit)
    monkeypatch.setattr(watchdog, "_say", got["said"].append)
    return got


def _watch(rank, peers):
    w = watchdog._Watchdog(rank, peers)
    done = threading.Event()

    def run():
        try:
            w._watch()
        except _Exit:
            pass
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return w, done


def test_rank0_ends_the_job_when_a_peer_closes_without_bye(caught):
    mine1, theirs1 = socket.socketpair()
    mine2, theirs2 = socket.socketpair()
    w, done = _watch(0, {mine1: 1, mine2: 2})
    theirs2.close()  # rank 2's process died: its kernel closed the socket
    assert done.wait(5)
    assert caught["said"] == ["rank 0: peer rank 2 died; ending the job"]
    assert caught["status"] == [watchdog.EXIT_STATUS]
    # rank 1 is told which rank died
    theirs1.settimeout(5)
    assert theirs1.recv(16) == b"D" + struct.pack("!i", 2)
    for s in (mine1, mine2, theirs1):
        s.close()


def test_a_peer_that_says_bye_is_not_taken_for_dead(caught):
    mine1, theirs1 = socket.socketpair()
    mine2, theirs2 = socket.socketpair()
    w, done = _watch(0, {mine1: 1, mine2: 2})
    theirs1.sendall(b"B")
    theirs1.close()
    time.sleep(0.3)
    assert not done.is_set() and caught["said"] == []
    theirs2.close()  # and a later death of another rank is still seen
    assert done.wait(5)
    assert caught["said"] == ["rank 0: peer rank 2 died; ending the job"]
    mine1.close()
    mine2.close()


def test_other_rank_ends_when_rank0_relays_a_death_split_across_reads(caught):
    mine, theirs = socket.socketpair()
    w, done = _watch(3, {mine: 0})
    theirs.sendall(b"D\x00")  # the message arrives in two pieces
    time.sleep(0.2)
    assert not done.is_set()
    theirs.sendall(b"\x00\x00\x05")
    assert done.wait(5)
    assert caught["said"] == ["rank 3: peer rank 5 died; ending the job"]
    mine.close()
    theirs.close()


def test_other_rank_ends_when_rank0_dies(caught):
    mine, theirs = socket.socketpair()
    w, done = _watch(1, {mine: 0})
    theirs.close()
    assert done.wait(5)
    assert caught["said"] == ["rank 1: peer rank 0 died; ending the job"]
    mine.close()


def test_stop_says_bye_and_ends_the_thread_without_flagging(caught):
    mine, theirs = socket.socketpair()
    w, done = _watch(1, {mine: 0})
    w.stop()
    assert done.wait(5)
    theirs.settimeout(5)
    assert theirs.recv(16) == b"B"
    assert caught["said"] == [] and caught["status"] == []
    w.stop()  # twice is fine
    theirs.close()


class _OneRank:
    def Get_size(self):
        return 1


def test_start_is_a_no_op_for_one_rank_or_when_turned_off(monkeypatch):
    assert watchdog.start(None) is False
    assert watchdog.start(_OneRank()) is False
    monkeypatch.setenv("HPCNN_WATCHDOG", "0")
    assert not watchdog.enabled()
    monkeypatch.setenv("HPCNN_WATCHDOG", "1")
    assert watchdog.enabled()
    assert not watchdog.running()
    watchdog.stop()  # without start: nothing to do


# ---------------------------------------------------------------- jobs under mpiexec

def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")


def env(**extra):
    e = dict(os.environ, PYTHONPATH=ROOT)
    for k in ("HPCNN_WATCHDOG", "HPCNN_DATA", "HPCNN_FAULT_RANK", "HPCNN_FAULT_STEP",
              "HPCNN_FAULT_DATA_RANK"):
        e.pop(k, None)
    e.update(extra)
    return e


class Job:
    """A launched job; a thread reads its merged output and stamps when each line came."""

    def __init__(self, cmd, **extra):
        self.lines = []
        self.p = subprocess.Popen(cmd, env=env(**extra), cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line))

    @property
    def output(self):
        return "".join(line for _, line in self.lines)

    def when(self, text, timeout):
        """When the first line holding ``text`` came (monotonic), or None."""
        deadline = time.monotonic() + timeout
        while True:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if time.monotonic() > deadline or self.p.poll() is not None and \
                    not self.reader.is_alive():
                return None
            time.sleep(0.02)

    def wait(self, timeout):
        rc = self.p.wait(timeout=timeout)
        self.reader.join(5)
        return rc, time.monotonic()

    def close(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, 9)
            self.p.wait()


def rank_pids(marker):
    """{rank: pid} of the python processes whose environment holds HPCNN_TEST_JOB=marker."""
    found = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if not f.read().startswith("python"):
                    continue
            with open(f"/proc/{d}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"HPCNN_TEST_JOB={marker}".encode() in environ:
            for v in environ:
                if v.startswith(b"PMI_RANK="):
                    found[int(v[9:])] = int(d)
    return found


def alive(pid):
    """Whether ``pid`` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_after(pids, timeout):
    """Seconds until every process of ``pids`` has ended, or None after ``timeout``."""
    t = time.monotonic()
    while any(alive(p) for p in pids):
        if time.monotonic() - t > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - t


def remove_orphan_shm(since):
    """Remove MPICH's shared-memory segments (/dev/shm/mpich_shm_*) made since ``since`` (a
    time.time()) that no live process maps or holds open: a killed job's ranks never unlink
    theirs, and Slurm or mpiexec may reuse the name for a later job, which then fails to start."""
    folder = "/dev/shm"
    try:
        names = [n for n in os.listdir(folder) if n.startswith("mpich_shm_")]
    except OSError:
        return
    fresh = set()
    for n in names:
        try:
            if os.stat(os.path.join(folder, n)).st_mtime >= since - 1:
                fresh.add(os.path.join(folder, n))
        except OSError:
            pass
    if not fresh:
        return
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/maps") as f:
                fresh -= {line.split(None, 5)[-1].strip() for line in f if "/dev/shm/" in line}
            for fd in os.listdir(f"/proc/{d}/fd"):
                fresh.discard(os.path.realpath(f"/proc/{d}/fd/{fd}"))
        except OSError:
            continue
    for path in fresh:
        try:
            os.unlink(path)
        except OSError:
            pass


@pytest.fixture
def shm_cleanup():
    """After a test that kills ranks: remove the segments its killed job left in /dev/shm."""
    since = time.time()
    yield
    remove_orphan_shm(since)


def kill_job(ranks, kill_rank, *extra):
    """``ranks`` ranks of peer_kill; rank ``kill_rank`` is SIGKILLed, its shell lingers."""
    prog = (f"{sys.executable} -m tests.peer_kill --kill-rank {kill_rank} --kill-after 1 "
            f"{' '.join(extra)}")
    # Only the killed rank's shell lingers (exit 137): the launcher must not see that death.
    script = f'{prog}; rc=$?; if [ $rc -eq 137 ]; then exec sleep 60; fi; exit $rc'
    return [MPIEXEC, "-n", str(ranks), "sh", "-c", script]


@needs_mpi
@pytest.mark.parametrize("ranks,kill_rank", [(2, 1), (2, 0), (3, 2)])
@pytest.mark.usefixtures("shm_cleanup")
def test_sigkill_of_one_rank_ends_every_other_rank_within_10s(ranks, kill_rank):
    marker = uuid.uuid4().hex
    job = Job(kill_job(ranks, kill_rank), HPCNN_TEST_JOB=marker)
    try:
        assert job.when("watchdog on", 90), job.output
        pids = rank_pids(marker)
        assert sorted(pids) == list(range(ranks)), pids
        survivors = [r for r in range(ranks) if r != kill_rank]
        t_kill = job.when(f"rank {kill_rank} kills itself", 30)
        assert t_kill is not None, job.output
        took = gone_after([pids[r] for r in survivors], 30)
        t_end = time.monotonic()
        assert took is not None and t_end - t_kill < 10, (t_end - t_kill, job.output)
        # (the launcher itself may wait for the lingering shell: job.close() ends it)
        reporter = 0 if kill_rank != 0 else survivors[0]
        assert job.when(f"rank {reporter}: peer rank {kill_rank} died; ending the job", 5), \
            job.output
        assert "peer_kill: done" not in job.output
    finally:
        job.close()


@needs_mpi
@pytest.mark.parametrize("extra", [[], ["--no-stop", "--linger", "0:1.5"],
                                   ["--linger", "1:1.5"]])
def test_normal_exits_are_not_taken_for_deaths(extra):
    """Every rank ends cleanly, at once or one after the other (by stop() or at exit)."""
    job = Job([MPIEXEC, "-n", "2", sys.executable, "-m", "tests.peer_kill", "--seconds", "0.5",
               *extra])
    try:
        rc, _ = job.wait(timeout=90)
        assert rc == 0, job.output
        assert "watchdog on" in job.output and "peer_kill: done" in job.output, job.output
        assert "died" not in job.output and "warning" not in job.output, job.output
    finally:
        job.close()


@needs_mpi
def test_turned_off_by_the_environment():
    job = Job([MPIEXEC, "-n", "2", sys.executable, "-m", "tests.peer_kill", "--seconds", "0.2"],
              HPCNN_WATCHDOG="0")
    try:
        rc, _ = job.wait(timeout=90)
        assert rc == 0 and "watchdog off" in job.output, job.output
    finally:
        job.close()
