"""Train a CNN: ``[mpirun -n N] python -m hpcnn.train --net lenet5 --dataset mnist``.

The loop reads top to bottom: parse options, start MPI and pin threads, load data, build the model,
then epochs of (shuffle -> steps -> evaluate -> log). Every rank runs the same code; rank 0 alone
prints and writes files. ``--batch-size`` is the global batch: each of the N ranks takes a disjoint
1/N slice of every global batch, and gradients are averaged, so N ranks reproduce the serial run.
``--batch-per-rank`` fixes the slice instead (weak scaling: the global batch grows with N).

Gradients are averaged in size-capped buckets, each reduced by a non-blocking ``Iallreduce`` as soon
as backward has produced it (``--bucket-mb``, ``--no-overlap``); ``--sync average`` instead lets
every rank step alone and averages the parameters every ``--average-every`` steps.

Test hooks (environment variables, read on every rank; for the fault-tolerance tests only):

- ``HPCNN_FAULT_RANK=R HPCNN_FAULT_STEP=S``: rank R raises ``RuntimeError`` just before its step S
  (1-based), as a bug on one rank would; the job must end at once, naming rank R.
- ``HPCNN_FAULT_DATA_RANK=R``: rank R's dataset loading fails with ``DataError``, as a file missing
  on one node would; every rank must exit 2 with one clear line.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from hpcnn import control, profile
from hpcnn.argtypes import nonneg_float, positive_float, positive_int
from hpcnn.errors import DataError, HpcnnError, RankLocalError, UsageError, end_job
from hpcnn.parallel.runtime import reduce_timing

DATASET_CHOICES = ("mnist", "fashion-mnist", "cifar10", "synthetic", "text")
SYNC_CHOICES = ("grad", "average")
LR_SCALING_CHOICES = ("none", "linear")
LARGE_BATCH = 8192  # Goyal et al. (2017): linear scaling + warm-up holds up to about 8k images


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 from main) instead of printing usage."""

    def error(self, message):
        raise UsageError(message)


def build_parser():
    from hpcnn import argtypes as at  # every number bounded and finite

    p = _Parser(prog="python -m hpcnn.train", description=__doc__.split("\n\n")[0],
                formatter_class=_HelpFormatter)
    p.add_argument("--net", default="lenet5",
                   help="lenet5, mlp, cifar10_quick, owt_cifar, or rnn (with --dataset text)")
    p.add_argument("--dataset", default="mnist", help=", ".join(DATASET_CHOICES))
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset's files (default $HPCNN_DATA/<dataset>, "
                        "then the user cache)")
    p.add_argument("--fallback-synthetic", action="store_true",
                   help="train on synthetic data of the same shape when the dataset's files "
                        "are not found (make train uses it)")
    p.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=positive_int, default=None,
                       help="global batch over all ranks (default: the net's reference batch)")
    batch.add_argument("--batch-per-rank", type=positive_int, default=None,
                       help="images per rank and step; the global batch is this times the ranks "
                            "(weak scaling)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="base learning rate (default: the net's reference)")
    p.add_argument("--lr-policy", default=None, help="fixed, step, inv or cosine")
    p.add_argument("--lr-scaling", default="none", choices=LR_SCALING_CHOICES,
                   help="linear: multiply the learning rate by global batch / the net's "
                        "reference batch (Goyal et al. 2017)")
    p.add_argument("--warmup-epochs", type=nonneg_float, default=0.0,
                   help="ramp the learning rate linearly, step by step, from the reference to "
                        "the scaled rate over this many epochs (with --lr-scaling linear)")
    p.add_argument("--momentum", type=at.finite_float, default=None,
                   help="SGD momentum (default: the net's reference)")
    p.add_argument("--weight-decay", type=nonneg_float, default=None,
                   help="L2 weight decay (default: the net's reference)")
    p.add_argument("--seed", type=at.seed_int, default=0,
                   help="weights, data order and synthetic data (0 to 2**32 - 1)")
    p.add_argument("--threads", type=at.thread_count, default=None,
                   help="Numba and BLAS threads per rank (default: cores / ranks on the node)")
    p.add_argument("--metrics", default=None, help="write one JSON object per epoch here")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many optimizer steps in total")
    p.add_argument("--profile", action="store_true",
                   help="end with a table of where the time went, per op kind and per layer")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write a Chrome trace-event JSON timeline of every rank (Perfetto)")
    p.add_argument("--hidden", type=at.width, default=300, help="hidden width of mlp and rnn")
    p.add_argument("--text", default=None, metavar="PATH",
                   help="--dataset text: a UTF-8 text file (a character-level language model)")
    p.add_argument("--bptt", type=int, default=None, metavar="T",
                   help="rnn: window of T steps of truncated backpropagation through time "
                        "(default 50)")
    p.add_argument("--algo", default="auto", help="convolution strategy (hpcnn.kernels)")
    p.add_argument("--synthetic-train", type=positive_int, default=10000,
                   help="synthetic training images")
    p.add_argument("--synthetic-test", type=positive_int, default=2000,
                   help="synthetic test images")
    p.add_argument("--synthetic-shape", type=at.image_shape, default=None,
                   help="C,H,W of synthetic images (default: the net's reference input)")
    p.add_argument("--log-interval", type=positive_float, default=2.0,
                   help="seconds between progress lines")
    g = p.add_argument_group("parallelism and synchronisation between ranks")
    g.add_argument("--parallel", default="data", choices=("data", "hybrid"),
                   help="data: every rank holds the whole model; hybrid: convolutions "
                        "data-parallel, fully connected layers split over ranks (Krizhevsky)")
    g.add_argument("--grid", default=None, metavar="DxM",
                   help="hybrid: D data groups x M ranks splitting the head (default 1xN)")
    g.add_argument("--hybrid-scheme", default=None, choices=("a", "b", "c"),
                   help="hybrid: how features reach the head: a all-gather, b broadcast "
                        "rounds, c all-to-all rounds (default a)")
    g.add_argument("--sync", default="grad", choices=SYNC_CHOICES,
                   help="grad: average gradients every step; average: step locally and average "
                        "parameters every --average-every steps")
    g.add_argument("--bucket-mb", type=positive_float, default=None,
                   help="gradient bucket size cap in MiB (--sync grad; default 25)")
    g.add_argument("--no-overlap", action="store_true",
                   help="reduce gradients after backward instead of during it (--sync grad)")
    g.add_argument("--average-every", type=positive_int, default=None,
                   help="steps between parameter averages (--sync average; default 1)")
    g.add_argument("--average-optimizer-state", action="store_true",
                   help="average the momentum buffers too (--sync average)")
    control.add_arguments(p)
    return p


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already say and X means something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False,
                                                                    argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def validate(args):
    """Checks that need no data and no MPI: identical on every rank, so safe to raise anywhere."""
    from hpcnn import lm
    from hpcnn.kernels import conv as conv_kernels
    from hpcnn.nn import NETS
    from hpcnn.optim import LR_POLICIES

    if args.net not in NETS and args.net != lm.NET:
        raise UsageError(f"unknown net {args.net!r}; choose from {', '.join(NETS)}, {lm.NET}")
    lm.validate(args)
    if args.dataset not in DATASET_CHOICES and not args.dataset.startswith("h5:"):
        raise UsageError(f"unknown dataset {args.dataset!r}; choose from "
                         f"{', '.join(DATASET_CHOICES)}")
    if args.lr_policy is not None and args.lr_policy not in LR_POLICIES:
        raise UsageError(f"unknown lr policy {args.lr_policy!r}; choose from "
                         f"{', '.join(LR_POLICIES)}")
    algos = getattr(conv_kernels, "ALGOS", None)
    if algos is not None and args.algo != "auto" and args.algo not in algos:
        raise UsageError(f"unknown convolution algo {args.algo!r}; choose from auto, "
                         f"{', '.join(algos)}")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.weight_decay is not None and args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.log_interval <= 0:
        raise UsageError(f"--log-interval must be positive, got {args.log_interval}")
    if args.dataset == "synthetic" or args.fallback_synthetic:
        c, h, w = args.synthetic_shape or NETS[args.net][2]
        gib = 4 * (args.synthetic_train + args.synthetic_test) * c * h * w / 2**30
        if gib > 4:
            raise UsageError(f"synthetic data of {args.synthetic_train} + {args.synthetic_test} "
                             f"images of {c}x{h}x{w} would take {gib:.3g} GiB of float32 per "
                             f"rank, more than the 4 GiB allowed")
    from hpcnn.kernels import conv, isa

    conv.DEFAULT_TUNER.mode()  # a bad HPCNN_AUTOTUNE is a UsageError here, before any work
    isa.select()  # likewise a bad HPCNN_ISA, or one wider than this CPU runs
    validate_sync(args)
    control.validate(args)


def validate_sync(args):
    """The options of synchronisation between ranks and of large-batch training agree."""
    if args.sync == "grad":
        for flag, given in (("--average-every", args.average_every is not None),
                            ("--average-optimizer-state", args.average_optimizer_state)):
            if given:
                raise UsageError(f"{flag} needs --sync average")
    else:
        for flag, given in (("--bucket-mb", args.bucket_mb is not None),
                            ("--no-overlap", args.no_overlap)):
            if given:
                raise UsageError(f"{flag} applies to --sync grad only")
    if args.warmup_epochs > 0 and args.lr_scaling == "none":
        raise UsageError("--warmup-epochs ramps up to the scaled learning rate: "
                         "use it with --lr-scaling linear")
    validate_parallel(args)


def validate_parallel(args):
    """--parallel, --grid and --hybrid-scheme agree with each other and with --sync and --net."""
    from hpcnn.parallel.factory import parse_grid

    if args.parallel == "data":
        for flag, given in (("--grid", args.grid is not None),
                            ("--hybrid-scheme", args.hybrid_scheme is not None)):
            if given:
                raise UsageError(f"{flag} needs --parallel hybrid")
        return
    if args.sync != "grad":
        raise UsageError("--parallel hybrid sums gradients every step: --sync average is a "
                         "data-parallel option")
    if args.grid is not None:
        parse_grid(args.grid)


def scaled_lr(ref_lr, global_batch, ref_batch, scaling):
    """Goyal et al.'s linear scaling rule: the learning rate grows with the global batch."""
    if scaling == "none":
        return ref_lr
    if scaling == "linear":
        return ref_lr * global_batch / ref_batch
    raise ValueError(f"unknown lr scaling {scaling!r}; choose from {', '.join(LR_SCALING_CHOICES)}")


def lr_at(step, policy, base_lr, policy_args, ref_lr=None, warmup_steps=0):
    """The learning rate of optimizer step ``step`` (0-based).

    The policy runs on the (scaled) ``base_lr``; during the first ``warmup_steps`` steps the result
    is multiplied by a factor rising linearly from ``ref_lr / base_lr`` to 1, so that with the
    fixed policy the rate goes from ``ref_lr`` to ``base_lr`` (gradual warm-up).
    """
    from hpcnn.optim import learning_rate

    lr = learning_rate(policy, base_lr, step, **policy_args)
    if warmup_steps > 0 and step < warmup_steps and ref_lr is not None:
        r = ref_lr / base_lr
        lr *= r + (1.0 - r) * step / warmup_steps
    return lr


def _env_int(name):
    """A test-hook variable as an int, or None when unset."""
    v = os.environ.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {v!r}") from None


class Metrics:
    """Rank 0's JSON-lines metrics file; opened up front so an unwritable path fails early."""

    def __init__(self, path):
        self.f = None
        if path:
            try:
                self.f = open(path, "w")
            except OSError as e:
                raise UsageError(f"cannot write metrics file {path}: {e.strerror}") from None

    def write(self, record):
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()


def load_data(args, input_shape):
    """Load the dataset, or synthetic data when asked or (with --fallback-synthetic) needed."""
    from hpcnn import data, lm

    if args.dataset == lm.DATASET:
        return lm.load(args), None
    if args.dataset == "synthetic":
        shape = args.synthetic_shape or input_shape
        return data.load_dataset("synthetic", synthetic_shape=shape,
                                 synthetic_train=args.synthetic_train,
                                 synthetic_test=args.synthetic_test, seed=args.seed), None
    if args.fallback_synthetic:
        found, reason = data.find_dataset_files(args.dataset, args.data_dir)
        if found is None:
            shape = args.synthetic_shape or input_shape
            ds = data.load_dataset("synthetic", synthetic_shape=shape,
                                   synthetic_train=args.synthetic_train,
                                   synthetic_test=args.synthetic_test, seed=args.seed)
            return ds, f"{args.dataset} not found ({reason}); using synthetic data instead"
        return data.load_dataset(args.dataset, found), f"{args.dataset} found: {reason}"
    return data.load_dataset(args.dataset, args.data_dir), None


def fmt_time(s):
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


TIMING_KEYS = ("compute_s", "allreduce_wait_s", "data_s")
EVAL_BATCH = 500


def eval_pieces(n, size, rank, batch=EVAL_BATCH):
    """This rank's test examples ``[lo, hi)`` cut into pieces, the same number on every rank.

    Hybrid evaluation is collective (every rank of a data group runs each piece's head together),
    so the count of pieces must not depend on the rank: it follows from the smallest shard.
    """
    lo, hi = n * rank // size, n * (rank + 1) // size
    pieces = max(1, -(-(n // size) // batch))
    cuts = np.linspace(lo, hi, pieces + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]


def evaluate(strategy, x, y, comm, batch=EVAL_BATCH):
    """Accuracy on (x, y), each rank scoring its contiguous shard; counts are summed."""
    size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
    strategy.prepare_eval()
    correct = 0
    for a, b in eval_pieces(len(x), size, rank, batch):
        correct += int((strategy.predict(x[a:b]) == y[a:b]).sum())
    if size > 1:
        correct = comm.allreduce(correct)
    return correct / len(x)


def eval_batch_sizes(n, size, batch=EVAL_BATCH):
    """The distinct batch sizes :func:`evaluate` uses on any of ``size`` ranks."""
    return sorted({b - a for rank in range(size) for a, b in eval_pieces(n, size, rank, batch)})


def warm_kernel_cache(comm, model, x, y, eval_batches=(), loss=None):
    """Rank 0 compiles (or loads) every kernel of a step and tunes the convolutions first; the
    others wait, then load the kernels and adopt rank 0's choices of convolution strategy.

    Call it on the whole (unsplit) model before a strategy takes it: the forward of a hybrid
    strategy holds collectives, so no rank could run it alone. Numba's on-disk cache is not safe
    to fill from many processes at once (numba issues #4807, #10128), and a shared file system
    makes that every rank of the job. One forward and backward on rank 0 fills it; gradients are
    zeroed after, parameters are untouched. ``algo="auto"`` times the strategies on first use:
    tuned on rank 0 alone (the timings undisturbed by the other ranks) and shared, every rank
    computes with the same strategies. ``eval_batches``: the test-batch sizes of any rank, tuned
    here too (a forward of the feature stage on zeros). The choices shared are those of the
    autotuners of the model's "auto" layers (``layer.tuner``; None: the kernels' default one).
    """
    from hpcnn.kernels import _jit, conv
    from hpcnn.nn.loss import SOFTMAX_CE

    if comm is None or comm.Get_size() == 1:
        return
    tuners = {}  # id -> tuner, in layer order (the same on every rank)
    for layer in model.layers:
        if getattr(layer, "algo", None) == "auto":
            tuner = getattr(layer, "tuner", None)
            tuner = conv.DEFAULT_TUNER if tuner is None else tuner
            tuners.setdefault(id(tuner), tuner)
    auto = bool(tuners)
    if not (_jit.CACHE or auto):
        return
    if comm.Get_rank() == 0:
        _, dlogits = (loss or SOFTMAX_CE)(model.forward(x), y)
        model.backward(dlogits)
        model.zero_grad()
        for n in eval_batches if auto else ():
            model.forward(np.zeros((n, *x.shape[1:]), dtype=x.dtype), train=False,
                          upto=model.head_start)
    for tuner in tuners.values():
        choices = comm.bcast(tuner.choices() if comm.Get_rank() == 0 else None)
        if comm.Get_rank() != 0:
            tuner.set_choices(choices)
    if not auto:
        comm.Barrier()


def default_autotune_cache():
    """Where ``algo="auto"`` keeps its choices unless HPCNN_AUTOTUNE_CACHE says otherwise: the
    user cache (``$XDG_CACHE_HOME/hpcnn``, default ``~/.cache/hpcnn``), so that the next run on
    this CPU with these threads makes the same choices and gives the same numbers."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "hpcnn", "autotune.json")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
        return None  # autotune then keeps its choices in memory
    return path


@dataclass
class RunConfig:
    """The run's resolved settings: options, the net's reference solver and the rank count."""

    batch: int
    per_rank: int
    ref_lr: float
    lr: float
    policy: str
    momentum: float
    weight_decay: float
    steps_per_epoch: int = 0
    total_steps: int = 0
    policy_args: dict = field(default_factory=dict)
    warmup_steps: int = 0
    per_example: int = 1  # items per example of a batch, for the rates: T characters of a text

    @classmethod
    def resolve(cls, args, solver, size):
        if args.batch_per_rank is not None:
            batch = args.batch_per_rank * size
        else:
            batch = args.batch_size or solver.batch_size
        if batch < size or batch % size:
            raise UsageError(f"global batch {batch} must be a multiple of the {size} ranks "
                             f"(and at least {size})")
        ref_lr = args.lr or solver.lr
        return cls(batch=batch, per_rank=batch // size, ref_lr=ref_lr,
                   lr=scaled_lr(ref_lr, batch, solver.batch_size, args.lr_scaling),
                   policy=args.lr_policy or solver.lr_policy,
                   momentum=solver.momentum if args.momentum is None else args.momentum,
                   weight_decay=(solver.weight_decay if args.weight_decay is None
                                 else args.weight_decay),
                   policy_args=dict(solver.policy_args))

    def fit(self, args, n_train):
        """Steps, and the schedule's step-dependent arguments, for ``n_train`` images."""
        if self.batch > n_train:
            raise UsageError(f"global batch {self.batch} is larger than the {n_train} training "
                             f"images")
        self.steps_per_epoch = n_train // self.batch  # the last partial batch is dropped
        self.total_steps = self.steps_per_epoch * args.epochs
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        if self.policy == "cosine":
            self.policy_args["max_iter"] = self.total_steps
        if self.policy == "step":
            self.policy_args.setdefault("stepsize", max(1, self.total_steps // 3))
        self.warmup_steps = int(round(args.warmup_epochs * self.steps_per_epoch))

    def lr_at(self, step):
        return lr_at(step, self.policy, self.lr, self.policy_args, self.ref_lr, self.warmup_steps)

    def schedule(self):
        """What checkpoints record of the learning-rate schedule."""
        return dict(lr_at=self.lr_at, policy=self.policy, base_lr=self.lr, ref_lr=self.ref_lr,
                    policy_args=self.policy_args, warmup_steps=self.warmup_steps)


def make_strategy(args, comm, model, cfg, loss=None):
    """The parallel strategy the options ask for, with SGD over the parameters a rank holds."""
    from functools import partial

    from hpcnn.optim import SGD
    from hpcnn.parallel import build_strategy

    optimizer = partial(SGD, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return build_strategy(comm, model, optimizer, parallel=args.parallel, sync=args.sync,
                          grid=args.grid, scheme=args.hybrid_scheme, bucket_mb=args.bucket_mb,
                          overlap=not args.no_overlap, average_every=args.average_every,
                          average_optimizer_state=args.average_optimizer_state, loss=loss)


def run(args, comm, threads):
    """Train as ``args`` say on the ranks of ``comm``; returns the summary record (all ranks).

    ``algo="auto"`` keeps its choices in the run's own autotuner (made with the model, in
    :func:`_setup`), its cache file in the user cache (unless HPCNN_AUTOTUNE_CACHE names a
    file), so the next run makes the same choices.
    """
    return _run(args, comm, threads)


class Log:
    """Rank 0's lines: the header, progress, epoch lines, the end."""

    def __init__(self, master, interval):
        self.master, self.interval = master, interval
        self.unit = "img"  # what the rates count: "char" for a text
        self.reset_window()

    def say(self, msg):
        if self.master:
            print(msg, flush=True)

    def reset_window(self):
        self.win_loss, self.win_n, self.t_win, self.img_win = 0.0, 0, time.perf_counter(), 0

    def progress(self, epoch, step, total, loss, images):
        self.win_loss += loss
        self.win_n += 1
        self.img_win += images
        now = time.perf_counter()
        if now - self.t_win >= self.interval and self.master:
            rate = self.img_win / (now - self.t_win)
            eta = (total - step) * images / rate
            print(f"epoch {epoch} step {step}/{total} loss {self.win_loss / self.win_n:.4f} "
                  f"{rate:,.0f} {self.unit}/s eta {fmt_time(eta)}", flush=True)
            self.reset_window()

    def header(self, args, ds, strategy, cfg, size, threads, solver):
        from hpcnn import __version__, lm

        self.unit = "char" if lm.is_text(ds) else "img"
        self.say(f"hpcnn {__version__} | net {args.net} ({strategy.num_params():,} parameters) "
                 f"| dataset {ds.name} {'x'.join(map(str, ds.input_shape))}, "
                 f"{len(ds.x_train)} train / {len(ds.x_test)} test")
        self.say(f"source: {ds.source}")
        lr_desc = f"lr {cfg.lr:g} {cfg.policy}"
        if args.lr_scaling == "linear":
            lr_desc += f" ({cfg.ref_lr:g} x {cfg.batch}/{solver.batch_size} linear scaling"
            lr_desc += f", warm-up {args.warmup_epochs:g} epochs)" if cfg.warmup_steps else ")"
        self.say(f"ranks {size} x threads {threads} | batch {cfg.batch} global ({cfg.per_rank} "
                 f"per rank) | {lr_desc} | momentum {cfg.momentum:g} | weight decay "
                 f"{cfg.weight_decay:g} | epochs {args.epochs} ({cfg.steps_per_epoch} steps "
                 f"each) | seed {args.seed}")
        if size > 1 or args.parallel != "data":
            self.say(strategy.describe())
        if cfg.batch > LARGE_BATCH:
            self.say(f"warning: global batch {cfg.batch} is above {LARGE_BATCH}: Goyal et al. "
                     f"(2017) saw accuracy fall beyond 8k images even with linear scaling and "
                     f"warm-up")

    def epoch_line(self, record, timing):
        if not self.master:
            return
        c, w, d = (timing[k] for k in TIMING_KEYS)
        kinds = ", ".join(f"{k} {v / 2**20:.2f}" for k, v in sorted(record["bytes_per_step"]
                                                                    .items()) if v)
        if "test_perplexity" in record:
            scores = (f"train loss {record['train_loss']:.4f} (perplexity "
                      f"{record['train_perplexity']:.2f}) | held-out perplexity "
                      f"{record['test_perplexity']:.2f}, next-char accuracy "
                      f"{100 * record['test_accuracy']:.2f}%")
        else:
            scores = (f"train loss {record['train_loss']:.4f} | test accuracy "
                      f"{100 * record['test_accuracy']:.2f}%")
        print(f"epoch {record['epoch']} done: {scores} | "
              f"{record['images_per_second']:,.0f} {self.unit}/s | per step compute "
              f"{1e3 * c['mean']:.1f} ms, comm wait {1e3 * w['mean']:.1f} ms (max "
              f"{1e3 * w['max']:.1f}), data {1e3 * d['mean']:.1f} ms"
              + (f", MiB sent {kinds}" if kinds else "")
              + f" | elapsed {fmt_time(record['elapsed_s'])}", flush=True)


@dataclass
class EpochResult:
    steps: int = 0  # steps taken in this epoch by this call
    loss_sum: float = 0.0
    loss_n: int = 0
    t_data: float = 0.0
    t_step: float = 0.0
    stopped: bool = False
    seconds: float = 0.0  # wall time of the epoch's steps


def run_epoch(strategy, ctl, batches, log, cfg, epoch, step, first, loss_sum, loss_n, fault):
    """Steps ``first ..`` of one epoch; returns an :class:`EpochResult` (sums include the
    ``loss_sum``/``loss_n`` carried in from a resumed epoch)."""
    res = EpochResult(loss_sum=loss_sum, loss_n=loss_n)
    for i in range(first, cfg.steps_per_epoch):
        if step >= cfg.total_steps:
            break
        fault(step)
        ta = time.perf_counter()
        with profile.region("data"):
            x, y = next(batches)
        tb = time.perf_counter()
        loss = strategy.step(x, y, cfg.lr_at(step))
        res.t_data += tb - ta
        res.t_step += time.perf_counter() - tb
        step += 1
        res.steps += 1
        res.loss_sum += loss
        res.loss_n += 1
        log.progress(epoch, step, cfg.total_steps, loss, cfg.batch * cfg.per_example)
        if ctl.after_step(step, epoch, i + 1, loss, res.loss_sum, res.loss_n):
            res.stopped = True  # a stop signal: checkpoint written
            break
    return res


def _fault_hooks(rank):
    """The test hooks of the module docstring: (step fault, data fault) callables."""
    fault_rank, fault_step = _env_int("HPCNN_FAULT_RANK"), _env_int("HPCNN_FAULT_STEP")
    fault_data_rank = _env_int("HPCNN_FAULT_DATA_RANK")

    def step_fault(step):
        if fault_rank == rank and fault_step == step + 1:
            raise RuntimeError(f"injected failure before step {step + 1} "
                               f"(HPCNN_FAULT_RANK/HPCNN_FAULT_STEP test hook)")

    def data_fault():
        if fault_data_rank == rank:
            raise DataError("cannot read the dataset (HPCNN_FAULT_DATA_RANK test hook)")

    return step_fault, data_fault


def _setup(args, comm, log):
    """Data, model, strategy and the resolved configuration, checked alike on every rank."""
    from hpcnn import lm
    from hpcnn.kernels import autotune, conv
    from hpcnn.nn import NETS, build_net
    from hpcnn.parallel import agree

    rank, size = comm.Get_rank(), comm.Get_size()
    _, solver, net_shape = lm.ENTRY if args.net == lm.NET else NETS[args.net]
    cfg = RunConfig.resolve(args, solver, size)
    step_fault, data_fault = _fault_hooks(rank)

    def load(*a):
        data_fault()
        return load_data(*a)

    ds, why = agree(comm, load, args, net_shape)
    if why:
        log.say(f"data: {why}")
    if lm.is_text(ds):  # windows of characters: agree, the text may be too short
        cfg.per_example = ds.bptt
        cfg.fit(args, agree(comm, ds.train_examples, cfg.batch))
        model, loss = lm.build(args, ds)
        x, y = lm.sample_batch(ds, cfg.per_rank, args.hidden)
        warm_kernel_cache(comm, model, x, y, loss=loss)
        return ds, agree(comm, make_strategy, args, comm, model, cfg, loss), cfg, solver, \
            step_fault
    cfg.fit(args, len(ds.x_train))
    kwargs = {"algo": args.algo}
    if args.net == "mlp":
        kwargs = {"hidden": args.hidden}
    # the run's own autotuner: its choices kept in the user cache (HPCNN_AUTOTUNE_CACHE wins)
    tuner = autotune.Autotuner(conv.ALGOS, cache=default_autotune_cache())
    if args.algo == "auto" and tuner.mode() == "tune":
        agree(comm, tuner.check_cache)  # an unusable cache file: one line, exit 2, every rank
    model = build_net(args.net, ds.input_shape, ds.num_classes, seed=args.seed, tuner=tuner,
                      **kwargs)
    warm_kernel_cache(comm, model, ds.x_train[:cfg.per_rank], ds.y_train[:cfg.per_rank],
                      eval_batch_sizes(len(ds.x_test), size))
    strategy = agree(comm, make_strategy, args, comm, model, cfg)
    return ds, strategy, cfg, solver, step_fault


def _epoch_record(comm, strategy, res, epoch, step, acc, images_per_second, t0, lr):
    """The metrics record of an epoch, and the per-step timing over ranks (rank 0)."""
    n = max(1, res.loss_n)
    t = strategy.timings()
    wait = sum(t["wait_s"].values())
    steps = max(1, t["steps"])
    timing = reduce_timing(comm, {"compute_s": (res.t_step - wait) / steps,
                                  "allreduce_wait_s": wait / steps,
                                  "data_s": res.t_data / steps})
    record = {"epoch": epoch, "step": step, "train_loss": res.loss_sum / n,
              "test_accuracy": acc, "images_per_second": images_per_second,
              "elapsed_s": time.perf_counter() - t0, "lr": lr,
              "wait_s_per_step": {k: v / steps for k, v in t["wait_s"].items()},
              "bytes_per_step": {k: v / steps for k, v in t["bytes"].items()}}
    if timing is not None:
        record["timing"] = dict(timing, per="step", steps=res.loss_n)
    return record, timing


def _epoch(args, ds, strategy, ctl, log, cfg, epoch, step, pos, rank, step_fault):
    """This rank's steps of one epoch (from ``pos`` when it is the resumed one)."""
    from hpcnn import lm
    from hpcnn.data.batches import EpochBatches

    resumed = epoch == pos.epoch
    first = pos.index if resumed else 0
    in_memory = isinstance(ds.x_train, np.ndarray)  # else an h5: store, read ahead
    if lm.is_text(ds):  # the rank's streams in order, their hidden states carried
        batches = ds.epoch_batches(cfg.batch, cfg.per_rank, rank, first, cfg.steps_per_epoch,
                                   lm.hidden(strategy),
                                   lm.carried(strategy, cfg.per_rank, resumed and first > 0))
    else:
        # One global shuffle per epoch, identical on every rank (seeded by seed and epoch).
        order = np.random.default_rng([args.seed, epoch]).permutation(len(ds.x_train))
        batches = EpochBatches(ds.x_train, ds.y_train, order, cfg.batch, cfg.per_rank, rank,
                               first, cfg.steps_per_epoch, 0 if in_memory else args.prefetch)
    strategy.reset_timings()
    log.reset_window()
    t = time.perf_counter()
    try:
        res = run_epoch(strategy, ctl, batches, log, cfg, epoch, step, first,
                        pos.loss_sum if resumed else 0.0, pos.loss_n if resumed else 0,
                        step_fault)
    finally:
        batches.close()
    res.seconds = time.perf_counter() - t
    return res


@dataclass
class Throughput:
    """Training time and images over the epochs of this run (evaluation excluded)."""

    t0: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    images: int = 0

    def add(self, res, batch):
        self.seconds += res.seconds
        self.images += res.steps * batch
        return self.images / max(self.seconds, 1e-9)


def _end_of_epoch(comm, ds, strategy, res, epoch, step, cfg, speed, metrics, log):
    """Evaluate, then log and record the epoch; returns (test accuracy, metrics record)."""
    from hpcnn import lm

    size = comm.Get_size()
    ips = speed.add(res, cfg.batch * cfg.per_example)
    if size > 1:
        res.loss_sum = comm.allreduce(res.loss_sum) / size
    text = {}
    with profile.region("evaluate"):
        if lm.is_text(ds):  # held-out perplexity; "accuracy": of the next character
            ppl, acc, loss = ds.evaluate(strategy, comm, cfg.batch, lm.hidden(strategy))
            train = res.loss_sum / max(1, res.loss_n)
            text = {"train_perplexity": float(np.exp(train)), "test_perplexity": ppl,
                    "test_loss": loss, "chars_per_second": ips}
        else:
            acc = evaluate(strategy, ds.x_test, ds.y_test, comm)
    record, timing = _epoch_record(comm, strategy, res, epoch, step, acc, ips, speed.t0,
                                   cfg.lr_at(max(0, step - 1)))
    record.update(text)
    metrics.write(record)
    log.epoch_line(record, timing)
    return acc, record


def _run(args, comm, threads):
    from hpcnn.parallel import agree

    rank, size = comm.Get_rank(), comm.Get_size()
    log = Log(rank == 0, args.log_interval)
    validate(args)
    metrics = agree(comm, Metrics, args.metrics if rank == 0 else None)
    agree(comm, _check_writable, args.trace if rank == 0 else None, "trace file")
    ctl = control.TrainingControl(args, comm, log.say)
    ds, strategy, cfg, solver, step_fault = _setup(args, comm, log)
    ctl.attach(strategy, batch=cfg.batch, steps_per_epoch=cfg.steps_per_epoch,
               n_train=len(ds.x_train), schedule=cfg.schedule())
    pos = ctl.resume()
    log.header(args, ds, strategy, cfg, size, threads, solver)
    if args.profile or args.trace:
        profile.enable()

    step, acc, record, speed = pos.step, float("nan"), {}, Throughput()
    for epoch in range(pos.epoch, args.epochs + 1):
        if step >= cfg.total_steps or ctl.stopped:
            break
        res = _epoch(args, ds, strategy, ctl, log, cfg, epoch, step, pos, rank, step_fault)
        step += res.steps
        if res.stopped:
            break
        acc, record = _end_of_epoch(comm, ds, strategy, res, epoch, step, cfg, speed, metrics,
                                    log)
        if ctl.after_epoch(epoch, step, acc):
            break  # early stopping
    return _finish(args, comm, threads, ds, strategy, cfg, ctl, metrics, log, record, step,
                   acc, speed)


def _finish(args, comm, threads, ds, strategy, cfg, ctl, metrics, log, record, step, acc,
            speed):
    """The summary record (metrics, last line), the final checkpoint, the profile."""
    summary = dict(record, step=step, summary=True, net=args.net, dataset=ds.name,
                   ranks=comm.Get_size(), threads=threads, batch_size=cfg.batch,
                   batch_per_rank=cfg.per_rank, sync=args.sync, parallel=args.parallel,
                   strategy=strategy.describe(), elapsed_s=time.perf_counter() - speed.t0,
                   **ctl.finish())
    metrics.write(summary)
    metrics.close()
    ppl = (f"held-out perplexity {summary['test_perplexity']:.2f}, "
           if "test_perplexity" in summary else "")
    log.say(f"finished: {step} steps | {ppl}test accuracy {100 * acc:.2f}% | "
            f"{summary.get('images_per_second', 0):,.0f} {log.unit}/s | "
            f"total {fmt_time(summary['elapsed_s'])}")
    if profile.enabled():
        profile.disable()
        finish_profile(args, comm)
    return summary


def _check_writable(path, what):
    """Fail early (UsageError) when ``path`` cannot be written; None passes."""
    if path:
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            raise UsageError(f"cannot write {what} {path}: {e.strerror}") from None


def finish_profile(args, comm):
    """Rank 0 prints the profile tables (its own rank's) and writes every rank's trace."""
    rank = comm.Get_rank()
    if args.profile and rank == 0:
        print(f"\n{profile.report()}", flush=True)
    if args.trace:
        # once, at the end of the run: pickling through gather is fine here
        events = comm.gather(profile.trace_events(rank), root=0)
        if rank == 0:
            profile.write_trace(args.trace, events=[e for part in events for e in part])
            print(f"trace: {args.trace} ({comm.Get_size()} rank(s)); open it at "
                  f"https://ui.perfetto.dev", flush=True)


def _launcher_rank():
    """This process's rank as the launcher's environment says (before MPI starts), else 0."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def main(argv=None):
    try:
        args = parse_args(argv)
    except UsageError as e:
        # Every rank parses the same argv and exits alike; rank 0 alone says why.
        if _launcher_rank() == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    # MPI first (to count the ranks on this node), then pin threads, then import numpy/numba:
    # BLAS and Numba read their thread counts when they are first loaded.
    from mpi4py import MPI

    from hpcnn import threads as thr
    from hpcnn.parallel import watchdog
    from hpcnn.parallel.runtime import abort_on_exception, local_size

    comm = MPI.COMM_WORLD
    watchdog.start(comm)  # a rank that dies (even by SIGKILL) ends the job, whatever the launcher
    n_threads = args.threads or thr.default_threads(local_size(comm))
    thr.pin_env(n_threads)
    try:
        n_threads = thr.apply(n_threads)
        summary = run(args, comm, n_threads)
    except RankLocalError as e:  # one rank, mid-run (a store read): the others may be waiting
        if comm.Get_size() == 1:  # in a collective, so end them all
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
        end_job(comm, e)
    except HpcnnError as e:
        # Raised alike on every rank (input checks are identical everywhere, and `agree`
        # shares a failure of one rank with all), so every rank exits and none is left waiting.
        if comm.Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return getattr(e, "exit_status", 2)  # 3: diverged (hpcnn.control)
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # a bug or a crash on this rank only: end the whole job now
        if isinstance(e, SystemExit):
            raise
        abort_on_exception(comm, e)
    finally:
        watchdog.stop()  # this rank is done: its exit is not a death
    return summary.get("exit_status", 0)  # 75: stopped by a signal, checkpoint written


if __name__ == "__main__":
    sys.exit(main())
