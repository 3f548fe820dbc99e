"""Checkpoints across ranks, in-process on COMM_WORLD (mpiexec -n 2 python -m pytest --with-mpi).

Bitwise-exact resume with the same ranks (gradient averaging, and parameter averaging with a
checkpoint between two averages), resume on another rank count, and a stop signal seen by one
rank stopping every rank at the same step.
"""

import os
import signal

import numpy as np
import pytest

from hpcnn import checkpoint as ckpt
from hpcnn import control
from hpcnn.control import EXIT_STOPPED
from hpcnn.errors import UsageError
from hpcnn.train import parse_args, run

SMALL = ["--net", "mlp", "--hidden", "32", "--dataset", "synthetic", "--synthetic-train", "128",
         "--synthetic-test", "32", "--batch-size", "16", "--log-interval", "100"]


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def newest(directory):
    return ckpt.read_checkpoint(ckpt.list_checkpoints(directory)[0])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("extra", [[], ["--sync", "average", "--average-every", "3"]])
def test_resume_is_bitwise_exact_on_the_same_ranks(rank0_dir, extra):
    comm = world()
    a, b = f"{rank0_dir}/a", f"{rank0_dir}/b"
    # Checkpoints do not change the trajectory: run A's step-5 checkpoint (between two averages
    # with --average-every 3) stands for a run killed after step 5.
    run(parse_args([*SMALL, *extra, "--epochs", "2", "--checkpoint-dir", a,
                    "--checkpoint-every", "5", "--keep", "5"]), comm, 1)
    s = run(parse_args([*SMALL, *extra, "--epochs", "2", "--checkpoint-dir", b,
                        "--resume", f"{a}/{ckpt.checkpoint_name(5)}"]), comm, 1)
    assert s["step"] == 16
    if comm.Get_rank() == 0:
        (pa, _), (pb, mb) = newest(a), newest(b)
        rows = comm.Get_size() if extra else 1  # averaging keeps every rank's parameters
        assert mb["rows"] == rows and mb["ranks"] == comm.Get_size()
        assert sorted(pa) == sorted(pb)
        for k in pa:
            assert pa[k].shape == ((rows, *mb["arrays"][k]) if rows > 1
                                   else tuple(mb["arrays"][k]))
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


@pytest.mark.mpi(min_size=2)
def test_resume_on_another_rank_count_continues(rank0_dir):
    """A checkpoint of a 1-rank run resumed on all ranks: the loss carries on."""
    from mpi4py import MPI

    comm = world()
    one, straight = f"{rank0_dir}/one", f"{rank0_dir}/straight"
    if comm.Get_rank() == 0:
        run(parse_args([*SMALL, "--epochs", "3", "--checkpoint-dir", one, "--max-steps", "8"]),
            MPI.COMM_SELF, 1)
        ref = run(parse_args([*SMALL, "--epochs", "3", "--checkpoint-dir", straight]),
                  MPI.COMM_SELF, 1)
    comm.Barrier()
    s = run(parse_args([*SMALL, "--epochs", "3", "--checkpoint-dir", one, "--resume", "auto"]),
            comm, 1)
    assert s["step"] == 24
    if comm.Get_rank() == 0:
        # same global batches, only the summation order differs: close, not bitwise
        assert s["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
        p1, p2 = newest(one)[0], newest(straight)[0]
        for k in p1:
            np.testing.assert_allclose(p1[k], p2[k], rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.mpi(min_size=2)
def test_signal_on_one_rank_stops_every_rank_at_the_same_step(rank0_dir, monkeypatch):
    comm = world()
    original = control.TrainingControl.after_step

    def after_step(self, step, *a):
        if step == 3 and self.rank == comm.Get_size() - 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm's --signal would, to one rank
        return original(self, step, *a)

    monkeypatch.setattr(control.TrainingControl, "after_step", after_step)
    s = run(parse_args([*SMALL, "--epochs", "50", "--checkpoint-dir", rank0_dir]), comm, 1)
    assert s["step"] == 3 and s["stopped"] == "SIGUSR1" and s["exit_status"] == EXIT_STOPPED
    assert comm.allgather(s["step"]) == [3] * comm.Get_size()
    if comm.Get_rank() == 0:
        assert [p.name for p in ckpt.list_checkpoints(rank0_dir)] == ["ckpt-000000003.h5"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers given back


@pytest.mark.mpi(min_size=2)
def test_batch_smaller_than_ranks_fails_alike(rank0_dir):
    args = parse_args([*SMALL, "--batch-size", "1", "--checkpoint-dir", rank0_dir])
    with pytest.raises(UsageError, match="must be a multiple of the"):
        run(args, world(), 1)


@pytest.mark.mpi(min_size=2)
def test_training_from_a_store_equals_the_files_on_all_ranks(rank0_dir, monkeypatch):
    """Each rank reads its own rows from the HDF5 store; the numbers are the in-memory ones."""
    from pathlib import Path

    from hpcnn.data import cifar, write_cifar_batch
    from hpcnn.data.store import StoreImages, prepare_store

    comm = world()
    monkeypatch.setattr(cifar, "RECORDS", 8)
    folder, store = Path(rank0_dir) / "c10", Path(rank0_dir) / "c.h5"
    if comm.Get_rank() == 0:
        folder.mkdir()
        rng = np.random.default_rng(9)
        for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
            write_cifar_batch(folder / name, rng.integers(0, 256, (8, 3, 32, 32), np.uint8),
                              rng.integers(0, 10, 8))
        prepare_store("cifar10", store, folder, log=lambda m: None)
    comm.Barrier()
    rows_read = []
    original = StoreImages._read

    def counting_read(self, key):
        out = original(self, key)
        if self._d.name == "/train/images" and not isinstance(key, slice):
            rows_read.append(len(out))
        return out

    monkeypatch.setattr(StoreImages, "_read", counting_read)
    base = ["--net", "mlp", "--hidden", "16", "--batch-size", "8", "--epochs", "2",
            "--log-interval", "100"]
    a = run(parse_args([*base, "--dataset", "cifar10", "--data-dir", str(folder)]), comm, 1)
    b = run(parse_args([*base, "--dataset", f"h5:{store}"]), comm, 1)
    assert (a["train_loss"], a["test_accuracy"]) == (b["train_loss"], b["test_accuracy"])
    # every training read is this rank's share of one global batch
    assert rows_read == [8 // comm.Get_size()] * b["step"]
