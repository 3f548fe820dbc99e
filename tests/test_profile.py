"""The op-level profiler: self/total accounting, the report, the trace, and train --profile."""

import json
import os
import shutil
import sys
import time

import pytest

from hpcnn import profile
from tests.test_train import SMALL, train


@pytest.fixture
def prof():
    profile.enable()
    yield profile
    profile.disable()
    profile.reset()


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_disabled_records_nothing():
    profile.reset()
    assert not profile.enabled()
    with profile.region("conv", "conv1"):
        spin(0.001)
    assert profile.stats()["by_kind"] == {}


def test_self_and_total_time_of_nested_regions(prof):
    with prof.region("conv", "conv1"):
        spin(0.02)
        with prof.region("gemm"):  # inherits the layer
            spin(0.03)
        with prof.region("conv"):  # same kind nested: total counted once
            spin(0.01)
    s = prof.stats()
    conv, gemm = s["by_kind"]["conv"], s["by_kind"]["gemm"]
    assert conv["calls"] == 2 and gemm["calls"] == 1
    assert gemm["self_s"] == pytest.approx(gemm["total_s"]) and gemm["self_s"] >= 0.03
    assert 0.03 <= conv["self_s"] < 0.045  # 20 ms + 10 ms outside the gemm
    assert conv["total_s"] >= 0.06 and conv["total_s"] < conv["self_s"] + gemm["self_s"] + 0.01
    layer = s["by_layer"]["conv1"]
    assert layer["self_s"] == pytest.approx(conv["self_s"] + gemm["self_s"])
    assert sum(r["self_pct"] for r in s["by_kind"].values()) == pytest.approx(100.0)
    text = prof.report()
    assert "by kind" in text and "by layer" in text and "conv1" in text


def test_trace_is_chrome_trace_json(prof, tmp_path):
    with prof.region("data"):
        spin(0.001)
    t0 = time.perf_counter_ns()
    prof.record("lowering", t0, t0 + 1000, layer="conv2", worker=1)
    path = tmp_path / "t.json"
    prof.write_trace(str(path), rank=3)
    events = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["cat"] for e in spans} == {"data", "lowering"}
    assert all(e["pid"] == 3 and e["dur"] >= 0 for e in spans)
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"main", "numba worker 1"}


def test_train_profile_table_and_trace(tmp_path):
    trace = tmp_path / "trace.json"
    r = train("--net", "lenet5", *SMALL, "--epochs", "1", "--batch-size", "32", "--max-steps",
              "3", "--profile", "--trace", str(trace))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    table = out[out.index("by kind"):]
    for kind in ("conv", "pooling", "activation", "loss", "optimizer", "data", "gemm"):
        assert f"\n{kind} " in table
    for layer in ("conv1 fwd", "conv2 bwd", "ip1 fwd", "pool1 bwd"):
        assert layer in table
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("cat") == "conv" for e in events)


def test_unwritable_trace_path_fails_early():
    r = train("--net", "mlp", *SMALL, "--trace", "/nonexistent/dir/t.json")
    assert r.returncode == 2 and "/nonexistent/dir/t.json" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
MPIEXEC = MPIEXEC if os.path.exists(MPIEXEC) else shutil.which("mpiexec")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_trace_of_two_ranks_has_a_process_per_rank(tmp_path):
    trace = tmp_path / "trace.json"
    r = train("--net", "mlp", *SMALL, "--epochs", "1", "--batch-size", "32", "--max-steps",
              "3", "--trace", str(trace), launcher=(MPIEXEC, "-n", "2"))
    assert r.returncode == 0, r.stderr
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["pid"] for e in events} == {0, 1}
    assert {e["cat"] for e in events if e["ph"] == "X" and e["pid"] == 1} >= {
        "allreduce_wait", "gemm", "optimizer"}
