"""Two emulated nodes (jobs/cluster-local.sh): network namespaces joined by a 1 Gbit/s link.

Where root and network namespaces work, the module brings up a cluster of 2 nodes under a name
of its own (so that a concurrent run does not clash), runs over it, one rank per node:
- 2-rank equivalence tests (from tests/mpi/test_data_parallel.py: 2 ranks == serial) and the
  multi-node checks (tests/mpi/test_multinode.py), with the ranks on different hosts and the
  gradients crossing the shaped link over TCP;
- a training run (python -m hpcnn.train) whose rank 0 alone writes the metrics file;
- a kill -9 of the rank on the other node, which ends the job within 10 s, whether the launcher
  sees the death or not (then only the peer watchdog can end it);
and always tears the cluster down. Elsewhere the tests skip with the reason.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.test_watchdog import Job, gone_after, rank_pids, shm_cleanup  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "jobs", "cluster-local.sh")


def _why_not():
    """Why the emulated cluster cannot run here, or None."""
    if sys.platform != "linux":
        return "Linux only (network namespaces)"
    if os.geteuid() != 0:
        return "needs root (network namespaces, links, /etc/hosts)"
    for tool in ("ip", "tc", "unshare", "taskset"):
        if shutil.which(tool) is None:
            return f"no '{tool}' command"
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec) and shutil.which("mpiexec") is None:
        return "no mpiexec"
    probe = f"hpcnnprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        return f"'ip netns add' fails here: {r.stderr.strip()[:200]}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, stdin=subprocess.DEVNULL)
    return None


CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def env(**extra):
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("HPCNN_DATA", None)
    e.pop("HPCNN_WATCHDOG", None)
    for k in ("HPCNN_FAULT_RANK", "HPCNN_FAULT_STEP", "HPCNN_FAULT_DATA_RANK"):
        e.pop(k, None)
    e.update(extra)
    return e


@pytest.fixture(scope="module")
def cluster():
    """A fresh 2-node cluster, 1 Gbit/s links; its name. Torn down whatever happens."""
    why = _why_not()  # here, not at import: the MPI tiers import this module on every rank
    if why is not None:
        if CI:
            pytest.fail(f"CI=true, so the emulated-cluster tests must run, but: {why}",
                        pytrace=False)
        pytest.skip(f"emulated cluster: {why}")
    name = f"t{uuid.uuid4().hex[:8]}"
    r = subprocess.run([SCRIPT, "--name", name, "up", "--nodes", "2", "--link", "1gbit"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        yield name
    finally:
        d = subprocess.run([SCRIPT, "--name", name, "down"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        assert d.returncode == 0, d.stderr
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout
        with open("/etc/hosts") as f:
            assert name not in f.read()


# A few of the 2-rank equivalence tests (all of them take minutes with one core per node).
EQUIVALENCE = [f"tests/mpi/test_data_parallel.py::{t}" for t in (
    "test_n_ranks_equal_serial[lenet5-grad-overlap-small-buckets]",
    "test_n_ranks_equal_serial[lenet5-average-k1]",
    "test_parameters_broadcast_from_rank_0")]


def mpiexec(name, ranks, ppn, *cmd):
    return [SCRIPT, "--name", name, "mpiexec", "-ppn", str(ppn), "-n", str(ranks), "--", *cmd]


def test_status_shows_a_whole_cluster(cluster):
    r = subprocess.run([SCRIPT, "--name", cluster, "status"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert f"cluster {cluster}: 2 node(s), link 1gbit" in r.stdout and "whole" in r.stdout


def test_equivalence_and_multinode_paths_across_two_nodes(cluster):
    r = subprocess.run(
        mpiexec(cluster, 2, 1, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--with-mpi", "-m", "mpi", *EQUIVALENCE, "tests/mpi/test_multinode.py"),
        cwd=ROOT, env=env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    summary = r.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, \
        r.stdout[-3000:]


def test_training_across_two_nodes_writes_metrics_from_rank_0_only(cluster, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    r = subprocess.run(
        mpiexec(cluster, 2, 1, sys.executable, "-m", "hpcnn.train", "--net", "mlp",
                "--dataset", "synthetic", "--synthetic-train", "512", "--synthetic-test", "64",
                "--epochs", "1", "--batch-size", "32", "--metrics", str(metrics)),
        cwd=tmp_path, env=env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "ranks 2 x threads 1" in r.stdout, r.stdout  # one core per node, one rank on each
    assert "finished" in r.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records and records[-1]["ranks"] == 2
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


@pytest.mark.parametrize("launcher_sees_it", [True, False], ids=["hydra", "watchdog-only"])
@pytest.mark.usefixtures("shm_cleanup")
def test_kill_9_of_the_rank_on_the_other_node_ends_the_job_within_10s(cluster, launcher_sees_it):
    prog = f"{sys.executable} -m tests.peer_kill --seconds 300"  # Allreduce in a loop
    # watchdog-only: a killed rank's shell lingers, so that Hydra never learns of the death
    script = prog if launcher_sees_it else \
        f"{prog}; rc=$?; if [ $rc -eq 137 ]; then exec sleep 60; fi; exit $rc"
    marker = uuid.uuid4().hex
    job = Job(mpiexec(cluster, 2, 1, "sh", "-c", script), HPCNN_TEST_JOB=marker)
    try:
        assert job.when("watchdog on", 120), job.output
        pids = rank_pids(marker)
        assert sorted(pids) == [0, 1], pids
        with open(f"/proc/{pids[1]}/environ", "rb") as f:  # the rank on the other node
            assert f"HPCNN_CLUSTER={cluster}".encode() in f.read().split(b"\0")
        time.sleep(1)  # well inside the loop
        t = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        if launcher_sees_it:  # Hydra's proxy on that node sees it: mpiexec ends the job
            rc, t_end = job.wait(timeout=30)
            assert rc != 0, job.output
        else:  # Hydra does not: rank 0's watchdog ends rank 0
            took = gone_after([pids[0]], 30)
            t_end = time.monotonic()
            assert took is not None, job.output
            assert job.when("rank 0: peer rank 1 died; ending the job", 5), job.output
        assert t_end - t < 10, (t_end - t, job.output)
        assert "peer_kill: done" not in job.output
    finally:
        job.close()
