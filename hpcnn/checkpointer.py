"""Saving and resuming a run through its strategy: what goes into a checkpoint and back.

A checkpoint holds the strategy's full named state (:meth:`hpcnn.parallel.Strategy.state`:
parameters and momentum gathered to full shape on rank 0), the run's position and the metadata
needed to continue exactly (see :mod:`hpcnn.checkpoint` for the file format). Loading goes the
other way: rank 0 reads and verifies the file, the arrays are broadcast, and every rank takes its
slice, so a run saved under any strategy on any number of ranks resumes under any other.

The checkpoint folder belongs to one run: a fresh run into a folder that already holds
checkpoints, or a ``--resume PATH`` run into a folder holding checkpoints of later steps, is
refused with one line (their files would be pruned or, worse, later taken by ``--resume auto``);
pruning only ever deletes checkpoints of steps up to the one just written.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcnn import checkpoint as ckpt
from hpcnn.errors import DataError, UsageError

# Options whose change between a checkpoint and its resume changes the trajectory.
TRAJECTORY_KEYS = ("dataset", "seed", "batch_size", "batch_per_rank", "lr", "lr_policy",
                   "lr_scaling", "warmup_epochs", "momentum", "weight_decay", "sync",
                   "average_every", "average_optimizer_state", "synthetic_train",
                   "synthetic_test", "synthetic_shape", "hidden", "algo", "parallel", "grid",
                   "hybrid_scheme", "text", "bptt")


@dataclass
class Position:
    """Where training stands: ``step`` optimizer steps done; the next batch is number ``index``
    (0-based) of epoch ``epoch`` (1-based); loss sums of that epoch so far."""

    step: int = 0
    epoch: int = 1
    index: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0


def jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def rng_states():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy_global": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python_random": [version, list(internal), gauss_next]}


def set_rng_states(states, path):
    if not states:
        return
    try:
        name, keys, pos, has_gauss, cached = states["numpy_global"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss_next = states["python_random"]
        random.setstate((version, tuple(internal), gauss_next))
    except (KeyError, TypeError, ValueError, OverflowError, IndexError):
        raise DataError(f"{path}: checkpoint metadata holds a malformed RNG state") from None


class Checkpointer:
    """Collective: every rank constructs it and calls every method at the same points."""

    def __init__(self, args, comm, say):
        from hpcnn.parallel import agree

        self.args, self.comm, self.say = args, comm, say
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
        self.last_path = None
        self._last_key = None
        self.save_s, self.saves = 0.0, 0  # time spent writing checkpoints (all kinds), count
        if self.dir is not None:
            agree(comm, self._prepare_dir)

    def _prepare_dir(self):
        if self.rank != 0:
            return
        ckpt.check_writable(self.dir)
        ckpt.remove_stale_temporaries(self.dir)
        found = ckpt.list_checkpoints(self.dir)
        if found and not self.args.resume:
            raise UsageError(f"checkpoint folder {self.dir} already holds {len(found)} "
                             f"checkpoint(s) (newest {found[0].name}) of another run: resume "
                             f"it with --resume auto, or use an empty --checkpoint-dir")

    def attach(self, strategy, *, batch, steps_per_epoch, n_train, schedule):
        self.strategy = strategy
        self.batch, self.steps_per_epoch, self.n_train = batch, steps_per_epoch, n_train
        self.schedule = schedule  # {"lr_at": fn(step) -> lr, plus JSON-able description}

    # saving ----------------------------------------------------------------------------------
    def _meta(self, pos, early_stop, rows):
        from hpcnn import __version__

        model = self.strategy.model
        sched = {k: v for k, v in self.schedule.items() if k != "lr_at"}
        sched["lr_next"] = self.schedule["lr_at"](pos.step)
        return jsonable({
            "step": pos.step, "epoch": pos.epoch, "index": pos.index,
            "loss_sum": pos.loss_sum, "loss_n": pos.loss_n, "net": self.args.net,
            "input_shape": list(model.input_shape), "num_params": self.strategy.num_params(),
            "model": getattr(model, "meta", None),  # e.g. an rnn's vocabulary
            "arrays": {k: list(v) for k, v in self.strategy.expected_state().items()},
            "rows": rows, "config": vars(self.args), "ranks": self.size,
            "sync": self.args.sync, "strategy": self.strategy.describe(),
            "batch": self.batch, "steps_per_epoch": self.steps_per_epoch,
            "n_train": self.n_train, "lr_schedule": sched,
            "data_order": {"rule": "numpy default_rng([seed, epoch]).permutation(n_train)",
                           "seed": self.args.seed, "epoch": pos.epoch, "next_batch": pos.index},
            "rng": rng_states(), "early_stop": early_stop,
            "time": time.time(), "hpcnn_version": __version__,
        })

    def save(self, pos, early_stop, path=None):
        """Write a checkpoint of ``pos`` (collective); returns its path."""
        from hpcnn.parallel import agree

        if self.dir is None:
            return None
        key = (pos.step, pos.epoch, pos.index, early_stop.get("stopped"))
        if path is None and key == self._last_key:
            return self.last_path  # nothing changed since the last checkpoint
        t = time.perf_counter()
        arrays, extra = self.strategy.state()
        rows = self.size if self.strategy.per_rank_rows and self.size > 1 else 1
        target = Path(path) if path else self.dir / ckpt.checkpoint_name(pos.step)

        def write():
            if self.rank == 0:
                meta = dict(self._meta(pos, early_stop, rows), strategy_state=extra)
                ckpt.write_checkpoint(target, arrays, meta)
                if path is None:
                    ckpt.prune(self.dir, self.args.keep, pos.step)

        agree(self.comm, write)
        self.save_s += time.perf_counter() - t
        self.saves += 1
        if path is None:
            self.last_path, self._last_key = target, key
        return target

    # resuming --------------------------------------------------------------------------------
    def _warn(self, msg):
        if self.rank == 0:
            print(msg, file=sys.stderr, flush=True)

    def _mismatch(self, meta):
        shape = "x".join(map(str, meta.get("input_shape", [])))
        model = self.strategy.model
        n = meta.get("num_params", 0)
        return (f"checkpoint of net {meta.get('net')} ({n if isinstance(n, int) else 0:,} "
                f"parameters, input {shape}), not of this run's {self.args.net} "
                f"({self.strategy.num_params():,} parameters, input "
                f"{'x'.join(map(str, model.input_shape))})")

    def _read_on_rank0(self):
        if self.rank != 0:
            return None
        expected = self.strategy.expected_state()
        spec = self.args.resume
        if spec == "auto":
            found = ckpt.newest_valid(self.dir, self._warn, expected, self._mismatch)
            if found is None:
                return None
            path, arrays, meta = found
        else:
            path = Path(spec)
            arrays, meta = ckpt.read_checkpoint(path, expected, self._mismatch)
            later = [p for p in ckpt.list_checkpoints(self.dir or path.parent)
                     if ckpt.checkpoint_step(p) > meta["step"]] if self.dir else []
            if later:
                raise UsageError(f"checkpoint folder {self.dir} holds {later[0].name}, later "
                                 f"than {path} (step {meta['step']}): its checkpoints would be "
                                 f"mixed with this run's; use another --checkpoint-dir")
        return str(path), arrays, meta

    def resume(self):
        """Load ``--resume``'s checkpoint into the strategy on every rank.

        Returns ``(path, meta)``, or None when ``--resume auto`` found nothing.
        """
        from hpcnn.parallel import agree

        got = agree(self.comm, self._read_on_rank0)
        head = None
        if self.rank == 0 and got is not None:
            head = (got[0], got[2])
        if self.size > 1:
            head = self.comm.bcast(head, root=0)
        if head is None:
            return None
        path, meta = head
        rows = meta["rows"]
        arrays = got[1] if self.rank == 0 else {}

        def get(name):
            a = arrays.get(name)
            if self.size > 1:
                shape = tuple(meta["arrays"][name])
                if rows > 1:
                    shape = (rows, *shape)
                if a is None:
                    a = np.empty(shape, np.float32)
                self.comm.Bcast(a, root=0)
            return a

        same = (meta.get("ranks") == self.size
                and meta.get("config", {}).get("parallel", "data") == self.args.parallel)
        self.strategy.load_state(get, rows, meta.get("strategy_state") or {}, same)
        set_rng_states(meta.get("rng"), path)
        self._report_differences(path, meta, rows)
        self.last_path = Path(path)
        return path, meta

    def _report_differences(self, path, meta, rows):
        old = meta.get("config", {})
        new = jsonable(vars(self.args))
        diffs = [f"--{k.replace('_', '-')} {old.get(k)} -> {new.get(k)}"
                 for k in TRAJECTORY_KEYS if k in old and old.get(k) != new.get(k)]
        sched = jsonable({k: v for k, v in self.schedule.items() if k != "lr_at"})
        old_sched = {k: v for k, v in meta.get("lr_schedule", {}).items() if k != "lr_next"}
        if old_sched != sched:  # e.g. cosine or step over another --max-steps or --epochs
            diffs.append(f"learning-rate schedule {old_sched} -> {sched}")
        if meta.get("ranks") != self.size:
            diffs.append(f"ranks {meta.get('ranks')} -> {self.size}")
        if meta.get("batch") != self.batch:
            diffs.append(f"global batch {meta.get('batch')} -> {self.batch} (position in the "
                         f"epoch rescaled)")
        if rows > 1 and not (rows == self.size and self.strategy.per_rank_rows):
            diffs.append(f"{rows} per-rank parameter sets averaged")
        if diffs:
            self._warn(f"warning: resuming {path} with other settings: {'; '.join(diffs)}")

    def position(self, meta):
        """Where to continue, from a checkpoint's metadata (rescaled to this run's batch)."""
        pos = Position(meta["step"], meta["epoch"], meta["index"], meta["loss_sum"],
                       meta["loss_n"])
        if meta.get("batch") != self.batch:
            done = pos.index * meta["batch"]
            pos.index, pos.loss_sum, pos.loss_n = min(done // self.batch,
                                                      self.steps_per_epoch), 0.0, 0
        return pos

    def mark_saved(self, pos, early_stopped):
        self._last_key = (pos.step, pos.epoch, pos.index, early_stopped)
