"""Train a CNN: ``[mpirun -n N] python -m hpcnn.train --net lenet5 --dataset mnist``.

The loop reads top to bottom: parse options, start MPI and pin threads, load data, build the model,
then epochs of (shuffle -> steps -> evaluate -> log). Every rank runs the same code; rank 0 alone
prints and writes files. ``--batch-size`` is the global batch: each of the N ranks takes a disjoint
1/N slice of every global batch, and gradients are averaged, so N ranks reproduce the serial run.
"""

import argparse
import json
import math
import sys
import time

from hpcnn.errors import HpcnnError, UsageError

DATASET_CHOICES = ("mnist", "fashion-mnist", "cifar10", "synthetic")


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return v


def shape_arg(text):
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}")
    return dims


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 from main) instead of printing usage."""

    def error(self, message):
        raise UsageError(message)


def build_parser():
    p = _Parser(prog="python -m hpcnn.train", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--net", default="lenet5", help="lenet5, mlp or cifar10_quick")
    p.add_argument("--dataset", default="mnist", help=", ".join(DATASET_CHOICES))
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset's files (default $HPCNN_DATA/<dataset>, "
                        "then the user cache)")
    p.add_argument("--fallback-synthetic", action="store_true",
                   help="train on synthetic data of the same shape when the dataset's files "
                        "are not found (make train uses it)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="global batch over all ranks (default: the net's reference batch)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="base learning rate (default: the net's reference)")
    p.add_argument("--lr-policy", default=None, help="fixed, step, inv or cosine")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="weights, data order and synthetic data")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="Numba and BLAS threads per rank (default: cores / ranks on the node)")
    p.add_argument("--metrics", default=None, help="write one JSON object per epoch here")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many optimizer steps in total")
    p.add_argument("--hidden", type=positive_int, default=300, help="hidden width of mlp")
    p.add_argument("--algo", default="auto", help="convolution strategy (hpcnn.kernels)")
    p.add_argument("--synthetic-train", type=positive_int, default=10000,
                   help="synthetic training images")
    p.add_argument("--synthetic-test", type=positive_int, default=2000)
    p.add_argument("--synthetic-shape", type=shape_arg, default=None,
                   help="C,H,W of synthetic images (default: the net's reference input)")
    p.add_argument("--log-interval", type=float, default=2.0,
                   help="seconds between progress lines")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def validate(args):
    """Checks that need no data and no MPI: identical on every rank, so safe to raise anywhere."""
    from hpcnn.kernels import conv as conv_kernels
    from hpcnn.nn import NETS
    from hpcnn.optim import LR_POLICIES

    if args.net not in NETS:
        raise UsageError(f"unknown net {args.net!r}; choose from {', '.join(NETS)}")
    if args.dataset not in DATASET_CHOICES:
        raise UsageError(f"unknown dataset {args.dataset!r}; choose from "
                         f"{', '.join(DATASET_CHOICES)}")
    if args.lr_policy is not None and args.lr_policy not in LR_POLICIES:
        raise UsageError(f"unknown lr policy {args.lr_policy!r}; choose from "
                         f"{', '.join(LR_POLICIES)}")
    algos = getattr(conv_kernels, "ALGOS", None)
    if algos is not None and args.algo != "auto" and args.algo not in algos:
        choices = ", ".join(["auto", *algos])
        raise UsageError(f"unknown convolution algo {args.algo!r}; choose from {choices}")
    if args.momentum is not None and not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1), got {args.momentum}")
    if args.weight_decay is not None and args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.log_interval <= 0:
        raise UsageError(f"--log-interval must be positive, got {args.log_interval}")


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
    from hpcnn import data

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
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def evaluate(model, x, y, comm, batch=500):
    """Accuracy on (x, y), each rank scoring its contiguous shard; counts are summed."""
    import numpy as np

    size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
    n = len(x)
    lo, hi = n * rank // size, n * (rank + 1) // size
    correct = 0
    for i in range(lo, hi, batch):
        logits = model.forward(x[i:min(i + batch, hi)], train=False)
        correct += int((np.argmax(logits, axis=1) == y[i:min(i + batch, hi)]).sum())
    if size > 1:
        correct = comm.allreduce(correct)
    return correct / n


def train_step(model, dp, opt, x, y, lr):
    """One synchronous SGD step on this rank's slice (x, y) of the global batch; returns its loss."""
    from hpcnn.kernels import softmax_cross_entropy

    model.zero_grad()
    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    model.backward(dlogits)
    dp.sync_grads()
    opt.step(lr)
    return loss


def run(args, comm, threads):
    import numpy as np

    from hpcnn import __version__
    from hpcnn.nn import NETS, build_net
    from hpcnn.optim import SGD, learning_rate
    from hpcnn.parallel import DataParallel, agree

    rank, size = comm.Get_rank(), comm.Get_size()
    master = rank == 0

    def say(msg):
        if master:
            print(msg, flush=True)

    validate(args)
    _, solver, net_shape = NETS[args.net]
    batch = args.batch_size or solver.batch_size
    if batch < size or batch % size:
        raise UsageError(f"global batch {batch} must be a multiple of the {size} ranks "
                         f"(and at least {size})")
    per_rank = batch // size
    lr = args.lr or solver.lr
    policy = args.lr_policy or solver.lr_policy
    momentum = solver.momentum if args.momentum is None else args.momentum
    wd = solver.weight_decay if args.weight_decay is None else args.weight_decay

    metrics = agree(comm, Metrics, args.metrics if master else None)
    ds, why = agree(comm, load_data, args, net_shape)
    if why:
        say(f"data: {why}")
    n_train = len(ds.x_train)
    if batch > n_train:
        raise UsageError(f"global batch {batch} is larger than the {n_train} training images")

    kwargs = {"hidden": args.hidden} if args.net == "mlp" else {"algo": args.algo}
    model = build_net(args.net, ds.input_shape, ds.num_classes, seed=args.seed, **kwargs)
    dp = DataParallel(comm, model)
    opt = SGD(model.params(), lr, momentum, wd)

    steps_per_epoch = n_train // batch  # the last partial batch is dropped on every rank alike
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    policy_args = dict(solver.policy_args)
    if policy == "cosine":
        policy_args["max_iter"] = total_steps
    if policy == "step":
        policy_args.setdefault("stepsize", max(1, total_steps // 3))

    say(f"hpcnn {__version__} | net {args.net} ({model.num_params():,} parameters) | "
        f"dataset {ds.name} {'x'.join(map(str, ds.input_shape))}, {n_train} train / "
        f"{len(ds.x_test)} test")
    say(f"source: {ds.source}")
    say(f"ranks {size} x threads {threads} | batch {batch} global ({per_rank} per rank) | "
        f"lr {lr:g} {policy} | momentum {momentum:g} | weight decay {wd:g} | "
        f"epochs {args.epochs} ({steps_per_epoch} steps each) | seed {args.seed}")

    step, t_train, images, last_loss, acc = 0, 0.0, 0, float("nan"), float("nan")
    t0 = time.perf_counter()
    record = {}
    for epoch in range(1, args.epochs + 1):
        if step >= total_steps:
            break
        # One global shuffle per epoch, identical on every rank (seeded by seed and epoch).
        order = np.random.default_rng([args.seed, epoch]).permutation(n_train)
        loss_sum, loss_n = 0.0, 0
        win_loss, win_n, t_win, img_win = 0.0, 0, time.perf_counter(), 0
        t_epoch = time.perf_counter()
        for i in range(steps_per_epoch):
            if step >= total_steps:
                break
            idx = order[i * batch + rank * per_rank: i * batch + (rank + 1) * per_rank]
            idx.sort()  # gathers in memory order; the set of images is what matters
            x, y = ds.x_train[idx], ds.y_train[idx]
            loss = train_step(model, dp, opt, x, y, learning_rate(policy, lr, step, **policy_args))
            step += 1
            loss_sum += loss
            loss_n += 1
            win_loss += loss
            win_n += 1
            img_win += batch
            now = time.perf_counter()
            if now - t_win >= args.log_interval and master:
                rate = img_win / (now - t_win)
                eta = (total_steps - step) * batch / rate
                print(f"epoch {epoch} step {step}/{total_steps} loss {win_loss / win_n:.4f} "
                      f"{rate:,.0f} img/s eta {fmt_time(eta)}", flush=True)
                win_loss, win_n, t_win, img_win = 0.0, 0, now, 0
        t_train += time.perf_counter() - t_epoch
        images += loss_n * batch
        if size > 1:
            loss_sum = comm.allreduce(loss_sum) / size
        last_loss = loss_sum / max(1, loss_n)
        acc = evaluate(model, ds.x_test, ds.y_test, comm)
        record = {"epoch": epoch, "step": step, "train_loss": last_loss,
                  "test_accuracy": acc, "images_per_second": images / t_train,
                  "elapsed_s": time.perf_counter() - t0, "lr": learning_rate(
                      policy, lr, max(0, step - 1), **policy_args)}
        metrics.write(record)
        say(f"epoch {epoch} done: train loss {last_loss:.4f} | test accuracy {100 * acc:.2f}% | "
            f"{record['images_per_second']:,.0f} img/s | elapsed {fmt_time(record['elapsed_s'])}")
        if not math.isfinite(last_loss):
            raise HpcnnError(f"training diverged: non-finite loss at step {step}; "
                             f"try a smaller --lr")

    summary = dict(record, summary=True, net=args.net, dataset=ds.name, ranks=size,
                   threads=threads, batch_size=batch, elapsed_s=time.perf_counter() - t0)
    metrics.write(summary)
    metrics.close()
    say(f"finished: {step} steps | test accuracy {100 * acc:.2f}% | "
        f"{summary.get('images_per_second', 0):,.0f} img/s | total {fmt_time(summary['elapsed_s'])}")
    return summary


def main(argv=None):
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # MPI first (to count the ranks on this node), then pin threads, then import numpy/numba:
    # BLAS and Numba read their thread counts when they are first loaded.
    from mpi4py import MPI

    from hpcnn import threads as thr
    from hpcnn.parallel.runtime import abort_on_exception, local_size

    comm = MPI.COMM_WORLD
    n_threads = args.threads or thr.default_threads(local_size(comm))
    thr.pin_env(n_threads)
    try:
        n_threads = thr.apply(n_threads)
        run(args, comm, n_threads)
    except HpcnnError as e:
        # Raised alike on every rank (input checks are identical everywhere, and `agree`
        # shares a failure of one rank with all), so every rank exits and none is left waiting.
        if comm.Get_rank() == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # a bug or a crash on this rank only: end the whole job now
        if isinstance(e, SystemExit):
            raise
        abort_on_exception(comm, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
