"""The training command end to end: output, metrics, determinism and bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "128",
         "--threads", "1"]


def train(*args, env=None, timeout=300, launcher=()):
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("HPCNN_DATA", None)  # unit tests never read the shared datasets
    e.update(env or {})
    return subprocess.run([*launcher, sys.executable, "-m", "hpcnn.train", *args],
                          capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_short_run_prints_header_progress_and_metrics(tmp_path):
    m = tmp_path / "m.jsonl"
    r = train("--net", "lenet5", *SMALL, "--epochs", "2", "--batch-size", "32",
              "--metrics", str(m), "--log-interval", "0.001")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "net lenet5 (431,080 parameters)" in out and "threads 1" in out
    assert "epoch 1 step" in out and "img/s" in out and "eta" in out
    assert "epoch 2 done: train loss" in out and "test accuracy" in out
    recs = read_jsonl(m)
    assert [r.get("epoch") for r in recs] == [1, 2, 2]
    assert recs[-1]["summary"] is True and recs[-1]["step"] == 16
    for rec in recs:
        for key in ("epoch", "step", "train_loss", "test_accuracy", "images_per_second",
                    "elapsed_s"):
            assert key in rec
        assert 0.0 <= rec["test_accuracy"] <= 1.0 and rec["images_per_second"] > 0


def test_max_steps_stops_mid_epoch_and_writes_summary(tmp_path):
    m = tmp_path / "m.jsonl"
    r = train("--net", "mlp", *SMALL, "--epochs", "5", "--batch-size", "32",
              "--max-steps", "3", "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    recs = read_jsonl(m)
    assert recs[-1]["summary"] is True and recs[-1]["step"] == 3
    assert "finished: 3 steps" in r.stdout


def test_same_seed_same_numbers(tmp_path):
    runs = []
    for i in range(2):
        m = tmp_path / f"m{i}.jsonl"
        r = train("--net", "cifar10_quick", *SMALL, "--epochs", "1", "--batch-size", "32",
                  "--max-steps", "4", "--seed", "7", "--metrics", str(m))
        assert r.returncode == 0, r.stderr
        runs.append(read_jsonl(m)[-1])
    assert runs[0]["train_loss"] == runs[1]["train_loss"]
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"]


def test_learns_synthetic_data(tmp_path):
    m = tmp_path / "m.jsonl"
    r = train("--net", "lenet5", "--dataset", "synthetic", "--synthetic-train", "2000",
              "--synthetic-test", "500", "--threads", "1", "--epochs", "2", "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    assert read_jsonl(m)[-1]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.parametrize("args,needle", [
    (["--net", "resnet"], "unknown net"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr-policy", "poly"], "unknown lr policy"),
    (["--algo", "magic"], "algo"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--metrics", "/nonexistent/dir/m.jsonl"], "/nonexistent/dir/m.jsonl"),
    (["--synthetic-shape", "3,32"], "C,H,W"),
    (["--batch-size", "100000"], "larger than"),
])
def test_bad_input_one_line_exit_2(args, needle):
    base = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64",
            "--threads", "1"]
    r = train(*base, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr


def test_corrupt_mnist_file_is_named(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / name).write_bytes(b"\x00\x00\x08\x03garbage")
    r = train("--dataset", "mnist", "--data-dir", str(d), "--threads", "1")
    assert r.returncode == 2
    assert str(d) in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("mpiexec") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "mpiexec")), reason="no mpiexec")
def test_runs_unchanged_under_mpiexec_n_1(tmp_path):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.path.exists(mpiexec) else shutil.which("mpiexec")
    m = tmp_path / "m.jsonl"
    r = train("--net", "lenet5", *SMALL, "--epochs", "1", "--batch-size", "32",
              "--max-steps", "3", "--metrics", str(m), launcher=(mpiexec, "-n", "1"))
    assert r.returncode == 0, r.stderr
    assert read_jsonl(m)[-1]["step"] == 3 and "ranks 1 x threads 1" in r.stdout
