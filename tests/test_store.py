"""The HDF5 dataset store: prepare, the same normalised arrays as the original readers, training
from it gives the same numbers, describe, corruption detected, prefetching batches.

Every fixture file is written here in the official formats (small CIFAR-10 batches with
``cifar.RECORDS`` lowered, as in tests/test_data.py; MNIST IDX files with their own MD5s).
"""

import gzip
import hashlib
import re

import h5py
import numpy as np
import pytest

from hpcnn import checkpoint as ckpt
from hpcnn.data import cifar, load_dataset, registry, write_cifar_batch, write_idx
from hpcnn.data.__main__ import main as data_main
from hpcnn.data.batches import EpochBatches
from hpcnn.data.idx import Checksum
from hpcnn.data.store import StoreReadError, open_store, prepare_store
from hpcnn.errors import DataError
from hpcnn.train import parse_args, run

RECORDS = 12


@pytest.fixture
def cifar_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "RECORDS", RECORDS)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(4)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        write_cifar_batch(folder / name,
                          rng.integers(0, 256, (RECORDS, 3, 32, 32), dtype=np.uint8),
                          rng.integers(0, 10, RECORDS))
    (folder / cifar.META_FILE).write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    return folder


@pytest.fixture
def cifar_store(cifar_dir, tmp_path):
    return prepare_store("cifar10", tmp_path / "c.h5", cifar_dir, log=lambda m: None)


def test_store_gives_the_readers_arrays_cifar10(cifar_dir, cifar_store):
    ref = load_dataset("cifar10", cifar_dir)
    st = open_store(cifar_store)
    assert st.name == "cifar10" and st.classes == [f"k{i}" for i in range(10)]
    assert st.input_shape == (3, 32, 32) and len(st.x_train) == 5 * RECORDS
    np.testing.assert_array_equal(st.mean, ref.mean)
    np.testing.assert_array_equal(st.y_train, ref.y_train)
    np.testing.assert_array_equal(st.y_test, ref.y_test)
    np.testing.assert_array_equal(st.x_train[0:len(st.x_train)], ref.x_train)  # bitwise
    np.testing.assert_array_equal(st.x_test[3:11], ref.x_test[3:11])
    idx = np.array([0, 1, 2, 9, 10, 31, 59])  # increasing, across chunks, runs and singles
    got = st.x_train[idx]
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, ref.x_train[idx])
    with h5py.File(cifar_store) as f:
        assert f["train/images"].dtype == np.uint8 and f["train/images"].chunks[0] < RECORDS * 5
        assert f["train/images"].fletcher32 and f["train/labels"].fletcher32
        assert f["mean"].fletcher32
    st.close()


def test_store_gives_the_readers_arrays_mnist(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(2)
    table = {}
    for img, lab in registry.IDX_FILES.values():
        write_idx(folder / f"{img}.gz", rng.integers(0, 256, (15, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{lab}.gz", (np.arange(15) % 10).astype(np.uint8))
        for stem in (img, lab):
            b = (folder / f"{stem}.gz").read_bytes()
            table[stem] = Checksum(hashlib.md5(b).hexdigest(),
                                   hashlib.md5(gzip.decompress(b)).hexdigest())
    monkeypatch.setitem(registry.OFFICIAL_MD5, "mnist", table)
    path = prepare_store("mnist", tmp_path / "m.h5", folder, log=lambda m: None)
    ref, st = load_dataset("mnist", folder), open_store(path)
    assert st.mean is None and st.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(st.x_train[0:15], ref.x_train)
    np.testing.assert_array_equal(st.x_test[np.arange(0, 15, 2)], ref.x_test[::2])
    st.close()


def test_training_from_store_equals_training_from_files(cifar_dir, cifar_store, tmp_path):
    from mpi4py import MPI

    base = ["--net", "mlp", "--hidden", "16", "--batch-size", "12", "--epochs", "2",
            "--threads", "1", "--log-interval", "100"]
    runs = {}
    for label, ds in (("files", ["--dataset", "cifar10", "--data-dir", str(cifar_dir)]),
                      ("store", ["--dataset", f"h5:{cifar_store}"]),
                      ("store-no-prefetch", ["--dataset", f"h5:{cifar_store}", "--prefetch", "0"])):
        d = tmp_path / label
        s = run(parse_args([*base, *ds, "--checkpoint-dir", str(d)]), MPI.COMM_WORLD, 1)
        arrays = ckpt.read_checkpoint(ckpt.list_checkpoints(d)[0])[0]
        runs[label] = (s, np.concatenate([arrays[k].ravel() for k in sorted(arrays)]))
    ref_s, ref_p = runs["files"]
    for label in ("store", "store-no-prefetch"):
        s, p = runs[label]
        assert s["train_loss"] == ref_s["train_loss"], label
        assert s["test_accuracy"] == ref_s["test_accuracy"], label
        np.testing.assert_array_equal(p, ref_p)


def test_describe_store(cifar_store, capsys):
    assert data_main(["describe", f"h5:{cifar_store}"]) == 0
    out = capsys.readouterr().out
    assert "HDF5 store" in out and "3x32x32" in out
    assert re.search(rf"^total\s+{5 * RECORDS}\s+{RECORDS}$", out, re.M)
    assert "/255 minus train per-pixel mean" in out
    assert "ok  /train/images: MD5" in out and "BAD" not in out
    assert "data_batch_1.bin: MD5" in out and "matches" in out


def test_describe_reports_changed_source_and_cli_prepare(cifar_dir, tmp_path, capsys):
    out_path = tmp_path / "cli.h5"
    assert data_main(["prepare", "--dataset", "cifar10", "--data-dir", str(cifar_dir),
                      "--out", str(out_path)]) == 0
    assert out_path.is_file() and not list(tmp_path.glob(".*.tmp"))
    with open(cifar_dir / cifar.TEST_FILES[0], "r+b") as f:  # the original changes afterwards
        f.seek(5)
        f.write(b"\x01\x02")
    capsys.readouterr()
    data_main(["describe", f"h5:{out_path}"])
    out = capsys.readouterr().out
    assert "test_batch.bin: MD5" in out and "differs" in out


def test_corrupt_chunk_is_detected_on_read(cifar_store):
    with h5py.File(cifar_store) as f:
        info = f["train/images"].id.get_chunk_info(1)
    with open(cifar_store, "r+b") as f:
        f.seek(info.byte_offset + 100)
        f.write(b"\x00\xff\x00\xff")
    st = open_store(cifar_store)  # the structure is fine
    st.x_train[0:1]  # chunk 0 is intact
    # a DataError that is RankLocalError too: mid-training, one rank's failed read must end
    # the whole job
    with pytest.raises(StoreReadError, match=f"^{cifar_store}: cannot read /train/images"):
        st.x_train[np.arange(len(st.x_train))]
    st.close()
    assert data_main(["describe", f"h5:{cifar_store}"]) == 2


def test_store_errors_name_the_file(tmp_path, cifar_store):
    with pytest.raises(DataError, match="no such HDF5 store"):
        open_store(tmp_path / "none.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="not an hpcnn dataset store"):
        open_store(tmp_path / "other.h5")
    with h5py.File(cifar_store, "r+") as f:
        del f["test/labels"]
    with pytest.raises(DataError, match=f"^{cifar_store}: /test/labels is missing"):
        open_store(cifar_store)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_epoch_batches_prefetch_matches_direct_gather(prefetch):
    x = np.arange(40 * 2, dtype=np.float32).reshape(40, 2)
    y = np.arange(40)
    order = np.random.default_rng(0).permutation(40)
    got = list(EpochBatches(x, y, order, 8, 4, 1, 1, 5, prefetch))
    assert len(got) == 4
    for i, (xb, yb) in zip(range(1, 5), got):
        want = np.sort(order[i * 8 + 4:i * 8 + 8])
        np.testing.assert_array_equal(yb, want)
        np.testing.assert_array_equal(xb, x[want])
    early = EpochBatches(x, y, order, 8, 4, 0, 0, 5, prefetch)
    next(early)
    early.close()  # leaving an epoch early stops the reader


def test_prefetch_error_reaches_the_consumer():
    class Broken:
        def __getitem__(self, key):
            raise DataError("store.h5: cannot read")

    it = EpochBatches(Broken(), np.arange(8), np.arange(8), 4, 4, 0, 0, 2, prefetch=2)
    with pytest.raises(DataError, match="store.h5"):
        next(it)
