"""Failures under ``mpiexec -n 2``: one rank's crash, bad input or lost data ends the whole job.

Serial tier: each test launches its own 2-rank job (``mpiexec -n 2 python -m hpcnn.train``) as a
subprocess and checks that it ends promptly, with the right exit status and one clear message,
instead of leaving the other rank blocked in a collective.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--net", "mlp", "--dataset", "synthetic", "--synthetic-train", "512",
         "--synthetic-test", "64", "--threads", "1"]


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


MPIEXEC = find_mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")


def env(**extra):
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("HPCNN_DATA", None)
    for k in ("HPCNN_FAULT_RANK", "HPCNN_FAULT_STEP", "HPCNN_FAULT_DATA_RANK"):
        e.pop(k, None)
    e.update(extra)
    return e


def cmd(*args):
    return [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcnn.train", *SMALL, *args]


def launch(*args, timeout, **extra):
    t = time.monotonic()
    r = subprocess.run(cmd(*args), capture_output=True, text=True, env=env(**extra),
                       timeout=timeout, cwd=ROOT)
    return r, time.monotonic() - t


def test_exception_on_one_rank_aborts_the_job():
    r, took = launch("--batch-size", "32", "--epochs", "50", timeout=60,
                     HPCNN_FAULT_RANK="1", HPCNN_FAULT_STEP="3")
    assert r.returncode != 0 and took < 30, (r.returncode, took)
    assert r.stderr.count("rank 1: RuntimeError: injected failure before step 3") == 1, r.stderr
    assert "finished" not in r.stdout


def test_indivisible_batch_exits_2_on_every_rank_with_one_line():
    r, _ = launch("--batch-size", "33", timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "error: global batch 33 must be a multiple of the 2 ranks (and at least 2)"]


def test_exclusive_batch_options_exit_2():
    r, _ = launch("--batch-size", "32", "--batch-per-rank", "16", timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not allowed with" in lines[0], r.stderr


def test_data_missing_on_one_rank_exits_2_with_one_line():
    r, _ = launch("--batch-size", "32", timeout=60, HPCNN_FAULT_DATA_RANK="1")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "error: rank 1: cannot read the dataset (HPCNN_FAULT_DATA_RANK test hook)"]


def _descendants(pid):
    """Process ids below ``pid`` (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _rank_pid(launcher_pid, rank):
    """The launched process whose environment says it is MPI rank ``rank``."""
    for pid in _descendants(launcher_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the rank")
def test_kill_9_of_one_rank_ends_the_job():
    p = subprocess.Popen(cmd("--batch-size", "32", "--epochs", "1000"), env=env(), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "ranks 2 x threads" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()  # rank 0 prints the header once every rank is set up
            if not line and p.poll() is not None:
                break
        assert "ranks 2 x threads" in line, p.stderr.read()
        pid = _rank_pid(p.pid, 1)
        assert pid is not None, "rank 1's process not found"
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rc = p.wait(timeout=30)
        assert rc != 0 and time.monotonic() - t < 30
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
