"""The training loop itself across ranks, in-process (``hpcnn.train.run`` on COMM_WORLD)."""

import json
import math

import pytest

from hpcnn.errors import DataError, UsageError
from hpcnn.nn.nets import NETS
from hpcnn.train import parse_args, run

SMALL = ["--net", "mlp", "--dataset", "synthetic", "--synthetic-train", "256",
         "--synthetic-test", "64", "--log-interval", "100"]


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.mark.mpi(min_size=2)
def test_weak_scaling_lr_rules_and_timing_records(rank0_dir):
    comm = world()
    size = comm.Get_size()
    m = f"{rank0_dir}/m.jsonl"
    args = parse_args([*SMALL, "--batch-per-rank", "16", "--epochs", "2", "--lr-scaling",
                       "linear", "--warmup-epochs", "1", "--bucket-mb", "0.01",
                       "--metrics", m])
    summary = run(args, comm, 1)
    assert summary["batch_size"] == 16 * size and summary["batch_per_rank"] == 16
    assert summary["step"] == 2 * (256 // (16 * size))
    if comm.Get_rank() == 0:
        recs = [json.loads(line) for line in open(m)]
        assert [r["epoch"] for r in recs] == [1, 2, 2]
        for r in recs[:2]:
            t = r["timing"]
            for key in ("compute_s", "allreduce_wait_s", "data_s"):
                assert 0 <= t[key]["min"] <= t[key]["mean"] <= t[key]["max"]
            assert t["compute_s"]["min"] > 0
        # linear scaling: reference lr x (16 N) / reference batch, reached after the warm-up
        ref = NETS["mlp"][1]
        last = summary["step"] - 1  # the epoch record's lr is its last step's
        expected = ref.lr * 16 * size / ref.batch_size * (1 + 1e-4 * last) ** -0.75
        assert recs[1]["lr"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [["--no-overlap"], ["--sync", "average", "--average-every",
                                                       "3", "--average-optimizer-state"]])
def test_sync_variants_train(extra):
    comm = world()
    args = parse_args([*SMALL, "--batch-size", "32", "--epochs", "1", *extra])
    summary = run(args, comm, 1)
    assert summary["step"] == 8 and math.isfinite(summary["train_loss"])
    assert summary["train_loss"] < 2.5  # 10 classes: ln 10 = 2.30 at the start


@pytest.mark.mpi(min_size=2)
def test_indivisible_batch_fails_alike_on_every_rank():
    comm = world()
    args = parse_args([*SMALL, "--batch-size", str(2 * comm.Get_size() + 1)])
    with pytest.raises(UsageError, match="must be a multiple of the"):
        run(args, comm, 1)


@pytest.mark.mpi(min_size=2)
def test_data_failure_on_one_rank_fails_every_rank(monkeypatch):
    comm = world()
    monkeypatch.setenv("HPCNN_FAULT_DATA_RANK", "1")
    args = parse_args([*SMALL, "--batch-size", "32"])
    with pytest.raises(DataError, match="^rank 1: cannot read the dataset"):
        run(args, comm, 1)
