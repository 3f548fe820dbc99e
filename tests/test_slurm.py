"""Under a real Slurm: srun and sbatch of the job scripts in jobs/, and the peer watchdog.

The module needs a Slurm with 2 nodes. When none answers it brings one up with
``jobs/slurm-local.sh up`` (root; apt-get installs slurmctld, slurmd, slurm-client and munge when
missing) with 2 slurmd nodes and Slurm's stock ``KillOnBadExit=0``, and takes it down after the
module (only when it started it). Where network namespaces work, each slurmd runs in its own
emulated node (``SLURM_LOCAL_CLUSTER``, jobs/cluster-local.sh): a 2-node job's tasks have two
hostnames and talk over TCP across a 10 Gbit/s link; elsewhere the nodes are two names on this
host. It skips, with the reason, where Slurm cannot be had (not root, no apt-get and no Slurm,
apt-get failing offline), except under CI=true, where these tests must run and a reason to skip
fails them instead.

Jobs: ``sbatch --wait -n 2 jobs/train.sbatch`` (no arguments: a short synthetic training) and a
2-node ``jobs/scaling.sbatch`` with two points, each checked for exit 0 and what it wrote; 2-rank
training under ``srun``; a rank's crash or SIGKILL ending the job, with ``--kill-on-bad-exit=1``
and without it (``--kill-on-bad-exit=0``, Slurm's default), where only hpcnn's peer watchdog
ends the job: it must within 10 s (without it the survivor spins in its allreduce until the
time limit, jobs/README-slurm.md).
"""

import csv
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.test_watchdog import shm_cleanup  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_LOCAL = os.path.join(ROOT, "jobs", "slurm-local.sh")
CLUSTER_LOCAL = os.path.join(ROOT, "jobs", "cluster-local.sh")
SMALL = ["--net", "mlp", "--dataset", "synthetic", "--synthetic-test", "64", "--threads", "1",
         "--batch-size", "32"]
NODES = 2
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _controller_unreachable():
    """Why slurmctld cannot be up, from slurm.conf and a 1 s TCP connect; ``None`` if it may be.

    ``sinfo`` with no controller retries for a long while: this makes the common case (Slurm
    installed but not running) skip at once. Without a readable slurm.conf (configless) it says
    nothing and ``sinfo`` decides.
    """
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    hosts, port = [], 6817
    try:
        with open(conf) as f:
            for line in f:
                key, _, value = line.split("#", 1)[0].strip().partition("=")
                key, value = key.strip().lower(), value.strip()
                if key in ("slurmctldhost", "controlmachine", "controladdr") and value:
                    name, _, addr = value.partition("(")
                    hosts.append(addr.rstrip(")") or name)
                elif key == "slurmctldport" and value:
                    port = int(value.split("-")[0])
    except (OSError, ValueError):
        return None
    for host in hosts:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return None
        except OSError:
            continue
    return f"slurmctld not reachable at {', '.join(hosts) or '?'}:{port}" if hosts else None


def _slurm_ready():
    """Why the Slurm that answers here will not do, or ``None`` when it has NODES usable nodes."""
    if shutil.which("srun") is None or shutil.which("sinfo") is None:
        return "no srun/sinfo on PATH"
    why = _controller_unreachable()
    if why:
        return why
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                           timeout=5, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo did not answer: {e}"
    if r.returncode != 0:
        return f"sinfo failed: {r.stderr.strip()[:200]}"
    states = r.stdout.split()
    usable = [s for s in states if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if len(usable) < NODES:
        return f"fewer than {NODES} usable Slurm nodes (sinfo: {' '.join(states) or 'nothing'})"
    cpus = _node_cpus()
    if any(c < 2 for c in cpus.values()):  # srun -N 1 -n 2: "node configuration is not available"
        return f"a Slurm node with fewer than 2 CPUs, which 2 ranks on one node need: {cpus}"
    return None


def _node_cpus():
    """{node: CPUs} as Slurm sees them."""
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %c"], capture_output=True, text=True,
                       timeout=10, stdin=subprocess.DEVNULL)
    return {n: int(c) for n, c in (line.split() for line in r.stdout.splitlines())}


def _cannot_start():
    """Why ``slurm-local.sh up`` cannot be tried here, or ``None``."""
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "no Slurm with 2 nodes up, and bringing one up needs root"
    have = all(os.path.exists(f"/usr/sbin/{d}") for d in ("slurmctld", "slurmd", "munged"))
    if not have and shutil.which("apt-get") is None:
        return "no Slurm installed and no apt-get to install it"
    return None


def _skip_or_fail(why):
    if CI:
        pytest.fail(f"CI=true, so the Slurm tests must run, but: {why}", pytrace=False)
    pytest.skip(f"Slurm: {why}")


def _emulated_nodes_why_not():
    """Why the slurmd daemons cannot run in emulated nodes here, or None."""
    from tests.test_cluster_local import _why_not

    return _why_not()


@pytest.fixture(scope="module", autouse=True)
def slurm():
    """A Slurm with 2 nodes for the module: the one running, or one brought up (and down).

    Brought up here, where network namespaces work (root: CI), each of its two slurmd runs in its
    own emulated node (jobs/cluster-local.sh, 10 Gbit/s links), so that a job's tasks on two nodes
    have two hostnames and talk over TCP (MPICH's OFI netmod: the task prolog of slurm-local.sh);
    elsewhere, or with ``HPCNN_SLURM_EMULATED=0``, as two node names on this host. (With the UCX
    netmod one clean-clone CI run of the emulated nodes failed to connect, "Connection refused",
    and Slurm's PMI-1 reader cut UCX's business cards at random: jobs/README-slurm.md.) Yields
    the cluster's name, or None for nodes on this host.
    """
    if _slurm_ready() is None:
        yield None
        return
    why = _cannot_start()
    if why:
        _skip_or_fail(why)
    was_up = subprocess.run([SLURM_LOCAL, "status"], capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=30).returncode == 0
    # OMP_NUM_THREADS=1, as in this very process once hpcnn has pinned its threads: GNU nproc
    # obeys it, and slurm-local.sh once made 1-CPU nodes from it (test_nodes_offer_...).
    e = dict(os.environ, SLURM_LOCAL_NODES=str(NODES), SLURM_LOCAL_KILL_ON_BAD_EXIT="0",
             OMP_NUM_THREADS="1")
    e.pop("SLURM_LOCAL_CPUS", None)
    cluster = None
    emulated = os.environ.get("HPCNN_SLURM_EMULATED", "1") != "0"
    if not was_up and emulated and _emulated_nodes_why_not() is None:
        cluster = f"s{uuid.uuid4().hex[:8]}"
        r = subprocess.run([CLUSTER_LOCAL, "--name", cluster, "up", "--nodes", str(NODES),
                            "--link", "10gbit", "--cpus", "all"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        assert r.returncode == 0, r.stderr
        e["SLURM_LOCAL_CLUSTER"] = cluster
    try:
        r = subprocess.run([SLURM_LOCAL, "up"], capture_output=True, text=True, env=e,
                           stdin=subprocess.DEVNULL, timeout=600)
        if r.returncode != 0:
            if "apt-get" in r.stderr:
                _skip_or_fail(r.stderr.strip().splitlines()[-1])
            pytest.fail(f"jobs/slurm-local.sh up failed: {r.stderr[-2000:]}", pytrace=False)
        try:
            why = _slurm_ready()
            assert why is None, why
            STARTED_HERE.append(cluster)
            yield cluster
        finally:
            if not was_up:
                subprocess.run([SLURM_LOCAL, "down"], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=120)
    finally:
        if cluster:
            subprocess.run([CLUSTER_LOCAL, "--name", cluster, "down"], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)


STARTED_HERE = []  # the cluster name (None: nodes on this host) when the fixture brought Slurm up


def test_nodes_offer_the_hosts_cpus_whatever_omp_num_threads():
    """slurm-local.sh, called with OMP_NUM_THREADS=1, still gives each node this host's CPUs
    (emulated nodes: cluster-local.sh --cpus all, which counts them with taskset)."""
    if not STARTED_HERE:
        pytest.skip("Slurm was not brought up here")
    cpus = _node_cpus()
    assert len(cpus) == NODES, cpus
    assert set(cpus.values()) == {len(os.sched_getaffinity(0))}, cpus


def env(**extra):
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("HPCNN_DATA", None)
    for k in ("HPCNN_FAULT_RANK", "HPCNN_FAULT_STEP", "HPCNN_FAULT_DATA_RANK"):
        e.pop(k, None)
    e.pop("MPIR_CVAR_CH4_NETMOD", None)  # the job scripts choose it (jobs/README-slurm.md)
    e.update(extra)
    return e


def srun_cmd(name, *args, kill_on_bad_exit=1, nodes=1):
    # the PyPI MPICH's OFI netmod, as the job scripts in jobs/ choose (with UCX, Slurm's PMI-1
    # reader cuts a business-card request over 1024 bytes, at random)
    return ["srun", "-J", name, "-N", str(nodes), "-n", "2", "--mpi=pmi2",
            "--export=ALL,MPIR_CVAR_CH4_NETMOD=ofi",
            f"--kill-on-bad-exit={kill_on_bad_exit}", "--time=5",
            sys.executable, "-m", "hpcnn.train", *SMALL, *args]


def _name():
    return f"hpcnn-test-{uuid.uuid4().hex[:8]}"


def _scancel(name):
    subprocess.run(["scancel", "-n", name], capture_output=True, timeout=10,
                   stdin=subprocess.DEVNULL)


class Job:
    """``srun`` in the background; a thread reads its merged output (none lost, none blocking)."""

    def __init__(self, *args, kill_on_bad_exit=1, nodes=1, **extra):
        self.name = _name()
        self.lines = []
        cmd = srun_cmd(self.name, *args, kill_on_bad_exit=kill_on_bad_exit, nodes=nodes)
        self.p = subprocess.Popen(cmd, env=env(**extra), cwd=ROOT,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def output(self):
        return "".join(self.lines)

    def wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.p.poll() is not None:
                self.reader.join(5)
                return text in self.output
            time.sleep(0.05)
        return False

    def wait(self, timeout):
        rc = self.p.wait(timeout=timeout)
        self.reader.join(5)
        return rc

    def close(self):
        if self.p.poll() is None:
            _scancel(self.name)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def _rank_pid(job_name, rank):
    """The python process of the Slurm job ``job_name`` that is MPI rank ``rank`` (from /proc).

    srun's tasks are children of slurmstepd, not of srun: find them by their environment.
    """
    want = (f"SLURM_JOB_NAME={job_name}".encode(), f"PMI_RANK={rank}".encode())
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
        if all(w in environ for w in want):
            return int(d)
    return None


def test_two_ranks_train_under_srun():
    r = subprocess.run(srun_cmd(_name(), "--synthetic-train", "256", "--epochs", "1"),
                       env=env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "ranks 2 x threads 1" in r.stdout, r.stdout


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the rank")
@pytest.mark.usefixtures("shm_cleanup")
def test_kill_9_of_one_rank_ends_the_srun_job():
    job = Job("--synthetic-train", "2000", "--epochs", "1000")
    try:
        # Rank 0 prints the header once every rank is set up (and in the training loop).
        assert job.wait_for("ranks 2 x threads", 90), job.output
        pid = _rank_pid(job.name, 1)
        if pid is None and not os.access("/proc/1/environ", os.R_OK):
            pytest.skip("cannot read other processes' environment (not root?)")
        assert pid is not None, "rank 1's python process not found"
        time.sleep(0.5)  # inside the training loop, blocked in or near an allreduce
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rc = job.wait(timeout=30)
        took = time.monotonic() - t
        assert rc != 0 and took < 30, (rc, took, job.output)
        assert "task 1: Killed" in job.output, job.output
        assert "finished" not in job.output
    finally:
        job.close()


@pytest.mark.usefixtures("shm_cleanup")
def test_exception_on_one_rank_ends_the_srun_job_and_names_the_rank():
    job = Job("--synthetic-train", "2000", "--epochs", "50",
              HPCNN_FAULT_RANK="1", HPCNN_FAULT_STEP="3")
    try:
        # Timed from the failure: the step's start-up (a few seconds) is not the point here.
        assert job.wait_for("injected failure before step 3", 90), job.output
        t = time.monotonic()
        rc = job.wait(timeout=30)
        took = time.monotonic() - t
        assert rc != 0 and took < 30, (rc, took, job.output)
        assert job.output.count("rank 1: RuntimeError: injected failure before step 3") == 1, \
            job.output
        assert "finished" not in job.output
    finally:
        job.close()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the rank")
@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.usefixtures("shm_cleanup")
def test_kill_9_without_kill_on_bad_exit_ends_the_srun_job_within_10s(nodes):
    """Slurm's default: srun leaves the survivors running; hpcnn's peer watchdog ends them."""
    job = Job("--synthetic-train", "2000", "--epochs", "1000", kill_on_bad_exit=0, nodes=nodes)
    try:
        assert job.wait_for("ranks 2 x threads", 90), job.output
        pid = _rank_pid(job.name, 1)
        assert pid is not None, "rank 1's python process not found"
        time.sleep(0.5)  # inside the training loop, blocked in or near an allreduce
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        rc = job.wait(timeout=60)
        took = time.monotonic() - t
        assert rc != 0 and took < 10, (rc, took, job.output)
        # hpcnn's watchdog ends rank 0, unless the MPI library noticed the dead peer first: across
        # nodes UCX may abort rank 0 itself (process_vm_readv: "No such process"). Either way the
        # job ended within 10 s, which is the promise; never by rank 0 finishing.
        assert ("rank 0: peer rank 1 died; ending the job" in job.output
                or (nodes == 2 and "task 0: Aborted" in job.output)), job.output
        assert "finished" not in job.output
    finally:
        job.close()


def _sbatch(tmp_path, script, *options, **extra):
    """``sbatch --wait`` of a job script in ``tmp_path``: (exit status, job id, its output)."""
    e = env(HPCNN_PYTHON=sys.executable, NUMBA_CACHE_DIR="", **extra)
    r = subprocess.run(["sbatch", "--wait", "--parsable", "-J", _name(), "--time=10",
                        "-o", "job-%j.out", *options, os.path.join(ROOT, "jobs", script)],
                       cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
    job_id = r.stdout.strip().split(";")[0]
    out = tmp_path / f"job-{job_id}.out"
    return r.returncode, job_id, (out.read_text() if out.exists() else r.stderr)


def test_train_sbatch_with_no_arguments_runs_a_short_synthetic_training(tmp_path):
    rc, job_id, out = _sbatch(tmp_path, "train.sbatch", "-n", "2")
    assert rc == 0, out
    assert "ranks 2 x threads 1" in out and "finished" in out, out
    records = [json.loads(line) for line in
               (tmp_path / f"metrics-{job_id}-0.jsonl").read_text().splitlines()]
    assert records[-1]["ranks"] == 2 and records[-1]["epoch"] == 1, records
    assert glob.glob(str(tmp_path / f"ckpt-{job_id}" / "*.h5")), os.listdir(tmp_path)


def test_scaling_sbatch_two_points_on_two_nodes(tmp_path, slurm):
    rc, _, out = _sbatch(tmp_path, "scaling.sbatch", "-N", "2", "--ntasks-per-node=1",
                         HPCNN_SCALING_NODES="1 2", HPCNN_SCALING_BATCHES="16",
                         HPCNN_SCALING_NETS="lenet5", HPCNN_SCALING_STEPS="2",
                         HPCNN_SCALING_WARMUP="1", HPCNN_SCALING_CSV="points.csv")
    assert rc == 0, out
    assert "2 of 2 point(s) done" in out, out
    with open(tmp_path / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["ranks"]) for r in rows] == [1, 2], rows
    if slurm:  # slurmd in emulated nodes: the 2-node point's ranks ran on 2 hosts
        assert [int(r["nodes"]) for r in rows] == [1, 2], rows
    for r in rows:
        assert r["net"] == "lenet5" and r["parallel"] == "data" and r["link"] == "slurm", r
        assert int(r["batch_per_rank"]) == 16 and float(r["images_per_s"]) > 0, r
