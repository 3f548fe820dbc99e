"""Issue 16, data side: every hostile file, bad value and fault of the table ends the real command
(``python -m hpcnn.train`` / ``python -m hpcnn.data``) with exactly one ``error:`` line on
stderr and exit status 2, with no traceback, in bounded time, leaving nothing behind.

Every fixture is written here: a tiny CIFAR-10 store and edited copies of it, IDX files, a
decompression bomb, a local HTTP server that trickles bytes.
"""

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcnn.data import cifar, registry, write_cifar_batch, write_idx
from hpcnn.data.store import _md5_array, prepare_store

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TRAIN = [sys.executable, "-m", "hpcnn.train", "--net", "mlp", "--hidden", "8", "--threads", "1",
         "--epochs", "1", "--log-interval", "100"]
SYN = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16",
       "--batch-size", "16"]
DATA = [sys.executable, "-m", "hpcnn.data"]


def run(argv, cwd, timeout=120, **env):
    e = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(Path(cwd) / "xdg"))
    for k in ("HPCNN_DATA", "HPCNN_AUTOTUNE", "HPCNN_AUTOTUNE_CACHE"):
        e.pop(k, None)
    e.update(env)
    t = time.monotonic()
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=e, cwd=cwd,
                       timeout=timeout)
    return r, time.monotonic() - t


def assert_one_error(r, match):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert match in lines[0], lines[0]


# --- the store and its hostile copies --------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    folder = tmp / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(4)
    saved = cifar.RECORDS
    cifar.RECORDS = 12
    try:
        for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
            write_cifar_batch(folder / name, rng.integers(0, 256, (12, 3, 32, 32), np.uint8),
                              rng.integers(0, 10, 12))
        return prepare_store("cifar10", tmp / "base.h5", folder, log=lambda m: None)
    finally:
        cifar.RECORDS = saved


def _set_md5(f, key):
    table = json.loads(f.attrs["content_md5"].decode())
    table[key] = _md5_array(f[key])
    f.attrs["content_md5"] = np.bytes_(json.dumps(table).encode())  # as prepare writes it


def _replace(f, key, data, **kw):
    del f[key]
    f.create_dataset(key, data=data, **kw)


def edit_labels(f, tmp):
    f["train/labels"][0] = (int(f["train/labels"][0]) + 1) % 10  # valid checksum, wrong MD5


def contiguous_images(f, tmp):
    _replace(f, "train/images", f["train/images"][...])  # no Fletcher-32, MD5 updated
    _set_md5(f, "train/images")


def int8_labels(f, tmp):
    y = f["train/labels"][...].astype(np.int8)
    y[0] = -1
    _replace(f, "train/labels", y, fletcher32=True)
    _set_md5(f, "train/labels")


def float_labels(f, tmp):
    _replace(f, "train/labels", f["train/labels"][...].astype(np.float32), fletcher32=True)
    _set_md5(f, "train/labels")


def label_out_of_range(f, tmp):
    y = f["train/labels"][...]
    y[3] = 10
    _replace(f, "train/labels", y, fletcher32=True)
    _set_md5(f, "train/labels")


def external_storage(f, tmp):
    n = len(f["test/labels"])
    (tmp / "outside.bin").write_bytes(bytes(n))
    del f["test/labels"]
    f.create_dataset("test/labels", shape=(n,), dtype=np.uint8,
                     external=[(str(tmp / "outside.bin"), 0, n)])


def external_link(f, tmp):
    with h5py.File(tmp / "other.h5", "w") as g:
        g.create_dataset("labels", data=f["test/labels"][...], fletcher32=True)
    del f["test/labels"]
    f["test/labels"] = h5py.ExternalLink(str(tmp / "other.h5"), "/labels")


def soft_link(f, tmp):
    f.create_dataset("copy", data=f["test/labels"][...], fletcher32=True)
    del f["test/labels"]
    f["test/labels"] = h5py.SoftLink("/copy")


def wrong_mean(f, tmp):
    _replace(f, "mean", np.zeros((3, 16, 16), np.float32), fletcher32=True)
    _set_md5(f, "mean")


def nan_mean(f, tmp):
    m = f["mean"][...]
    m[0, 0, 0] = np.nan
    _replace(f, "mean", m, fletcher32=True)
    _set_md5(f, "mean")


def missing_chunks(f, tmp):
    x = f["train/images"]
    n, rows = x.shape[0], x.chunks[0]
    _replace(f, "train/images", np.zeros((0, 3, 32, 32), np.uint8), chunks=(rows, 3, 32, 32),
             maxshape=(None, 3, 32, 32), fletcher32=True)
    f["train/images"].resize(n, axis=0)  # declared, never written: would read as zeros


def old_version(f, tmp):
    f.attrs["version"] = 1


def vlen_format(f, tmp):
    f.attrs["format"] = "hpcnn-store"  # a variable-length string: read through the heap


def newline_in_classes(f, tmp):
    f.attrs["classes"] = np.bytes_(json.dumps([f"a\nb{i}" for i in range(10)]).encode())
    f.attrs["content_md5"] = np.bytes_(b"{not json\nat all")


STORE_CASES = [
    ("labels edited", edit_labels, "does not match the MD5 recorded"),
    ("images contiguous without checksums", contiguous_images, "no Fletcher-32 checksums"),
    ("label -1 stored as int8", int8_labels, "/train/labels is int8"),
    ("labels float32", float_labels, "/train/labels is float32"),
    ("label 10 of 10 classes", label_out_of_range, "label 10 at index 3 is out of range 0-9"),
    ("external storage", external_storage, "outside the store"),
    ("external link", external_link, "/test/labels is an external link"),
    ("soft link", soft_link, "/test/labels is a soft link"),
    ("mean image of the wrong shape", wrong_mean, "/mean is (3, 16, 16)"),
    ("mean image with a NaN", nan_mean, "/mean holds values that are not finite"),
    ("chunks declared but not written", missing_chunks, "chunks are written"),
    ("store of version 1", old_version, "store version 1"),
    ("variable-length format attribute", vlen_format, "not an hpcnn dataset store"),
    ("newlines in attributes", newline_in_classes, "attribute content_md5 is not JSON"),
]


def hostile_copy(store, tmp, edit):
    out = tmp / "hostile.h5"
    out.write_bytes(store.read_bytes())
    with h5py.File(out, "r+") as f:
        edit(f, tmp)
    return out


def corrupt_chunk(store, tmp):
    out = tmp / "corrupt.h5"
    out.write_bytes(store.read_bytes())
    with h5py.File(out) as f:
        info = f["train/images"].id.get_chunk_info(1)
    with open(out, "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        fh.write(b"\x00\xff\x00\xff")
    return out


@pytest.mark.parametrize("edit,match", [c[1:] for c in STORE_CASES],
                         ids=[c[0] for c in STORE_CASES])
def test_hostile_store_is_refused_by_train(store, tmp_path, edit, match):
    path = hostile_copy(store, tmp_path, edit)
    r, _ = run([*TRAIN, "--dataset", f"h5:{path}", "--batch-size", "12"], tmp_path)
    assert_one_error(r, match)
    assert "finished" not in r.stdout


def test_store_checksum_failure_during_training_is_one_line(store, tmp_path):
    path = corrupt_chunk(store, tmp_path)
    r, _ = run([*TRAIN, "--dataset", f"h5:{path}", "--batch-size", "12"], tmp_path)
    assert_one_error(r, "cannot read /train/images (corrupt store? Can't synchronously read")
    r, _ = run([*DATA, "describe", f"h5:{path}"], tmp_path)
    assert_one_error(r, "cannot read /train/images")


@pytest.mark.skipif(not MPIEXEC.exists(), reason="no mpiexec in the virtualenv")
def test_store_checksum_failure_under_mpiexec_ends_every_rank_with_one_line(store, tmp_path):
    if "RankLocalError" not in (ROOT / "hpcnn" / "train.py").read_text():
        pytest.xfail("hpcnn.train.main does not yet end the job on a RankLocalError "
                     "(errors.end_job); the other ranks would wait in a collective")
    path = corrupt_chunk(store, tmp_path)
    r, took = run([MPIEXEC, "-n", "2", *TRAIN, "--dataset", f"h5:{path}", "--batch-size", "12"],
                  tmp_path, timeout=120)
    assert_one_error(r, ": cannot read /train/images")
    assert r.stderr.startswith("error: rank "), r.stderr
    assert took < 60


# --- IDX: a decompression bomb ---------------------------------------------------------------


def test_gzip_bomb_is_refused_fast(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for img, lab in registry.IDX_FILES.values():
        write_idx(d / f"{img}.gz", np.zeros((2, 28, 28), np.uint8))
        write_idx(d / f"{lab}.gz", np.zeros(2, np.uint8))
    header = bytes([0, 0, 8, 3]) + np.array([60000, 28, 28], ">u4").tobytes()

    def member(data):
        co = zlib.compressobj(9, zlib.DEFLATED, 31)
        return co.compress(data) + co.flush()

    zeros = member(bytes(1 << 24))  # 16 MiB of zeros in ~16 KB
    bomb = member(header) + zeros * 128  # 2 GiB once inflated, ~2 MB on disk
    (d / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    r, took = run([*TRAIN, "--dataset", "mnist", "--data-dir", d, "--batch-size", "2"], tmp_path)
    assert_one_error(r, "holds more than the 47040016 bytes its header declares")
    assert took < 20


# --- download --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "0"])
def test_download_timeout_is_checked(tmp_path, value):
    r, _ = run([*DATA, "download", "mnist", "--dir", tmp_path / "dl", "--timeout", value],
               tmp_path)
    assert_one_error(r, "argument --timeout: must be positive")
    assert not (tmp_path / "dl").exists()


class _Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            for _ in range(60):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)
        except OSError:
            pass

    def log_message(self, *a):
        pass


def test_download_from_a_trickling_server_stops_and_leaves_nothing(tmp_path):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r, took = run([*DATA, "download", "mnist", "--dir", tmp_path / "dl", "--mirror",
                       f"http://127.0.0.1:{srv.server_address[1]}/", "--timeout", "5",
                       "--max-time", "2"], tmp_path, timeout=60)
    finally:
        srv.shutdown()
    assert_one_error(r, "did not finish within 2 s (--max-time); nothing was saved")
    assert took < 10
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "dl").exists()


# --- options and the environment -------------------------------------------------------------

OPTION_CASES = [
    ("--seed", "-5", "argument --seed: must be an integer from 0 to 4294967295"),
    ("--seed", str(2**32), "argument --seed"),
    ("--synthetic-shape", "1000000,1000000,1000000", "argument --synthetic-shape"),
    ("--synthetic-shape", "16,1024,1024", "GiB of float32 per rank"),
    ("--weight-decay", "nan", "argument --weight-decay"),
    ("--weight-decay", "inf", "argument --weight-decay"),
    ("--weight-decay", "-1", "argument --weight-decay"),
    ("--momentum", "nan", "argument --momentum"),
    ("--momentum", "1.5", "--momentum must be in [0, 1)"),
    ("--log-interval", "nan", "argument --log-interval"),
    ("--log-interval", "0", "argument --log-interval"),
    ("--threads", "100000", "argument --threads"),
    ("--hidden", "1000000000", "argument --hidden"),
    ("--lr", "inf", "argument --lr"),
    ("--lr", "nan", "argument --lr"),
    ("--warmup-epochs", "nan", "argument --warmup-epochs"),
    ("--bucket-mb", "inf", "argument --bucket-mb"),
    ("--epochs", "1e3", "argument --epochs: expected a positive integer"),
]


@pytest.mark.parametrize("flag,value,match", OPTION_CASES,
                         ids=[f"{c[0]} {c[1]}" for c in OPTION_CASES])
def test_bad_number_is_one_line(tmp_path, flag, value, match):
    argv = [*TRAIN, *SYN, flag, value]
    if flag == "--threads":
        argv = [*TRAIN[:7], *TRAIN[9:], *SYN, flag, value]
    r, _ = run(argv, tmp_path, timeout=60)
    assert_one_error(r, match)


def test_bogus_autotune_mode_is_one_line(tmp_path):
    r, _ = run([*TRAIN, *SYN], tmp_path, HPCNN_AUTOTUNE="bogus")
    assert_one_error(r, "HPCNN_AUTOTUNE='bogus' is not one of on, off")


@pytest.mark.parametrize("bad", [b'{"format": "hpcnn-autotune", "entries": {"\xff\xfe": 1}}',
                                 b"[" * 100000, b"not json at all"],
                         ids=["not UTF-8", "nested too deep", "not JSON"])
def test_unusable_autotune_cache_is_one_line_and_left_alone(tmp_path, bad):
    """Checked before the run starts, on every rank: one line, exit 2, the file untouched.
    (Met later, mid-run, an unusable file is only warned about: tests/test_conv_algos.py.)"""
    cache = tmp_path / "cache.json"
    cache.write_bytes(bad)
    argv = [*TRAIN[:3], "--net", "lenet5", *TRAIN[7:], *SYN, "--max-steps", "1"]
    r, _ = run(argv, tmp_path, HPCNN_AUTOTUNE_CACHE=str(cache))
    assert_one_error(r, f"autotune cache {cache} is unusable")
    assert "delete it" in r.stderr
    assert cache.read_bytes() == bad  # left as it was
