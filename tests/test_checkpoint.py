"""Checkpoints and restarts: exact resume, atomic writes under kill -9, signals, early stopping,
divergence, and a table of bad inputs that must each give one line and exit status 2.

Most runs are in-process (``hpcnn.train.run`` / ``main`` on one rank); the kill -9 and SIGTERM
tests launch ``python -m hpcnn.train`` (under ``mpiexec -n 2`` for SIGTERM) as subprocesses.
"""

import gzip
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcnn import checkpoint as ckpt
from hpcnn.control import EXIT_STOPPED, Diverged
from hpcnn.data import cifar, registry, write_cifar_batch, write_idx
from hpcnn.data.idx import Checksum
from hpcnn.data.store import prepare_store
from hpcnn.train import main, parse_args, run

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--net", "mlp", "--hidden", "32", "--dataset", "synthetic", "--synthetic-train", "128",
         "--synthetic-test", "32", "--batch-size", "16", "--threads", "1",
         "--log-interval", "100"]


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def train_inproc(*argv):
    return run(parse_args([*SMALL, *argv]), world(), 1)


def final_arrays(directory):
    arrays, meta = ckpt.read_checkpoint(ckpt.list_checkpoints(directory)[0])
    return arrays, meta


def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("HPCNN_DATA", ckpt.PAUSE_ENV):
        e.pop(k, None)
    return e


# --- exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--net", "lenet5", "--synthetic-shape", "1,16,16"]])
def test_resume_is_bitwise_exact(tmp_path, extra):
    """N steps straight == k steps, then resume for the rest (parameters and momentum)."""
    a, b = tmp_path / "a", tmp_path / "b"
    train_inproc(*extra, "--epochs", "2", "--checkpoint-dir", str(a))
    first = train_inproc(*extra, "--epochs", "2", "--checkpoint-dir", str(b), "--max-steps", "5")
    assert first["step"] == 5
    second = train_inproc(*extra, "--epochs", "2", "--checkpoint-dir", str(b), "--resume", "auto")
    assert second["step"] == 16
    (pa, ma), (pb, mb) = final_arrays(a), final_arrays(b)
    assert ma["step"] == mb["step"] == 16
    assert_same_arrays(pa, pb)


def assert_same_arrays(a, b):
    """The same named arrays, bitwise (parameters and momentum)."""
    assert sorted(a) == sorted(b) and any(k.startswith("momentum/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_checkpoint_content_and_keep(tmp_path):
    train_inproc("--epochs", "1", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "2",
                 "--keep", "2", "--seed", "3")
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["ckpt-000000008.h5", "ckpt-000000006.h5"]
    arrays, meta = ckpt.read_checkpoint(tmp_path / names[0])
    assert sum(a.size for k, a in arrays.items() if k.startswith("param/")) == \
        meta["num_params"]
    for k in arrays:
        _, name = k.split("/")
        assert arrays[f"momentum/{name}"].shape == arrays[f"param/{name}"].shape == \
            tuple(meta["arrays"][k])
    assert meta["rows"] == 1 and sorted(meta["arrays"]) == sorted(arrays)
    assert (meta["step"], meta["epoch"], meta["index"]) == (8, 2, 0)  # epoch 1 complete
    assert meta["net"] == "mlp" and meta["ranks"] == 1 and meta["sync"] == "grad"
    assert meta["config"]["seed"] == 3 and meta["lr_schedule"]["policy"] == "inv"
    assert meta["data_order"]["seed"] == 3 and "numpy_global" in meta["rng"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_checkpoint_minutes_writes_by_time(tmp_path):
    train_inproc("--epochs", "1", "--checkpoint-dir", str(tmp_path), "--checkpoint-minutes",
                 "1e-9", "--keep", "100")
    assert len(ckpt.list_checkpoints(tmp_path)) == 8  # due after every step


def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path, capsys):
    train_inproc("--epochs", "1", "--checkpoint-dir", str(tmp_path), "--checkpoint-every", "2")
    newest = ckpt.list_checkpoints(tmp_path)[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\xff" * 64  # flip bytes inside the params
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    s = train_inproc("--epochs", "2", "--checkpoint-dir", str(tmp_path), "--resume", "auto")
    out, err = capsys.readouterr()
    assert f"warning: skipping {newest}: checksum mismatch" in err
    assert "resumed from" in out and "ckpt-000000006.h5: step 6" in out
    assert s["step"] == 16


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path, capsys):
    s = train_inproc("--epochs", "1", "--checkpoint-dir", str(tmp_path), "--resume", "auto")
    assert s["step"] == 8 and "starting from scratch" in capsys.readouterr().out


# --- kill -9 in the middle of a checkpoint write ---------------------------------------------


def test_kill_9_during_checkpoint_write_keeps_previous(tmp_path):
    d = tmp_path / "ck"
    cmd = [sys.executable, "-m", "hpcnn.train", *SMALL, "--epochs", "2", "--checkpoint-dir",
           str(d), "--checkpoint-every", "2"]
    p = subprocess.Popen(cmd, env=dict(env(), **{ckpt.PAUSE_ENV: "4"}), cwd=ROOT, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = p.stderr.readline()
        assert "test hook: paused before renaming" in line, line + p.stderr.read()
        p.kill()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [x.name for x in ckpt.list_checkpoints(d)] == ["ckpt-000000002.h5"]
    assert list(d.glob(".ckpt-*.tmp"))  # the half-done write is there, and ignored
    ckpt.read_checkpoint(d / "ckpt-000000002.h5")
    # resuming from the survivor ends exactly where a run without the kill does
    resumed = train_inproc("--epochs", "2", "--checkpoint-dir", str(d), "--resume", "auto")
    assert resumed["step"] == 16 and not list(d.glob(".ckpt-*.tmp"))
    train_inproc("--epochs", "2", "--checkpoint-dir", str(tmp_path / "straight"))
    assert_same_arrays(final_arrays(d)[0], final_arrays(tmp_path / "straight")[0])


# --- signals ---------------------------------------------------------------------------------


@pytest.mark.skipif(find_mpiexec() is None, reason="no mpiexec")
def test_sigterm_under_mpiexec_checkpoints_and_exits_75(tmp_path):
    d = tmp_path / "ck"
    base = [find_mpiexec(), "-n", "2", sys.executable, "-m", "hpcnn.train", *SMALL,
            "--checkpoint-dir", str(d)]
    p = subprocess.Popen([*base, "--epochs", "100000"], env=env(), cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "epoch 1 done" not in out and time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line and p.poll() is not None:
                break
            out += line
        assert "epoch 1 done" in out, out + p.stderr.read()
        p.send_signal(signal.SIGTERM)  # mpiexec forwards it to both ranks
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_STOPPED, (rest, err)
    assert "stopped by SIGTERM after step" in rest and "Traceback" not in err
    (path,) = ckpt.list_checkpoints(d)
    arrays, meta = ckpt.read_checkpoint(path)
    assert meta["ranks"] == 2 and meta["step"] >= 8
    # the requeued job: same command with --resume auto, here told to stop 3 steps later
    r = subprocess.run([*base, "--epochs", "100000", "--resume", "auto", "--max-steps",
                        str(meta["step"] + 3)], env=env(), cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {path}: step {meta['step']}" in r.stdout
    assert f"finished: {meta['step'] + 3} steps" in r.stdout


# --- training control ------------------------------------------------------------------------


def test_non_finite_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path, capsys):
    with pytest.raises(Diverged, match=r"non-finite loss at step \d+ .*last good checkpoint"):
        train_inproc("--epochs", "5", "--lr", "1e12", "--checkpoint-dir", str(tmp_path),
                     "--checkpoint-every", "1")
    kept = ckpt.list_checkpoints(tmp_path)
    assert kept
    arrays, _ = ckpt.read_checkpoint(kept[0])
    assert all(np.isfinite(a).all() for a in arrays.values())
    assert Diverged.exit_status == 3
    assert main([*SMALL, "--epochs", "5", "--lr", "1e12"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: training diverged: non-finite loss at step")


def test_early_stop_keeps_best_model(tmp_path, capsys):
    # A learning rate too small to change anything: no evaluation beats the first.
    s = train_inproc("--epochs", "10", "--lr", "1e-12", "--checkpoint-dir", str(tmp_path),
                     "--early-stop", "2")
    assert s["early_stopped"] and s["epoch"] == 3 and s["best_epoch"] == 1
    arrays, meta = ckpt.read_checkpoint(tmp_path / ckpt.BEST)
    assert meta["epoch"] == 2 and meta["step"] == 8  # saved after epoch 1's evaluation
    assert "early stop: 2 evaluations without improvement" in capsys.readouterr().out
    # resuming a run that stopped early has nothing left to do
    again = train_inproc("--epochs", "10", "--lr", "1e-12", "--checkpoint-dir", str(tmp_path),
                         "--early-stop", "2", "--resume", "auto")
    assert again["step"] == 24


# --- bad inputs: one line on stderr, exit status 2, nothing lost on disk ----------------------


def _idx_set(folder, magic_images=True, truncate=False, bad_label=False, n=20):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for img, lab in registry.IDX_FILES.values():
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        if bad_label:
            y[3] = 10
        write_idx(folder / f"{img}.gz", x if magic_images else y)
        write_idx(folder / f"{lab}.gz", y)
        if truncate:
            raw = gzip.decompress((folder / f"{img}.gz").read_bytes())
            (folder / f"{img}.gz").write_bytes(gzip.compress(raw[:-100]))


def _own_md5s(folder):
    table = {}
    for pair in registry.IDX_FILES.values():
        for stem in pair:
            stored = (folder / f"{stem}.gz").read_bytes()
            table[stem] = Checksum(hashlib.md5(stored).hexdigest(),
                                   hashlib.md5(gzip.decompress(stored)).hexdigest())
    return table


def _cifar_set(folder, records, wrong_size=False, bad_label=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        y = rng.integers(0, 10, records)
        if bad_label:
            y[2] = 11
        write_cifar_batch(folder / name, rng.integers(0, 256, (records, 3, 32, 32),
                                                      dtype=np.uint8), y)
    if wrong_size:
        with open(folder / cifar.TRAIN_FILES[2], "ab") as f:
            f.write(b"\0" * 7)


def _store(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "RECORDS", 4)
    _cifar_set(tmp_path / "c10", 4)
    return prepare_store("cifar10", tmp_path / "c.h5", tmp_path / "c10", log=lambda m: None)


def _case(name, tmp_path, monkeypatch):
    """(extra argv, text the error line must contain) for one bad input, files written here."""
    t = tmp_path
    if name == "missing data dir":
        return ["--dataset", "mnist", "--data-dir", str(t / "nope")], str(t / "nope")
    if name == "wrong IDX magic":
        _idx_set(t / "m", magic_images=False)
        return ["--dataset", "mnist", "--data-dir", str(t / "m")], "bad magic number"
    if name == "truncated IDX":
        _idx_set(t / "m", truncate=True)
        return ["--dataset", "mnist", "--data-dir", str(t / "m")], "truncated"
    if name == "MD5 mismatch":
        _idx_set(t / "m")
        return ["--dataset", "mnist", "--data-dir", str(t / "m")], "MD5 mismatch"
    if name == "IDX label out of range":
        _idx_set(t / "m", bad_label=True)
        monkeypatch.setitem(registry.OFFICIAL_MD5, "mnist", _own_md5s(t / "m"))
        return ["--dataset", "mnist", "--data-dir", str(t / "m")], "out of range 0-9"
    if name == "CIFAR file of wrong size":
        monkeypatch.setattr(cifar, "RECORDS", 4)
        _cifar_set(t / "c", 4, wrong_size=True)
        return ["--dataset", "cifar10", "--data-dir", str(t / "c")], "wrong size"
    if name == "CIFAR label out of range":
        monkeypatch.setattr(cifar, "RECORDS", 4)
        _cifar_set(t / "c", 4, bad_label=True)
        return ["--dataset", "cifar10", "--data-dir", str(t / "c")], "out of range 0-9"
    if name == "corrupt HDF5 store":
        path = _store(t, monkeypatch)
        data = bytearray(path.read_bytes())
        data[:8] = b"garbage!"  # the HDF5 signature
        path.write_bytes(bytes(data))
        return ["--dataset", f"h5:{path}"], str(path)
    if name == "truncated HDF5 store":
        path = _store(t, monkeypatch)
        path.write_bytes(path.read_bytes()[:5000])
        return ["--dataset", f"h5:{path}"], str(path)
    if name == "checkpoint of another net":
        train_inproc("--epochs", "1", "--max-steps", "1", "--checkpoint-dir", str(t / "ck"))
        path = ckpt.list_checkpoints(t / "ck")[0]
        return ["--net", "lenet5", "--resume", str(path)], f"{path}: checkpoint of net mlp"
    if name == "truncated checkpoint":
        train_inproc("--epochs", "1", "--max-steps", "1", "--checkpoint-dir", str(t / "ck"))
        path = ckpt.list_checkpoints(t / "ck")[0]
        path.write_bytes(path.read_bytes()[:3000])
        return ["--resume", str(path)], str(path)
    if name == "not a checkpoint":
        path = _store(t, monkeypatch)
        return ["--resume", str(path)], f"{path}: not an hpcnn checkpoint"
    if name == "missing checkpoint":
        return ["--resume", str(t / "no.h5")], f"{t / 'no.h5'}: checkpoint not found"
    if name == "unwritable checkpoint dir":
        (t / "file").write_text("x")
        return ["--checkpoint-dir", str(t / "file" / "ck")], "cannot write checkpoints in"
    if name == "checkpoint options without a dir":
        return ["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint-dir"
    if name == "zero batch":
        return ["--batch-size", "0"], "--batch-size"
    if name == "negative epochs":
        return ["--epochs", "-1"], "--epochs"
    if name == "zero lr":
        return ["--lr", "0"], "--lr"
    if name == "unknown net":
        return ["--net", "resnet"], "unknown net"
    if name == "unknown dataset":
        return ["--dataset", "imagenet"], "unknown dataset"
    if name == "unknown algo":
        return ["--algo", "magic"], "algo"
    raise AssertionError(name)


BAD_INPUTS = ["missing data dir", "wrong IDX magic", "truncated IDX", "MD5 mismatch",
              "IDX label out of range", "CIFAR file of wrong size", "CIFAR label out of range",
              "corrupt HDF5 store", "truncated HDF5 store", "checkpoint of another net",
              "truncated checkpoint", "not a checkpoint", "missing checkpoint",
              "unwritable checkpoint dir", "checkpoint options without a dir", "zero batch",
              "negative epochs", "zero lr", "unknown net", "unknown dataset", "unknown algo"]
# Elsewhere: batch smaller than (or not a multiple of) the ranks, tests/test_faults.py and
# tests/mpi/test_checkpoint_mpi.py; an unwritable metrics file, tests/test_train.py.


def _snapshot(root):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.md5(p.read_bytes())
                     .hexdigest()) for p in Path(root).rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_one_line_exit_2_nothing_lost(name, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HPCNN_DATA", raising=False)
    extra, needle = _case(name, tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main([*SMALL, "--epochs", "1", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert needle in err[0] and "Traceback" not in err[0]
    assert _snapshot(tmp_path) == before  # nothing written, changed or removed


# --- hostile checkpoints (issue 16): valid checksum, hostile content; and data loss ----------


def _rewrite(path, edit):
    """Apply ``edit(h5file, meta) -> meta``, then give the file a valid checksum again."""
    import json

    import h5py

    with h5py.File(path, "r+") as f:
        raw = f.attrs["meta"]
        meta = edit(f, json.loads(raw.decode() if isinstance(raw, bytes) else raw))
        meta_json = json.dumps(meta, sort_keys=True)
        fixed = f.attrs.get_id("meta").dtype.kind == "S"  # format 2: fixed-length strings

        def text(v):
            return np.bytes_(v.encode()) if fixed else v
        f.attrs["meta"] = text(meta_json)
        arrays = {}
        f.visititems(lambda n, o: arrays.__setitem__(n, o[...])
                     if isinstance(o, __import__("h5py").Dataset) and o.size < 10**6 else None)
        f.attrs["checksum"] = text(ckpt._checksum(arrays, meta_json))


def _meta(key, value):
    def edit(f, meta):
        meta[key] = value
        return meta
    return edit


def _add(make):
    def edit(f, meta):
        make(f)
        return meta
    return edit


HOSTILE = {
    "step is a string": (_meta("step", "abc"), "metadata 'step' must be an integer"),
    "negative step": (_meta("step", -5), "metadata 'step' must be an integer"),
    "negative epoch": (_meta("epoch", -1), "metadata 'epoch' must be an integer"),
    "boolean index": (_meta("index", True), "metadata 'index' must be an integer"),
    "infinite loss sum": (_meta("loss_sum", float("inf")), "'loss_sum' must be a finite"),
    "bad RNG state": (_meta("rng", {"numpy_global": ["MT19937", [1, 2], 0, 0, 0.0],
                                    "python_random": [3, [1], None]}), "malformed RNG state"),
    "early stop best is a string": (_meta("early_stop", {"best": "x"}), "early_stop.best"),
    "extra group": (_add(lambda f: f.create_group("extra").create_dataset(
        "x", data=np.zeros(3, np.float32))), "unexpected datasets ['extra/x']"),
    "external link": (_add(lambda f: f.__setitem__(
        "outside", __import__("h5py").ExternalLink("/etc/hostname", "/"))),
        "ExternalLink 'outside'"),
    "soft link": (_add(lambda f: f.__setitem__(
        "alias", __import__("h5py").SoftLink("/param/fc1.bias"))), "SoftLink 'alias'"),
    "float64 array": (_add(lambda f: (f.__delitem__("param/fc2.bias"), f.create_dataset(
        "param/fc2.bias", data=np.zeros(10)))), "dataset 'param/fc2.bias' is float64"),
    "1e9 elements declared": (_add(lambda f: (f.__delitem__("param/fc1.weight"),
                                              f.create_dataset("param/fc1.weight",
                                                               shape=(10**9,),
                                                               dtype=np.float32))),
                              "'param/fc1.weight' is float32 (1000000000,), expected"),
    "wrong array names": (_meta("arrays", {"param/x": [3]}), "checkpoint of net mlp"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_checkpoint_one_line_exit_2(name, tmp_path, capsys):
    train_inproc("--epochs", "1", "--max-steps", "2", "--checkpoint-dir", str(tmp_path / "ck"))
    path = tmp_path / "hostile.h5"
    path.write_bytes(ckpt.list_checkpoints(tmp_path / "ck")[0].read_bytes())
    edit, needle = HOSTILE[name]
    _rewrite(path, edit)
    capsys.readouterr()
    t = time.perf_counter()
    assert main([*SMALL, "--epochs", "1", "--resume", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err
    assert needle in err[0]
    assert time.perf_counter() - t < 30


def test_fresh_run_into_a_folder_of_checkpoints_is_refused_and_nothing_is_deleted(tmp_path,
                                                                                capsys):
    d = tmp_path / "ck"
    train_inproc("--epochs", "2", "--max-steps", "12", "--checkpoint-dir", str(d),
                 "--checkpoint-every", "4", "--keep", "2")
    before = _snapshot(d)
    capsys.readouterr()
    assert main([*SMALL, "--epochs", "1", "--checkpoint-dir", str(d), "--checkpoint-every", "2",
                 "--keep", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds 2 checkpoint(s)" in err[0]
    # --resume OLD.h5 into the folder of its later checkpoints: refused too
    assert main([*SMALL, "--epochs", "2", "--checkpoint-dir", str(d), "--resume",
                 str(d / ckpt.checkpoint_name(8))]) == 2
    assert "later than" in capsys.readouterr().err
    assert _snapshot(d) == before


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (3, 40, 50):
        ckpt.write_checkpoint(tmp_path / ckpt.checkpoint_name(step), {"a": np.zeros(1)},
                              {"step": step})
    ckpt.prune(tmp_path, keep=1, upto_step=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        ckpt.checkpoint_name(s) for s in (50, 40, 3)]


def test_format_1_checkpoint_is_converted(tmp_path):
    """A checkpoint of the earlier format (flat rows) resumes this run's model."""
    import json

    import h5py

    train_inproc("--epochs", "1", "--max-steps", "2", "--checkpoint-dir", str(tmp_path / "a"))
    arrays, meta = final_arrays(tmp_path / "a")
    names = [k.split("/", 1)[1] for k in sorted(arrays) if k.startswith("param/")]
    names.sort(key=["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"].index)
    flat = {kind: np.concatenate([arrays[f"{kind}/{n}"].ravel() for n in names])[None]
            for kind in ("param", "momentum")}
    old = {k: v for k, v in meta.items() if k not in ("rows", "arrays", "strategy_state")}
    old["params"] = [[n, list(arrays[f"param/{n}"].shape)] for n in names]
    meta_json = json.dumps(old, sort_keys=True)
    v1 = {"params": flat["param"], "momentum": flat["momentum"]}
    path = tmp_path / "v1.h5"
    with h5py.File(path, "w") as f:
        for k, a in v1.items():
            f.create_dataset(k, data=a)
        f.attrs.update(format=ckpt.FORMAT, version=1, meta=meta_json,
                       checksum=ckpt._checksum(v1, meta_json))
    got, gmeta = ckpt.read_checkpoint(path)
    assert sorted(got) == sorted(arrays) and gmeta["rows"] == 1
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
    s = train_inproc("--epochs", "1", "--max-steps", "4", "--resume", str(path))
    assert s["step"] == 4
