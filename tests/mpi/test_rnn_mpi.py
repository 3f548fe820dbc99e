"""The RNN under data parallelism: N ranks, each with its block of the B streams, give the serial
parameters, hidden states and held-out perplexity; bad input fails on every rank alike."""

import os
import tempfile
from functools import partial

import numpy as np
import pytest

from hpcnn.data.text import load_text
from hpcnn.errors import UsageError
from hpcnn.nn.loss import SequenceCrossEntropy
from hpcnn.nn.rnn import build_rnn
from hpcnn.optim import SGD
from hpcnn.parallel import DataParallel, ParamAveraging

TEXT = ("Sing, O goddess, the anger of Achilles son of Peleus, that brought countless ills "
        "upon the Achaeans. ") * 30
B, T, H, STEPS = 4, 9, 11, 6


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture(scope="module")
def ds():
    comm = world()
    path = None
    if comm.Get_rank() == 0:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(TEXT)
        path = f.name
    path = comm.bcast(path)
    data = load_text(path, T)
    comm.Barrier()
    if comm.Get_rank() == 0:
        os.unlink(path)
    return data


def train(ds, comm, cls=DataParallel, **opts):
    size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
    model = build_rnn(ds.num_classes, H, T, seed=3)
    st = cls(comm, model, partial(SGD, lr=0.1, momentum=0.9), loss=SequenceCrossEntropy(),
             **opts)
    per = B // size
    states = []
    for x, y in ds.epoch_batches(B, per, rank, 0, STEPS, H):
        st.step(x, y, 0.1)
        states = x.state
    return model.flat_params.copy(), states.copy(), st


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["grad", "grad-small-buckets", "average-k1"])
def test_n_ranks_equal_serial(ds, mode):
    comm = world()
    size, rank = comm.Get_size(), comm.Get_rank()
    if B % size:
        pytest.skip(f"{B} streams do not split over {size} ranks")
    opts = {"grad": {}, "grad-small-buckets": {"bucket_mb": 0.0005},
            "average-k1": {"every": 1}}[mode]
    cls = ParamAveraging if mode.startswith("average") else DataParallel
    params, state, st = train(ds, comm, cls, **opts)
    ref_params, ref_state, ref = train(ds, None)
    if mode == "grad-small-buckets":
        assert len(st.buckets) >= 3
    np.testing.assert_allclose(params, ref_params, rtol=1e-5, atol=1e-6)
    per = B // size
    # this rank's streams' carried hidden states are the serial run's rows
    np.testing.assert_allclose(state, ref_state[rank * per:(rank + 1) * per], atol=1e-5)
    gathered = np.empty((size, params.size), np.float32)
    comm.Allgather(params, gathered)
    assert (gathered == gathered[0]).all()
    ppl, acc, loss = ds.evaluate(st, comm, B, H)
    ref_ppl, ref_acc, ref_loss = ds.evaluate(ref, None, B, H)
    assert ppl == pytest.approx(ref_ppl, rel=1e-5) and acc == pytest.approx(ref_acc)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("argv,message", [
    (["--bptt", "0"], "--bptt (the window T) must be from 1"),
    (["--parallel", "hybrid"], "--net rnn trains with --parallel data"),
])
def test_bad_window_or_strategy_fails_on_every_rank(argv, message):
    from hpcnn.train import parse_args, run

    args = parse_args(["--net", "rnn", "--dataset", "text", "--text", "unused.txt", *argv])
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(args, world(), 1)


@pytest.mark.mpi(min_size=2)
def test_unreadable_text_fails_on_every_rank(rank0_dir):
    from hpcnn.errors import DataError
    from hpcnn.train import parse_args, run

    path = os.path.join(rank0_dir, "latin1.txt")
    if world().Get_rank() == 0:
        with open(path, "wb") as f:
            f.write("na\u00efve".encode("latin-1") * 50)
    world().Barrier()
    args = parse_args(["--net", "rnn", "--dataset", "text", "--text", path,
                       "--log-interval", "100"])
    with pytest.raises(DataError, match="not UTF-8 text"):
        run(args, world(), 1)


@pytest.mark.mpi(min_size=2)
def test_sample_reads_a_checkpoint_of_per_rank_parameters(rank0_dir):
    """--sync average leaves ranks with different parameters between averages; the checkpoint
    keeps a row per rank and hpcnn.sample takes their mean."""
    from hpcnn.sample import load_model
    from hpcnn.train import parse_args, run

    comm = world()
    path = os.path.join(rank0_dir, "t.txt")
    if comm.Get_rank() == 0:
        with open(path, "w") as f:
            f.write(TEXT)
    comm.Barrier()
    ck = os.path.join(rank0_dir, "ck")
    args = parse_args(["--net", "rnn", "--dataset", "text", "--text", path, "--hidden", "8",
                       "--bptt", "5", "--batch-size", "4", "--max-steps", "4", "--sync",
                       "average", "--average-every", "3", "--checkpoint-dir", ck,
                       "--log-interval", "100"])
    summary = run(args, comm, 1)
    if comm.Get_rank() == 0:
        import h5py

        with h5py.File(summary["checkpoint"]) as f:
            assert f["param/rnn.w_hh"].shape == (comm.Get_size(), 8, 8)
            mean = f["param/rnn.w_hh"][...].mean(axis=0)
        model, vocab = load_model(summary["checkpoint"])
        assert vocab == "".join(sorted(set(TEXT)))
        np.testing.assert_allclose(model.layers[0].w_hh.data, mean, rtol=1e-6)
