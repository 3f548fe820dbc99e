"""Run the data-side cases of issue 16 (hostile files, bad values, faults) and print a Markdown
table of what each command did: exit status, time, stderr lines (first and last), leftovers.

    .venv/bin/python results/hardening_data_cases.py [--only NAME,...] > out.md

Fixtures are written to a temporary folder (tiny CIFAR-10 store, IDX files, a slow HTTP server);
nothing under /work/shared is needed. Used for the before/after record in hardening-data.md.
"""

import argparse
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
MPIEXEC = str(Path(PY).parent / "mpiexec")
TRAIN = [PY, "-m", "hpcnn.train", "--net", "mlp", "--hidden", "8", "--threads", "1",
         "--epochs", "1", "--log-interval", "100"]
SYN = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16",
       "--batch-size", "16"]


def make_store(tmp: Path) -> Path:
    from hpcnn.data import cifar, write_cifar_batch
    from hpcnn.data.store import prepare_store

    cifar.RECORDS = 12
    folder = tmp / "cifar-10-batches-bin"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(4)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        write_cifar_batch(folder / name, rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8),
                          rng.integers(0, 10, 12))
    return prepare_store("cifar10", tmp / "base.h5", folder, log=lambda m: None)


def variant(tmp, base, name, edit):
    out = tmp / f"{name}.h5"
    out.write_bytes(base.read_bytes())
    with h5py.File(out, "r+") as f:
        edit(f, tmp)
    return out


def _set_md5(f, key):
    from hpcnn.data.store import _md5_array

    table = json.loads(f.attrs["content_md5"])
    table[key] = _md5_array(f[key])
    f.attrs["content_md5"] = np.bytes_(json.dumps(table).encode())  # as prepare writes it


def edit_labels(f, tmp):
    f["train/labels"][0] = (int(f["train/labels"][0]) + 1) % 10


def contiguous_images(f, tmp):
    x = f["train/images"][...]
    del f["train/images"]
    f.create_dataset("train/images", data=x)  # contiguous, no checksum
    _set_md5(f, "train/images")


def corrupt_contiguous(path):
    with h5py.File(path) as f:
        off = f["train/images"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(off + 50)
        fh.write(b"\x00\xff" * 8)


def int8_labels(f, tmp):
    y = f["train/labels"][...].astype(np.int8)
    y[0] = -1
    del f["train/labels"]
    f.create_dataset("train/labels", data=y, fletcher32=True)
    _set_md5(f, "train/labels")


def float_labels(f, tmp):
    y = f["train/labels"][...].astype(np.float32)
    y[0] = np.nan
    del f["train/labels"]
    f.create_dataset("train/labels", data=y)
    _set_md5(f, "train/labels")


def external_labels(f, tmp):
    n = len(f["test/labels"])
    target = tmp / "outside.bin"
    target.write_bytes(bytes(range(n)))
    del f["test/labels"]
    f.create_dataset("test/labels", shape=(n,), dtype=np.uint8, external=[(str(target), 0, n)])


def external_link(f, tmp):
    other = tmp / "other.h5"
    with h5py.File(other, "w") as g:
        g["labels"] = f["test/labels"][...]
    del f["test/labels"]
    f["test/labels"] = h5py.ExternalLink(str(other), "/labels")


def soft_link(f, tmp):
    f["copy"] = f["test/labels"][...]
    del f["test/labels"]
    f["test/labels"] = h5py.SoftLink("/copy")


def wrong_mean(f, tmp):
    del f["mean"]
    f["mean"] = np.zeros((3, 16, 16), np.float32)


def corrupt_chunk(path):
    with h5py.File(path) as f:
        info = f["train/images"].id.get_chunk_info(1)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        fh.write(b"\x00\xff\x00\xff")


def gzip_bomb(tmp, inflated):
    """train-images-idx3-ubyte.gz with a valid MNIST header and ``inflated`` zero bytes."""
    d = tmp / "bomb"
    d.mkdir(exist_ok=True)
    from hpcnn.data import registry, write_idx

    for img, lab in registry.IDX_FILES.values():
        write_idx(d / f"{img}.gz", np.zeros((2, 28, 28), np.uint8))
        write_idx(d / f"{lab}.gz", np.zeros(2, np.uint8))
    header = bytes([0, 0, 8, 3]) + np.array([60000, 28, 28], ">u4").tobytes()
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [co.compress(header)]
    block = bytes(1 << 24)
    for _ in range(inflated >> 24):
        parts.append(co.compress(block))
    parts.append(co.flush())
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"".join(parts))
    return d


class Slow(http.server.BaseHTTPRequestHandler):
    headers_slowly = False

    def do_GET(self):
        if self.headers_slowly:
            try:
                for c in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 1000:
                    self.wfile.write(bytes([c]))
                    self.wfile.flush()
                    time.sleep(1.0)
            except OSError:
                pass
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(1.0)
        except OSError:
            pass

    def log_message(self, *a):
        pass


def slow_server(headers=False):
    handler = type("SlowH", (Slow,), {"headers_slowly": True}) if headers else Slow
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}/"


def cases(tmp: Path):
    base = make_store(tmp)

    def store(name, edit, after=None):
        def build():
            p = variant(tmp, base, name, edit)
            if after:
                after(p)
            return [*TRAIN, "--dataset", f"h5:{p}", "--batch-size", "12"]
        return build

    def corrupt():
        p = tmp / "corrupt.h5"
        p.write_bytes(base.read_bytes())
        corrupt_chunk(p)
        return p

    yield "store: labels edited (no checksum)", store("labels", edit_labels), {}, 120
    yield ("store: images rewritten contiguous, no Fletcher-32, then corrupted",
           store("contig", contiguous_images, corrupt_contiguous), {}, 120)
    yield "store: label -1 stored as int8", store("int8", int8_labels), {}, 120
    yield "store: labels float32 with NaN", store("float", float_labels), {}, 120
    yield "store: test labels in external storage", store("ext", external_labels), {}, 120
    yield "store: test labels an external link", store("extlink", external_link), {}, 120
    yield "store: test labels a soft link", store("soft", soft_link), {}, 120
    yield "store: mean image of the wrong shape", store("mean", wrong_mean), {}, 120
    yield ("store: chunk fails its Fletcher-32 checksum during training",
           lambda: [*TRAIN, "--dataset", f"h5:{corrupt()}", "--batch-size", "12"], {}, 120)
    yield ("store: chunk checksum failure, mpiexec -n 2",
           lambda: [MPIEXEC, "-n", "2", *TRAIN, "--dataset", f"h5:{corrupt()}",
                    "--batch-size", "12"], {}, 120)
    yield ("store: describe of the corrupt-chunk store",
           lambda: [PY, "-m", "hpcnn.data", "describe", f"h5:{corrupt()}"], {}, 120)
    yield ("IDX: 1 MiB gzip inflating to 1 GiB as train-images (mnist)",
           lambda: [*TRAIN, "--dataset", "mnist", "--data-dir", str(gzip_bomb(tmp, 1 << 30)),
                    "--batch-size", "2"], {}, 300)
    yield ("download --timeout -1", lambda: [PY, "-m", "hpcnn.data", "download", "mnist",
                                             "--dir", str(tmp / "dl"), "--timeout", "-1"], {}, 60)
    yield ("download --timeout nan", lambda: [PY, "-m", "hpcnn.data", "download", "mnist",
                                              "--dir", str(tmp / "dl"), "--timeout", "nan"],
           {}, 60)
    yield ("download from a server sending 1 byte/s (--timeout 5 --max-time 8), .part left?",
           lambda: [PY, "-m", "hpcnn.data", "download", "mnist", "--dir", str(tmp / "slow"),
                    "--mirror", slow_server(), "--timeout", "5", "--max-time", "8"], {}, 20)
    yield ("download from a server sending its headers 1 byte/s (--max-time 8)",
           lambda: [PY, "-m", "hpcnn.data", "download", "mnist", "--dir", str(tmp / "slowh"),
                    "--mirror", slow_server(headers=True), "--timeout", "5", "--max-time", "8"],
           {}, 20)
    (tmp / "cache.json").write_bytes(b'{"format": "hpcnn-autotune", "entries": {"\xff\xfe": 1}}')
    yield ("autotune cache not UTF-8",
           lambda: [*TRAIN[:4], "lenet5", *TRAIN[7:], *SYN, "--max-steps", "1"],
           {"HPCNN_AUTOTUNE_CACHE": str(tmp / "cache.json")}, 300)
    yield ("HPCNN_AUTOTUNE=bogus", lambda: [*TRAIN[:4], "lenet5", *TRAIN[7:], *SYN,
                                            "--max-steps", "1"], {"HPCNN_AUTOTUNE": "bogus"}, 300)
    for flag, value in (("--seed", "-5"), ("--seed", "4294967296"),
                        ("--synthetic-shape", "1000000,1000000,1000000"),
                        ("--weight-decay", "nan"), ("--weight-decay", "inf"),
                        ("--momentum", "nan"), ("--log-interval", "nan"),
                        ("--log-interval", "inf"), ("--lr", "inf"), ("--lr", "nan"),
                        ("--warmup-epochs", "nan"), ("--bucket-mb", "inf"),
                        ("--threads", "100000")):
        argv = [*TRAIN, *SYN, flag, value]
        if flag == "--threads":
            argv = [*TRAIN[:7], *TRAIN[9:], *SYN, flag, value, "--max-steps", "1"]
        yield f"train {flag} {value}", (lambda a=argv: a), {}, 120


def shorten(lines, keep=3):
    lines = [ln for ln in lines if ln.strip()]
    if len(lines) <= 2 * keep:
        return lines
    return [*lines[:keep], f"... ({len(lines) - 2 * keep} more lines) ...", *lines[-keep:]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=None)
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HPCNN_DATA", None)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        env["XDG_CACHE_HOME"] = str(tmp / "xdg")
        for name, build, extra, timeout in cases(tmp):
            if args.only and not any(k in name for k in args.only.split(",")):
                continue
            if any(k and k in name for k in args.skip.split(",")):
                continue
            argv = build()
            t0 = time.monotonic()
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                   env=dict(env, **extra), cwd=tmp)
                rc, err, out = r.returncode, r.stderr, r.stdout
            except subprocess.TimeoutExpired as e:
                rc = f"killed after {timeout} s (timeout)"
                err = (e.stderr or b"").decode(errors="replace")
                out = (e.stdout or b"").decode(errors="replace")
            took = time.monotonic() - t0
            cmd = " ".join(a.replace(str(tmp), "$T").replace(str(ROOT) + "/", "")
                           for a in argv).replace(PY, "python")
            leftovers = sorted(p.name for p in tmp.rglob("*.part"))
            print(f"### {name}\n\n`{' '.join(f'{k}={v}' for k, v in extra.items())}"
                  f"{' ' if extra else ''}{cmd}`\n")
            print(f"exit {rc}, {took:.1f} s, {len(err.splitlines())} stderr line(s)"
                  + (f", leftovers: {leftovers}" if leftovers else "")
                  + (", stdout says finished" if "finished:" in out else "") + "\n")
            text = "\n".join(shorten(err.replace(str(tmp), "$T").splitlines()))
            print("```\n" + (text or "(no stderr)") + "\n```\n", flush=True)
            for p in tmp.rglob("*.part"):
                p.unlink()


if __name__ == "__main__":
    main()
