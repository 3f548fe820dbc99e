"""Issue 16, checkpoint side: every case, run against one hpcnn tree (before or after).

    PYTHONPATH=TREE .venv/bin/python results/hardening_checkpoint_cases.py TREE > out.md

Each case crafts its files with the tree's own checkpoint writer (so a "valid SHA-256" is valid
for that tree's format), then runs ``python -m hpcnn.train`` from the tree and reports the exit
status, the wall time, peak memory of the run (ru_maxrss of the children), the number of stderr
lines and the last one, and for the data-loss cases which checkpoints are left.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

TREE = Path(sys.argv[1]).resolve()
SMALL = ["--net", "mlp", "--hidden", "8", "--dataset", "synthetic", "--synthetic-train", "320",
         "--synthetic-test", "32", "--batch-size", "16", "--threads", "1", "--log-interval",
         "100"]


def train(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(TREE))
    env.pop("HPCNN_DATA", None)
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        r = subprocess.run([sys.executable, "-m", "hpcnn.train", *SMALL, *args], cwd=cwd,
                           env=env, capture_output=True, text=True, timeout=timeout)
        code, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        code, err = "timeout", (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else ""
    took = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    lines = [x for x in err.strip().splitlines() if x]
    return code, took, max(rss, before) / 1024, lines


def report(name, cmd, res, extra=""):
    code, took, rss, lines = res
    last = lines[-1][:200] if lines else ""
    print(f"### {name}\n\n`python -m hpcnn.train ... {' '.join(cmd)}`\n\n- exit {code}, "
          f"{took:.1f} s, peak RSS of the runs so far {rss:.0f} MiB, {len(lines)} stderr "
          f"line(s){': ' + repr(last) if last else ''}{extra}\n", flush=True)


def ckpts(d):
    return sorted(p.name for p in Path(d).glob("ckpt-*.h5"))


def rewrite(path, edit):
    """Apply ``edit(f, meta) -> meta`` to a checkpoint and give it a valid checksum again."""
    from hpcnn import checkpoint as ckpt

    with h5py.File(path, "r+") as f:
        raw = f.attrs["meta"]
        meta = edit(f, json.loads(raw.decode() if isinstance(raw, bytes) else raw))
        meta_json = json.dumps(meta, sort_keys=True)
        fixed = f.attrs.get_id("meta").dtype.kind == "S"  # format 2: fixed-length strings

        def text(v):
            return np.bytes_(v.encode()) if fixed else v
        f.attrs["meta"] = text(meta_json)
        arrays = {}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.size < 10**7:
                arrays[name] = obj[...]
        f.visititems(visit)
        f.attrs["checksum"] = text(ckpt._checksum(arrays, meta_json))


def main():
    root = Path(tempfile.mkdtemp(prefix="hpcnn-ckcases-"))
    print(f"tree: {TREE}\n")
    # data loss: a fresh run into a folder with later checkpoints
    d = root / "ckp"
    train(["--epochs", "2", "--max-steps", "30", "--checkpoint-dir", str(d),
           "--checkpoint-every", "10", "--keep", "2"], root)
    left = ckpts(d)
    cmd = ["--epochs", "1", "--max-steps", "16", "--checkpoint-dir", "ckp",
           "--checkpoint-every", "4", "--keep", "2"]
    res = train(cmd, root)
    report("fresh run into a folder holding later checkpoints", cmd, res,
           f"; folder before {left}, after {ckpts(d)}")
    # data loss: --resume OLD.h5 into a folder with newer ones
    d2 = root / "ckp2"
    train(["--epochs", "2", "--max-steps", "30", "--checkpoint-dir", str(d2),
           "--checkpoint-every", "10", "--keep", "3"], root)
    left = ckpts(d2)
    cmd = ["--epochs", "2", "--max-steps", "16", "--checkpoint-dir", "ckp2",
           "--checkpoint-every", "4", "--keep", "2", "--resume", "ckp2/ckpt-000000010.h5"]
    res = train(cmd, root)
    report("--resume OLD.h5 into a folder holding newer checkpoints", cmd, res,
           f"; folder before {left}, after {ckpts(d2)}")

    # hostile but checksummed metadata, extra groups, links, huge declared datasets
    base = root / "base"
    train(["--epochs", "1", "--max-steps", "3", "--checkpoint-dir", str(base)], root)
    good = base / ckpts(base)[-1]

    def case(name, edit):
        p = root / f"{name.replace(' ', '_')}.h5"
        p.write_bytes(good.read_bytes())
        rewrite(p, edit)
        cmd = ["--epochs", "1", "--resume", p.name]
        report(name, cmd, train(cmd, root))

    def meta_set(key, value):
        def edit(f, meta):
            meta[key] = value
            return meta
        return edit

    case("step is the string abc", meta_set("step", "abc"))
    case("negative step", meta_set("step", -5))
    case("negative epoch", meta_set("epoch", -1))
    case("bad RNG state", meta_set("rng", {"numpy_global": ["MT19937", [1, 2], 0, 0, 0.0],
                                          "python_random": [3, [1], None]}))

    def extra_group(f, meta):
        f.create_group("extra").create_dataset("x", data=np.zeros(3, np.float32))
        return meta
    case("extra HDF5 group", extra_group)

    def external_link(f, meta):
        f["outside"] = h5py.ExternalLink("/etc/hostname", "/")
        return meta
    case("external link", external_link)

    def soft_link(f, meta):
        first = [k for k in f.keys()][0]
        f["alias"] = h5py.SoftLink(f"/{first}")
        return meta
    case("soft link", soft_link)

    def huge(f, meta):
        name = "params" if "params" in f else "param/fc1.weight"
        del f[name]
        f.create_dataset(name, shape=(1, 10**9) if name == "params" else (10**9,),
                         dtype=np.float32)  # declared, never written: a small file
        return meta
    p = root / "huge.h5"
    p.write_bytes(good.read_bytes())
    rewrite(p, huge)
    cmd = ["--epochs", "1", "--resume", p.name]
    report(f"a {p.stat().st_size / 1e6:.1f} MB checkpoint declaring a 1e9-element dataset", cmd,
           train(cmd, root, timeout=120))


if __name__ == "__main__":
    main()
