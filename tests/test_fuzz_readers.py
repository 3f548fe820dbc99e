"""Mutation fuzzing of the readers that take files from outside: IDX (raw and .gz), CIFAR-10
binary batches, the HDF5 dataset store, checkpoints and the autotune cache.

For every input a reader must return valid data or raise one :class:`hpcnn.errors.HpcnnError`
(a warning, for the autotune cache), within a time bound; the process's memory stays bounded.
Inputs are valid files mutated by a seeded generator (bit flips, byte runs, extreme integers in
headers, truncation, appended or spliced bytes, recompression), so every run tries the same ones.

The run happens in a child process, so that a crash of a C library (HDF5, zlib) fails the test
instead of killing pytest; the input being tried is written to disk first, and named on failure.
``HPCNN_FUZZ_N`` sets the inputs per reader (default 150: a few seconds in ``make test``);
``make fuzz`` runs many more. Standalone: ``python tests/test_fuzz_readers.py N SEED``.
"""

import gzip
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("HPCNN_FUZZ_N", "150"))
SEED = int(os.environ.get("HPCNN_FUZZ_SEED", "1"))
MAX_SECONDS = 5.0  # per input
MAX_RSS_MIB = 1500  # of the whole child process


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        op = rng.randrange(7)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:  # flip a bit
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # a random byte
            b[pos] = rng.randrange(256)
        elif op == 2:  # an extreme 32-bit value (IDX sizes, HDF5 lengths), often in a header
            pos = rng.randrange(min(len(b), 64)) if b and rng.random() < 0.5 else pos
            b[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                         b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00"))
        elif op == 3:  # truncate
            del b[rng.randrange(len(b) + 1):]
        elif op == 4:  # append
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        elif op == 5 and b:  # copy a run of the file elsewhere
            n = rng.randrange(1, 256)
            src = rng.randrange(len(b))
            b[pos:pos + n] = b[src:src + n]
        elif op == 6 and b:  # delete a run
            del b[pos:pos + rng.randrange(1, 64)]
    return bytes(b)


# --- the seeds and the readers ---------------------------------------------------------------


def _idx_seeds(tmp):
    import numpy as np

    from hpcnn.data import write_idx

    rng = np.random.default_rng(0)
    out = {}
    for name, data in (("images", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
                       ("labels", rng.integers(0, 10, 7).astype(np.uint8))):
        write_idx(tmp / f"s-{name}", data)
        write_idx(tmp / f"s-{name}.gz", data)
        out[name] = ((tmp / f"s-{name}").read_bytes(), (tmp / f"s-{name}.gz").read_bytes())
    return out


def _check_idx(path, kind):
    from hpcnn.data import idx

    if kind == "images":
        x = idx.read_idx_images(path, shape=(28, 28))
        assert x.dtype == "uint8" and x.ndim == 3 and x.shape[1:] == (28, 28)
    else:
        y = idx.read_idx_labels(path)
        assert y.ndim == 1 and (y.min() >= 0) and (y.max() < 10)


def _cifar_seed(tmp):
    import numpy as np

    from hpcnn.data import cifar, write_cifar_batch

    cifar.RECORDS = 4
    rng = np.random.default_rng(1)
    p = write_cifar_batch(tmp / "s-cifar.bin", rng.integers(0, 256, (4, 3, 32, 32), np.uint8),
                          rng.integers(0, 10, 4))
    return p.read_bytes()


def _check_cifar(path):
    from hpcnn.data import cifar

    x, y = cifar.read_cifar_batch(path, records=4)
    assert x.shape == (4, 3, 32, 32) and y.min() >= 0 and y.max() < 10


def _store_seed(tmp):
    import numpy as np

    from hpcnn.data import cifar, write_cifar_batch
    from hpcnn.data.store import prepare_store

    cifar.RECORDS = 4
    folder = tmp / "cifar"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 3, 32, 32), np.uint8),
                          rng.integers(0, 10, 4))
    return prepare_store("cifar10", tmp / "s.h5", folder, log=lambda m: None).read_bytes()


def _check_store(path):
    import numpy as np

    from hpcnn.data.store import open_store

    ds = open_store(path)
    try:
        for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
            a = x[np.arange(len(x))]  # every image, through the checksummed chunks
            assert a.shape == (len(y), *ds.input_shape) and np.isfinite(a).all()
            assert y.min() >= 0 and y.max() < ds.num_classes
    finally:
        ds.close()


CKPT_EXPECTED = {"param/w": (3, 4), "momentum/w": (3, 4), "param/b": (3,), "momentum/b": (3,)}


def _checkpoint_seed(tmp):
    import numpy as np

    from hpcnn import checkpoint as ckpt

    rng = np.random.default_rng(4)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in CKPT_EXPECTED.items()}
    meta = {"step": 3, "epoch": 1, "index": 3, "loss_sum": 1.5, "loss_n": 3, "ranks": 1,
            "batch": 4, "steps_per_epoch": 5, "rows": 1, "net": "x",
            "arrays": {k: list(s) for k, s in CKPT_EXPECTED.items()}}
    return ckpt.write_checkpoint(tmp / "seed-ckpt.h5", arrays, meta).read_bytes()


def _check_checkpoint(path):
    import numpy as np

    from hpcnn import checkpoint as ckpt

    arrays, meta = ckpt.read_checkpoint(path, CKPT_EXPECTED)
    assert {k: a.shape for k, a in arrays.items()} == CKPT_EXPECTED
    assert all(a.dtype == np.float32 for a in arrays.values())
    ckpt.check_meta(meta, 2)


def _cache_seed():
    key = "cpu=x;threads=1;dtype=float32;x=1x1x8x8;w=2x1x3x3;stride=1x1;pad=0x0"
    return json.dumps({"format": "hpcnn-autotune", "version": 1, "entries": {
        key: {"forward": "lowering", "forward_ms": {"lowering": 1.0, "direct": 2.0}}}}).encode()


def _check_cache(path):
    """Load the file as the tuner does (HPCNN_AUTOTUNE_CACHE); warnings are fine, errors not."""
    from hpcnn.kernels import autotune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", autotune.AutotuneWarning)
        if hasattr(autotune, "Autotuner"):  # the choices held by a tuner object
            from hpcnn.kernels.conv import ALGOS

            tuner = autotune.Autotuner(ALGOS)
            with tuner._lock:
                tuner._load(str(path))
            entries = tuner._file["entries"]
        else:  # module-level choices
            autotune.reset()
            with autotune._lock:
                autotune._load(str(path))
            entries = autotune._file["entries"]
    assert isinstance(entries, dict)


def _peak_rss_mib():
    """This process's peak resident memory since it started (VmHWM). Not ru_maxrss: on Linux
    that keeps the peak of the process it was forked from (here pytest, which may already hold
    a large net), across the exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n, seed, workdir):
    """Fuzz every reader with ``n`` inputs; returns a summary dict (raises on a finding)."""
    from hpcnn.errors import HpcnnError

    tmp = Path(workdir)
    idx_seeds = _idx_seeds(tmp)
    targets = [
        ("idx images", idx_seeds["images"][0], "x-images", lambda p: _check_idx(p, "images")),
        ("idx images .gz", idx_seeds["images"][1], "x-images.gz",
         lambda p: _check_idx(p, "images")),
        ("idx labels", idx_seeds["labels"][0], "x-labels", lambda p: _check_idx(p, "labels")),
        ("idx labels .gz", idx_seeds["labels"][1], "x-labels.gz",
         lambda p: _check_idx(p, "labels")),
        ("cifar batch", _cifar_seed(tmp), "x-cifar.bin", _check_cifar),
        ("hdf5 store", _store_seed(tmp), "x.h5", _check_store),
        ("checkpoint", _checkpoint_seed(tmp), "x-ckpt.h5", _check_checkpoint),
        ("autotune cache", _cache_seed(), "x-cache.json", _check_cache),
    ]
    rng = random.Random(seed)
    summary = {"inputs": 0, "valid": 0, "rejected": 0, "slowest_s": 0.0, "per_target": {}}
    t_all = time.monotonic()
    for name, data, fname, check in targets:
        path = tmp / fname
        counts = {"valid": 0, "rejected": 0}
        for i in range(n):
            case = data if i == 0 else mutate(data, rng)
            if name.endswith(".gz") and i % 5 == 4:  # mutate inside the compression too
                case = gzip.compress(mutate(gzip.decompress(data), rng), mtime=0)
            path.write_bytes(case)
            (tmp / "current").write_text(f"{name} #{i}: {path}")
            t = time.monotonic()
            signal.alarm(int(MAX_SECONDS) + 5)  # a hang in C code (HDF5) ends the child
            try:
                check(path)
                counts["valid"] += 1
            except HpcnnError as e:
                assert "\n" not in str(e), f"{name} #{i}: two-line error {str(e)!r}"
                counts["rejected"] += 1
            except Exception as e:
                keep = tmp / f"finding-{fname}"
                keep.write_bytes(case)
                raise AssertionError(f"{name} #{i}: {type(e).__name__}: {e} (input kept in "
                                     f"{keep})") from e
            signal.alarm(0)
            took = time.monotonic() - t
            summary["slowest_s"] = max(summary["slowest_s"], took)
            assert took < MAX_SECONDS, f"{name} #{i}: took {took:.1f} s"
        assert counts["valid"] >= 1, f"{name}: the unmutated seed must be valid"
        summary["per_target"][name] = counts
        summary["inputs"] += n
        summary["valid"] += counts["valid"]
        summary["rejected"] += counts["rejected"]
    summary["seconds"] = round(time.monotonic() - t_all, 2)
    summary["max_rss_mib"] = round(_peak_rss_mib())
    assert summary["max_rss_mib"] < MAX_RSS_MIB, summary
    return summary


def test_readers_survive_mutated_files(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, __file__, str(N), str(SEED), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    current = tmp_path / "current"
    where = current.read_text() if current.exists() else "?"
    assert r.returncode == 0, (f"fuzzing failed (exit {r.returncode}) at {where}:\n"
                               f"{r.stderr[-3000:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == 8 * N


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else N
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else SEED
    if len(sys.argv) > 3:
        print(json.dumps(run(n, seed, sys.argv[3])))
    else:
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(run(n, seed, d)))
