"""Training control: checkpoints and exact resume, stop signals, early stopping, divergence.

The training loop calls a :class:`TrainingControl` at four points; it is three parts, each doing
one thing: :class:`hpcnn.checkpointer.Checkpointer` (save and resume), :class:`StopAgreement`
(signals, time-based checkpoints, divergence: agreed by all ranks every step) and
:class:`EarlyStopping`::

    ctl = TrainingControl(args, comm, say)             # checks the checkpoint folder, signals
    ctl.attach(strategy, ...)                          # what a checkpoint holds
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
import resource
import signal
import sys
import threading
import time

import numpy as np

from hpcnn import checkpoint as ckpt
from hpcnn.argtypes import nonneg_int, positive_float, positive_int
from hpcnn.checkpointer import Checkpointer, Position
from hpcnn.errors import HpcnnError, UsageError

EXIT_DIVERGED = 3
EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): try again later, from the checkpoint
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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


class StopAgreement:
    """Every step, all ranks agree on three flags with one ``Allreduce(MAX)`` of int32: a stop
    signal seen by any rank, a time-based checkpoint due (rank 0's clock), a non-finite loss on
    any rank. So all ranks stop, checkpoint or fail at the same step."""

    def __init__(self, comm, minutes, install):
        self.comm, self.minutes = comm, minutes
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._flags = np.zeros(3, dtype=np.int32)
        self._signal = 0
        self._old_handlers = {}
        self.t_saved = time.monotonic()
        if install and threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old_handlers[s] = signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame):
        self._signal = signum  # acted on at the end of the current step

    def agree(self, loss):
        """(stop signal number or 0, checkpoint due by time, diverged) agreed by every rank."""
        f = self._flags
        f[0] = self._signal
        f[1] = int(self.rank == 0 and self.minutes is not None
                   and time.monotonic() - self.t_saved >= 60.0 * self.minutes)
        f[2] = int(not math.isfinite(loss))
        if self.size > 1:
            from mpi4py import MPI

            self.comm.Allreduce(MPI.IN_PLACE, f, op=MPI.MAX)
        return int(f[0]), bool(f[1]), bool(f[2])

    def close(self):
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}


class EarlyStopping:
    """Stop after ``patience`` evaluations without a better test accuracy."""

    def __init__(self, patience):
        self.patience = patience
        self.best = self.best_epoch = None
        self.bad = 0
        self.stopped = False

    def update(self, epoch, accuracy):
        """Count an evaluation; returns (improved, stop now)."""
        if self.best is None or accuracy > self.best:
            self.best, self.best_epoch, self.bad = accuracy, epoch, 0
            return True, False
        self.bad += 1
        self.stopped = self.bad >= self.patience
        return False, self.stopped

    def state(self):
        return {"patience": self.patience, "best": self.best, "best_epoch": self.best_epoch,
                "bad": self.bad, "stopped": self.stopped}

    def load(self, state):
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.bad = state.get("bad") or 0
        self.stopped = bool(state.get("stopped"))


class TrainingControl:
    """Checkpoints, resume, stop signals and early stopping for one run (see the module doc).

    Collective: every rank constructs it and calls every method at the same points.
    """

    def __init__(self, args, comm, say):
        self.args, self.comm, self.say = args, comm, say
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.pos = Position()
        self.stopped = None  # name of the stop signal, once acted on
        self.early = EarlyStopping(args.early_stop)
        # Overflow is detected (non-finite loss) and reported once; numpy's warnings would only
        # add lines of noise before that message.
        self._old_err = np.seterr(over="ignore", invalid="ignore")
        self.ckpt = Checkpointer(args, comm, say)
        self.stop = StopAgreement(comm, args.checkpoint_minutes, self.ckpt.dir is not None)

    @property
    def dir(self):
        return self.ckpt.dir

    @property
    def last_path(self):
        return self.ckpt.last_path

    def attach(self, strategy, **run):
        """What checkpoints hold: the strategy (model, optimizer) and the run's shape."""
        self.ckpt.attach(strategy, **run)
        self.steps_per_epoch = run["steps_per_epoch"]

    def save(self, path=None):
        saved = self.ckpt.save(self.pos, self.early.state(), path)
        if path is None and saved is not None:
            self.stop.t_saved = time.monotonic()
        return saved

    def resume(self) -> Position:
        """Load ``--resume``'s checkpoint into the strategy on every rank."""
        if not self.args.resume:
            return self.pos
        got = self.ckpt.resume()
        if got is None:
            self.say(f"resume auto: no checkpoint in {self.dir}; starting from scratch")
            return self.pos
        path, meta = got
        self.early.load(meta.get("early_stop") or {})
        self.pos = self.ckpt.position(meta)
        self.ckpt.mark_saved(self.pos, self.early.stopped)
        how = meta.get("strategy") or f"sync {meta.get('sync')}"
        self.say(f"resumed from {path}: step {self.pos.step}, epoch {self.pos.epoch}, batch "
                 f"{self.pos.index} of {self.steps_per_epoch} (written by {meta['ranks']} rank"
                 f"{'s' * (meta['ranks'] > 1)}, {how})")
        if self.early.stopped:
            self.say(f"that run stopped early at epoch {meta['epoch'] - 1} (best test accuracy "
                     f"{100 * (self.early.best or 0):.2f}% at epoch {self.early.best_epoch}): "
                     f"nothing to do")
            self.pos.epoch = self.args.epochs + 1
        return self.pos

    # during training -------------------------------------------------------------------------
    def after_step(self, step, epoch, index, loss, loss_sum, loss_n) -> bool:
        """Agree on stop/checkpoint/divergence after a step; True means stop now."""
        self.pos = Position(step, epoch, index, loss_sum, loss_n)
        sig, due, diverged = self.stop.agree(loss)
        if diverged:
            kept = f"last good checkpoint {self.last_path}" if self.last_path else \
                "no checkpoint written"
            self.close()
            raise Diverged(f"training diverged: non-finite loss at step {step} (epoch {epoch}); "
                           f"{kept}; try a smaller --lr")
        if sig:
            self.stopped = signal.Signals(sig).name
            self.save()
            return True
        every = self.args.checkpoint_every
        if (every and step % every == 0) or due:
            self.save()
        return False

    def after_epoch(self, epoch, step, accuracy) -> bool:
        """Count an evaluation for early stopping (best.h5 on improvement); True means stop."""
        if self.pos.index >= self.steps_per_epoch:  # the epoch is complete
            self.pos = Position(step, epoch + 1, 0, 0.0, 0)
        if self.args.early_stop is None:
            return False
        improved, stop = self.early.update(epoch, accuracy)
        if improved:
            self.save(self.dir / ckpt.BEST)
        if stop:
            self.say(f"early stop: {self.early.bad} evaluations without improvement; best test "
                     f"accuracy {100 * self.early.best:.2f}% at epoch {self.early.best_epoch}, "
                     f"kept in {self.dir / ckpt.BEST}")
        return stop

    def finish(self) -> dict:
        """Final checkpoint, signal handlers restored; summary fields (exit status, memory)."""
        out = {}
        if self.dir is not None:
            self.save()
            out["checkpoint"] = str(self.last_path) if self.last_path else None
            out.update(checkpoint_writes=self.ckpt.saves, checkpoint_s=round(self.ckpt.save_s, 4))
            self.say(f"checkpoints: {self.ckpt.saves} written in {self.ckpt.save_s:.2f} s, last "
                     f"{self.last_path}")
        self.close()
        rss = peak_rss_mib()
        all_rss = self.comm.gather(rss, root=0) if self.size > 1 else [rss]
        if self.rank == 0:
            out["peak_rss_mib"] = [round(r, 1) for r in all_rss]
            self.say("peak memory (max RSS) per rank: "
                     + ", ".join(f"{r:.0f} MiB" for r in all_rss))
        if self.early.stopped:
            out.update(early_stopped=True, best_test_accuracy=self.early.best,
                       best_epoch=self.early.best_epoch)
        if self.stopped:
            out.update(stopped=self.stopped, exit_status=EXIT_STOPPED)
            self.say(f"stopped by {self.stopped} after step {self.pos.step}: checkpoint "
                     f"{self.last_path}; exit status {EXIT_STOPPED} (requeue, then run the same "
                     f"command with --resume auto)")
        return out

    def close(self):
        """Give back the signal handlers and numpy error settings (also on errors)."""
        self.stop.close()
        if self._old_err is not None:
            np.seterr(**self._old_err)
            self._old_err = None
