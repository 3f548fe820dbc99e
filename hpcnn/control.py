"""Training control: checkpoints and exact resume, stop signals, early stopping, divergence.

The training loop calls a :class:`TrainingControl` at four points::

    ctl = TrainingControl(args, comm, say)             # checks the checkpoint folder, signals
    ctl.attach(model, opt, dp, ...)                    # what a checkpoint holds
    pos = ctl.resume()                                 # where to start (step, epoch, batch)
    ... after each step:  if ctl.after_step(...): break     (stop signal: checkpoint written)
    ... after each evaluation:  if ctl.after_epoch(...): break   (early stopping)
    summary.update(ctl.finish())                       # final checkpoint, exit status, memory

Every step the ranks agree, with one ``Allreduce(MAX)`` of three int32 flags (about 10 us), on
whether to stop (SIGTERM or SIGUSR1 seen by any rank), whether a time-based checkpoint is due
(rank 0's clock) and whether any rank's loss is not finite. So all ranks stop, checkpoint or fail
at the same step and none waits in a collective for another.

Exit statuses of ``python -m hpcnn.train``: 0 done (also after early stopping), 2 bad input
(including an unusable checkpoint), 3 training diverged (non-finite loss; the last good checkpoint
is kept), 75 stopped by SIGTERM/SIGUSR1 after writing a checkpoint: requeue the job and run the
same command with ``--resume auto``.
"""

from __future__ import annotations

import math
import random
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcnn import checkpoint as ckpt
from hpcnn.argtypes import nonneg_int, positive_float, positive_int
from hpcnn.errors import DataError, HpcnnError, UsageError

EXIT_DIVERGED = 3
EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): try again later, from the checkpoint
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Options whose change between a checkpoint and its resume changes the trajectory.
TRAJECTORY_KEYS = ("dataset", "seed", "batch_size", "batch_per_rank", "lr", "lr_policy",
                   "lr_scaling", "warmup_epochs", "momentum", "weight_decay", "sync",
                   "average_every", "average_optimizer_state", "synthetic_train",
                   "synthetic_test", "synthetic_shape", "hidden", "algo")


class Diverged(HpcnnError):
    """The loss became NaN or infinite; every rank raises it at the same step."""

    exit_status = EXIT_DIVERGED


def add_arguments(parser):
    g = parser.add_argument_group("checkpoints, restarts and training control")
    g.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="write checkpoints (ckpt-<step>.h5) here; rank 0 writes, atomically")
    g.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="checkpoint every N steps")
    g.add_argument("--checkpoint-minutes", type=positive_float, default=None, metavar="M",
                   help="checkpoint when M minutes have passed since the last one")
    g.add_argument("--keep", type=positive_int, default=3, metavar="K",
                   help="keep the K newest checkpoints")
    g.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="auto: the newest valid checkpoint of --checkpoint-dir (none: start "
                        "fresh); PATH: that checkpoint")
    g.add_argument("--early-stop", type=positive_int, default=None, metavar="PATIENCE",
                   help="stop after PATIENCE evaluations without a better test accuracy; the "
                        "best model is kept in best.h5 of --checkpoint-dir")
    g.add_argument("--prefetch", type=nonneg_int, default=2, metavar="B",
                   help="batches read ahead by a background thread (h5: stores)")
    return g


def validate(args):
    """Option checks that need no files and no MPI."""
    if args.checkpoint_dir is None:
        for flag, given in (("--checkpoint-every", args.checkpoint_every is not None),
                            ("--checkpoint-minutes", args.checkpoint_minutes is not None),
                            ("--resume auto", args.resume == "auto"),
                            ("--early-stop", args.early_stop is not None)):
            if given:
                raise UsageError(f"{flag} needs --checkpoint-dir")


def peak_rss_mib() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux) in MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


@dataclass
class Position:
    """Where training stands: ``step`` optimizer steps done; the next batch is number ``index``
    (0-based) of epoch ``epoch`` (1-based); loss sums of that epoch so far."""

    step: int = 0
    epoch: int = 1
    index: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _rng_states():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy_global": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python_random": [version, list(internal), gauss_next]}


def _set_rng_states(states):
    if not states:
        return
    name, keys, pos, has_gauss, cached = states["numpy_global"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python_random"]
    random.setstate((version, tuple(internal), gauss_next))


class TrainingControl:
    """Checkpoints, resume, stop signals and early stopping for one run (see the module doc).

    Collective: every rank constructs it and calls every method at the same points.
    """

    def __init__(self, args, comm, say):
        from hpcnn.parallel import agree

        self.args = args
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.say = say
        self.dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
        self.pos = Position()
        self.last_path = None
        self._last_key = None
        self._t_saved = time.monotonic()
        self._flags = np.zeros(3, dtype=np.int32)
        self._signal = 0
        self._old_handlers = {}
        self.stopped = None  # name of the stop signal, once acted on
        self.best = None  # early stopping: best test accuracy, its epoch, evaluations since
        self.best_epoch = None
        self.bad = 0
        self.early_stopped = False
        self.save_s, self.saves = 0.0, 0  # time spent writing checkpoints (all kinds), count
        # Overflow is detected (non-finite loss) and reported once; numpy's warnings would only
        # add lines of noise before that message.
        self._old_err = np.seterr(over="ignore", invalid="ignore")
        if self.dir is not None:
            agree(comm, self._prepare_dir)
            self._install_signals()

    # set-up ----------------------------------------------------------------------------------
    def _prepare_dir(self):
        if self.rank == 0:
            ckpt.check_writable(self.dir)
            ckpt.remove_stale_temporaries(self.dir)

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum, frame):
            self._signal = signum  # acted on at the end of the current step

        for s in STOP_SIGNALS:
            self._old_handlers[s] = signal.signal(s, on_signal)

    def _restore_signals(self):
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def attach(self, model, opt, dp, *, batch, steps_per_epoch, n_train, schedule):
        """What checkpoints hold: the model, optimizer and parallel wrapper, and the run's shape."""
        self.model, self.opt, self.dp = model, opt, dp
        self.batch, self.steps_per_epoch, self.n_train = batch, steps_per_epoch, n_train
        self.schedule = schedule  # {"lr_at": fn(step) -> lr, plus JSON-able description}
        # Ranks hold different parameters between averages (--sync average): keep every rank's.
        self.per_rank_rows = self.size > 1 and self.args.sync == "average"

    # saving ----------------------------------------------------------------------------------
    def _flat_momentum(self):
        bufs = self.opt.momentum_buffers
        return np.concatenate([v.ravel() for v in bufs]) if bufs else np.zeros(0, np.float32)

    def _gathered(self):
        """(params, momentum), each (R, P) float32, on rank 0 (None elsewhere)."""
        mine = [self.model.flat_params, self._flat_momentum()]
        if not self.per_rank_rows:
            return [a[None, :].copy() for a in mine] if self.rank == 0 else [None, None]
        out = []
        for a in mine:
            buf = np.empty((self.size, a.size), np.float32) if self.rank == 0 else None
            self.comm.Gather(np.ascontiguousarray(a, np.float32), buf, root=0)
            out.append(buf)
        return out

    def _meta(self):
        from hpcnn import __version__

        p = self.pos
        sched = {k: v for k, v in self.schedule.items() if k != "lr_at"}
        sched["lr_next"] = self.schedule["lr_at"](p.step)
        return _jsonable({
            "step": p.step, "epoch": p.epoch, "index": p.index, "loss_sum": p.loss_sum,
            "loss_n": p.loss_n, "net": self.args.net,
            "input_shape": list(self.model.input_shape),
            "params": [[n, list(q.data.shape)] for n, q in self.model.named_params()],
            "num_params": self.model.num_params(), "config": vars(self.args),
            "ranks": self.size, "sync": self.args.sync, "batch": self.batch,
            "steps_per_epoch": self.steps_per_epoch, "n_train": self.n_train,
            "lr_schedule": sched,
            "data_order": {"rule": "numpy default_rng([seed, epoch]).permutation(n_train)",
                           "seed": self.args.seed, "epoch": p.epoch, "next_batch": p.index},
            "rng": _rng_states(),
            "since_average": int(getattr(self.dp, "_since", 0)),
            "early_stop": {"patience": self.args.early_stop, "best": self.best,
                           "best_epoch": self.best_epoch, "bad": self.bad,
                           "stopped": self.early_stopped},
            "time": time.time(), "hpcnn_version": __version__,
        })

    def save(self, path=None):
        """Write a checkpoint of the current position (collective); returns its path."""
        from hpcnn.parallel import agree

        if self.dir is None:
            return None
        key = (self.pos.step, self.pos.epoch, self.pos.index, self.early_stopped)
        if path is None and key == self._last_key:
            return self.last_path  # nothing changed since the last checkpoint
        t = time.perf_counter()
        params, momentum = self._gathered()
        meta = self._meta() if self.rank == 0 else None
        target = Path(path) if path else self.dir / ckpt.checkpoint_name(self.pos.step)

        def write():
            if self.rank == 0:
                ckpt.write_checkpoint(target, {"params": params, "momentum": momentum}, meta)
                if path is None:
                    ckpt.prune(self.dir, self.args.keep)

        agree(self.comm, write)
        self.save_s += time.perf_counter() - t
        self.saves += 1
        if path is None:
            self.last_path, self._last_key = target, key
            self._t_saved = time.monotonic()
        return target

    # resuming --------------------------------------------------------------------------------
    def _warn(self, msg):
        if self.rank == 0:
            print(msg, file=sys.stderr, flush=True)

    def _check_fits(self, path, meta):
        mine = [[n, list(q.data.shape)] for n, q in self.model.named_params()]
        if meta.get("params") != mine:
            shape = "x".join(map(str, meta.get("input_shape", [])))
            raise DataError(
                f"{path}: checkpoint of net {meta.get('net')} ({meta.get('num_params', 0):,} "
                f"parameters, input {shape}), not of this run's {self.args.net} "
                f"({self.model.num_params():,} parameters, input "
                f"{'x'.join(map(str, self.model.input_shape))})")

    def _load_on_rank0(self):
        if self.rank != 0:
            return None
        spec = self.args.resume
        if spec == "auto":
            found = ckpt.newest_valid(self.dir, self._warn)
            if found is None:
                return None
            path, arrays, meta = found
        else:
            path = Path(spec)
            arrays, meta = ckpt.read_checkpoint(path)
        self._check_fits(path, meta)
        for name in ("params", "momentum"):
            a = arrays.get(name)
            if a is None or a.ndim != 2 or a.shape[1] != self.model.num_params():
                raise DataError(f"{path}: checkpoint dataset /{name} is missing or misshapen")
        return str(path), arrays, meta

    def resume(self) -> Position:
        """Load ``--resume``'s checkpoint into the model and optimizer on every rank."""
        from hpcnn.parallel import agree

        if not self.args.resume:
            return self.pos
        got = agree(self.comm, self._load_on_rank0)
        head = None
        if self.rank == 0:
            head = None if got is None else (got[0], got[2], got[1]["params"].shape[0])
        if self.size > 1:
            head = self.comm.bcast(head, root=0)
        if head is None:
            self.say(f"resume auto: no checkpoint in {self.dir}; starting from scratch")
            return self.pos
        path, meta, rows = head
        arrays = got[1] if self.rank == 0 else {
            k: np.empty((rows, self.model.num_params()), np.float32)
            for k in ("params", "momentum")}
        if self.size > 1:
            for k in ("params", "momentum"):
                self.comm.Bcast(arrays[k], root=0)
        same_ranks = rows == self.size
        for k in ("params", "momentum"):
            a = arrays[k]
            arrays[k] = a[self.rank] if same_ranks else (a[0] if rows == 1 else a.mean(axis=0))
        self.model.flat_params[...] = arrays["params"]
        for (off, n), v in zip(self.model.offsets, self.opt.momentum_buffers):
            v[...] = arrays["momentum"][off:off + n].reshape(v.shape)
        if hasattr(self.dp, "_since"):
            self.dp._since = int(meta.get("since_average", 0)) if same_ranks else 0
        _set_rng_states(meta.get("rng"))
        es = meta.get("early_stop") or {}
        self.best, self.best_epoch = es.get("best"), es.get("best_epoch")
        self.bad = es.get("bad", 0)
        self.early_stopped = bool(es.get("stopped"))
        self._report_differences(path, meta, rows)
        pos = Position(meta["step"], meta["epoch"], meta["index"], meta["loss_sum"],
                       meta["loss_n"])
        if meta.get("batch") != self.batch:
            done = pos.index * meta["batch"]
            pos.index, pos.loss_sum, pos.loss_n = min(done // self.batch,
                                                      self.steps_per_epoch), 0.0, 0
        self.pos = pos
        self._last_key = (pos.step, pos.epoch, pos.index, self.early_stopped)
        self.last_path = Path(path)
        self.say(f"resumed from {path}: step {pos.step}, epoch {pos.epoch}, batch {pos.index} "
                 f"of {self.steps_per_epoch} (written by {meta['ranks']} rank"
                 f"{'s' * (meta['ranks'] > 1)}, sync {meta['sync']})")
        if self.early_stopped:
            self.say(f"that run stopped early at epoch {meta['epoch'] - 1} (best test accuracy "
                     f"{100 * (self.best or 0):.2f}% at epoch {self.best_epoch}): nothing to do")
            self.pos.epoch = self.args.epochs + 1
        return self.pos

    def _report_differences(self, path, meta, rows):
        old = meta.get("config", {})
        new = _jsonable(vars(self.args))
        diffs = [f"--{k.replace('_', '-')} {old.get(k)} -> {new.get(k)}"
                 for k in TRAJECTORY_KEYS if k in old and old.get(k) != new.get(k)]
        sched = _jsonable({k: v for k, v in self.schedule.items() if k != "lr_at"})
        old_sched = {k: v for k, v in meta.get("lr_schedule", {}).items() if k != "lr_next"}
        if old_sched != sched:  # e.g. cosine or step over another --max-steps or --epochs
            diffs.append(f"learning-rate schedule {old_sched} -> {sched}")
        if meta.get("ranks") != self.size:
            diffs.append(f"ranks {meta.get('ranks')} -> {self.size}")
        if meta.get("batch") != self.batch:
            diffs.append(f"global batch {meta.get('batch')} -> {self.batch} (position in the "
                         f"epoch rescaled)")
        if rows > 1 and rows != self.size:
            diffs.append(f"{rows} per-rank parameter sets averaged")
        if diffs:
            self._warn(f"warning: resuming {path} with other settings: {'; '.join(diffs)}")

    # during training -------------------------------------------------------------------------
    def after_step(self, step, epoch, index, loss, loss_sum, loss_n) -> bool:
        """Agree on stop/checkpoint/divergence after a step; True means stop now."""
        self.pos = Position(step, epoch, index, loss_sum, loss_n)
        f = self._flags
        f[0] = self._signal
        minutes = self.args.checkpoint_minutes
        f[1] = int(self.rank == 0 and minutes is not None
                   and time.monotonic() - self._t_saved >= 60.0 * minutes)
        f[2] = int(not math.isfinite(loss))
        if self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.MAX)
        if f[2]:
            kept = f"last good checkpoint {self.last_path}" if self.last_path else \
                "no checkpoint written"
            self.close()
            raise Diverged(f"training diverged: non-finite loss at step {step} (epoch {epoch}); "
                           f"{kept}; try a smaller --lr")
        if f[0]:
            self.stopped = signal.Signals(int(f[0])).name
            self.save()
            return True
        every = self.args.checkpoint_every
        if (every and step % every == 0) or f[1]:
            self.save()
        return False

    def after_epoch(self, epoch, step, accuracy) -> bool:
        """Count an evaluation for early stopping (best.h5 on improvement); True means stop."""
        if self.pos.index >= self.steps_per_epoch:  # the epoch is complete
            self.pos = Position(step, epoch + 1, 0, 0.0, 0)
        if self.args.early_stop is None:
            return False
        if self.best is None or accuracy > self.best:
            self.best, self.best_epoch, self.bad = accuracy, epoch, 0
            self.save(self.dir / ckpt.BEST)
        else:
            self.bad += 1
        if self.bad >= self.args.early_stop:
            self.early_stopped = True
            self.say(f"early stop: {self.bad} evaluations without improvement; best test "
                     f"accuracy {100 * self.best:.2f}% at epoch {self.best_epoch}, kept in "
                     f"{self.dir / ckpt.BEST}")
            return True
        return False

    def finish(self) -> dict:
        """Final checkpoint, signal handlers restored; summary fields (exit status, memory)."""
        out = {}
        if self.dir is not None:
            self.save()
            out["checkpoint"] = str(self.last_path) if self.last_path else None
            out.update(checkpoint_writes=self.saves, checkpoint_s=round(self.save_s, 4))
            self.say(f"checkpoints: {self.saves} written in {self.save_s:.2f} s, last "
                     f"{self.last_path}")
        self.close()
        rss = peak_rss_mib()
        all_rss = self.comm.gather(rss, root=0) if self.size > 1 else [rss]
        if self.rank == 0:
            out["peak_rss_mib"] = [round(r, 1) for r in all_rss]
            self.say("peak memory (max RSS) per rank: "
                     + ", ".join(f"{r:.0f} MiB" for r in all_rss))
        if self.early_stopped:
            out.update(early_stopped=True, best_test_accuracy=self.best,
                       best_epoch=self.best_epoch)
        if self.stopped:
            out.update(stopped=self.stopped, exit_status=EXIT_STOPPED)
            self.say(f"stopped by {self.stopped} after step {self.pos.step}: checkpoint "
                     f"{self.last_path}; exit status {EXIT_STOPPED} (requeue, then run the same "
                     f"command with --resume auto)")
        return out

    def close(self):
        """Give back the signal handlers and numpy error settings (also on errors)."""
        self._restore_signals()
        if self._old_err is not None:
            np.seterr(**self._old_err)
            self._old_err = None
