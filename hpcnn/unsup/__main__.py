"""``python -m hpcnn.unsup autoencoder|fista [options]``: unsupervised feature learning on patches.

- ``autoencoder``: the UFLDL sparse autoencoder on 8x8 patches of MNIST, Fashion-MNIST or
  synthetic images; writes the learned filters as a PNG and the weights as an hpcnn checkpoint.
- ``fista``: sparse codes of patches for a dictionary (random, an autoencoder checkpoint's
  weights, or a .npy file) by FISTA; ``--learn N`` learns the dictionary (N alternating steps);
  ``--reference`` also runs a long float64 ISTA and prints the relative gap.

Under ``mpiexec -n P`` every rank draws the same patches and works on its own block of rows;
rank 0 alone prints and writes. Bad input is one ``error:`` line and exit status 2 on every rank.
"""

import argparse
import json
import os
import sys
import time

from hpcnn import argtypes as at
from hpcnn.errors import HpcnnError, UsageError

DATASETS = ("mnist", "fashion-mnist", "synthetic")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _common(p):
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--data-dir", default=None, help="default: $HPCNN_DATA or the cache")
    p.add_argument("--patches", type=at.positive_int, default=10000,
                   help="patches in the global batch")
    p.add_argument("--patch-size", type=at.positive_int, default=8)
    p.add_argument("--seed", type=at.seed_int, default=0)
    p.add_argument("--threads", type=at.thread_count, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--metrics", default=None, help="write the result as JSON here")


def build_parser():
    p = _Parser(prog="python -m hpcnn.unsup", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    a = sub.add_parser("autoencoder", help="train the UFLDL sparse autoencoder")
    _common(a)
    a.add_argument("--hidden", type=at.width, default=25)
    a.add_argument("--rho", type=at.finite_float, default=0.01, help="sparsity target, in (0,1)")
    a.add_argument("--beta", type=at.finite_float, default=3.0, help="sparsity weight, >= 0")
    a.add_argument("--weight-decay", type=at.finite_float, default=1e-4, help="lambda, >= 0")
    a.add_argument("--optimizer", default="lbfgs", choices=("lbfgs", "sgd"))
    a.add_argument("--iters", type=at.positive_int, default=400)
    a.add_argument("--lr", type=at.positive_float, default=0.5, help="sgd only")
    a.add_argument("--batch-size", type=at.positive_int, default=None, help="sgd only")
    a.add_argument("--png", default=None, help="write the filters here (PNG)")
    a.add_argument("--checkpoint", default=None, help="write the weights here (HDF5)")
    f = sub.add_parser("fista", help="sparse coding (and dictionary learning) by FISTA")
    _common(f)
    f.add_argument("--lam", type=at.finite_float, default=0.1, help="L1 weight lambda, >= 0")
    f.add_argument("--atoms", type=at.width, default=64, help="atoms of a random dictionary")
    f.add_argument("--dictionary", default="random",
                   help="random, patches (--atoms random patches, centred), an autoencoder "
                        "checkpoint (.h5: its W1 rows), or a .npy (V, K)")
    f.add_argument("--iters", type=at.positive_int, default=200, help="FISTA iterations")
    f.add_argument("--learn", type=at.nonneg_int, default=0,
                   help="dictionary-learning steps (each: FISTA, then a step on D)")
    f.add_argument("--reference", action="store_true",
                   help="also solve with a long float64 ISTA and print the relative gap")
    f.add_argument("--reference-iters", type=at.positive_int, default=20000)
    f.add_argument("--save-dictionary", default=None, help="write D here (.npy)")
    f.add_argument("--png", default=None, help="write the dictionary's atoms here (PNG)")
    return p


def check_args(args):
    """The range checks argparse types cannot express; raised alike on every rank."""
    if args.cmd == "autoencoder":
        from hpcnn.unsup.autoencoder import SAEConfig

        SAEConfig(args.patch_size ** 2, args.hidden, args.rho, args.beta, args.weight_decay)
    elif not args.lam >= 0:
        raise UsageError(f"--lam must be >= 0, got {args.lam}")
    for path in (getattr(args, "png", None), getattr(args, "checkpoint", None), args.metrics,
                 getattr(args, "save_dictionary", None)):
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                raise UsageError(f"cannot write {path}: folder {d} does not exist")


def all_patches(args):
    """The global set of patches (every rank draws the same), UFLDL-normalised, in the
    compute dtype."""
    import numpy as np

    from hpcnn.unsup.patches import normalize_patches, sample_patches, synthetic_images

    if args.dataset == "synthetic":
        images = synthetic_images(200, seed=args.seed)
    else:
        from hpcnn.data import load_dataset

        images = load_dataset(args.dataset, args.data_dir).x_train
    p = normalize_patches(sample_patches(images, args.patches, args.patch_size, args.seed))
    return np.ascontiguousarray(p, args.dtype)


def rank_block(a, comm):
    """This rank's contiguous block of the rows of ``a`` (remainder to the low ranks)."""
    from hpcnn.parallel.grid import blockdist

    n, start = blockdist(len(a), comm.Get_size(), comm.Get_rank())
    return a[start:start + n]


def run_autoencoder(args, comm, say):
    import numpy as np

    from hpcnn.unsup import autoencoder as ae
    from hpcnn.unsup.patches import filter_grid, write_png

    cfg = ae.SAEConfig(args.patch_size ** 2, args.hidden, args.rho, args.beta,
                       args.weight_decay)
    full = _agree(comm, all_patches, args)
    m, x = len(full), rank_block(full, comm)
    say(f"sparse autoencoder: {m} patches {args.patch_size}x{args.patch_size} of "
        f"{args.dataset} over {comm.Get_size()} rank(s), {cfg.hidden} hidden, rho {cfg.rho}, "
        f"beta {cfg.beta}, lambda {cfg.weight_decay}, {args.optimizer} {args.iters} iterations, "
        f"{args.dtype}")
    model = ae.SparseAutoencoder(cfg, comm, dtype=np.dtype(args.dtype))
    theta0 = ae.init_params(cfg, args.seed)
    t0 = time.perf_counter()
    every = max(1, args.iters // 10)

    def log(it, f):
        if it % every == 0 or it == args.iters:
            say(f"iter {it:5d}  loss {f:.6f}  ({time.perf_counter() - t0:.1f} s)")

    batch = args.batch_size or m
    if batch > m:
        raise UsageError(f"--batch-size {batch} is larger than the {m} patches")

    def rank_rows(lo, hi):  # sgd: this rank's block of the global minibatch [lo, hi)
        return rank_block(full[lo:hi], comm)

    theta, hist = ae.train(model, theta0, x, m, args.iters, args.optimizer, lr=args.lr,
                           batch=batch, rank_rows=rank_rows, log=log)
    seconds = time.perf_counter() - t0
    W1, W2, b1, b2 = ae.unpack(theta, cfg)
    rho_hat = model.encode(theta, x).sum(axis=0, dtype=np.float64)
    rho_hat = ae._allreduce(comm, rho_hat) / m
    result = {"command": "autoencoder", "config": cfg.asdict(), "dataset": args.dataset,
              "patches": m, "ranks": comm.Get_size(), "optimizer": args.optimizer,
              "iters": args.iters, "initial_loss": hist[0], "final_loss": hist[-1],
              "loss_evaluations": model.evals, "seconds": seconds,
              "mean_activation": float(rho_hat.mean()), "dtype": args.dtype}
    say(f"done: loss {hist[0]:.6f} -> {hist[-1]:.6f} in {seconds:.1f} s "
        f"({model.evals} loss evaluations); mean hidden activation {rho_hat.mean():.4f} "
        f"(target {cfg.rho})")
    if comm.Get_rank() == 0:
        if args.png:
            write_png(args.png, filter_grid(W1, args.patch_size))
            say(f"filters: {args.png}")
        if args.checkpoint:
            save_autoencoder(args.checkpoint, theta, cfg, result)
            say(f"checkpoint: {args.checkpoint}")
    return result


def save_autoencoder(path, theta, cfg, result):
    """The weights as an hpcnn checkpoint (``param/W1``, ``param/b1``, ``param/W2``,
    ``param/b2``), the configuration and result in its metadata."""
    import numpy as np

    from hpcnn.checkpoint import write_checkpoint
    from hpcnn.unsup.autoencoder import unpack

    W1, W2, b1, b2 = unpack(theta, cfg)
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in
              (("param/W1", W1), ("param/b1", b1), ("param/W2", W2), ("param/b2", b2))}
    meta = {"step": int(result["iters"]), "epoch": 1, "index": 0, "loss_n": 0,
            "loss_sum": 0.0, "ranks": int(result["ranks"]), "batch": int(result["patches"]),
            "steps_per_epoch": int(result["iters"]), "rows": 1,
            "arrays": {k: list(v.shape) for k, v in arrays.items()},
            "net": "sparse_autoencoder", "config": cfg.asdict()}
    write_checkpoint(path, arrays, meta)


def load_dictionary(args, V, patches=None):
    """The (V, K) dictionary named by ``--dictionary``, columns unit length."""
    import numpy as np

    from hpcnn.unsup.fista import normalize_columns, random_dictionary

    src = args.dictionary
    if src == "random":
        return random_dictionary(V, args.atoms, args.seed)
    if src == "patches":  # a common start for dictionary learning: atoms drawn from the data
        rng = np.random.default_rng(args.seed + 1)
        pick = patches[rng.choice(len(patches), args.atoms, replace=args.atoms > len(patches))]
        pick = np.asarray(pick, np.float64)
        return normalize_columns((pick - pick.mean(axis=1, keepdims=True)).T)
    if src.endswith(".npy"):
        try:
            D = np.load(src, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read dictionary {src}: {e}") from None
        if D.ndim != 2 or D.dtype.kind != "f":
            raise UsageError(f"dictionary {src} must be a 2-D float array, got {D.dtype} "
                             f"{D.shape}")
    else:
        from hpcnn.checkpoint import read_checkpoint

        arrays, meta = read_checkpoint(src)
        if meta.get("net") != "sparse_autoencoder" or "param/W1" not in arrays:
            raise UsageError(f"{src} is not a sparse autoencoder checkpoint")
        D = np.asarray(arrays["param/W1"], np.float64).T  # atoms: the hidden units' filters
    if D.shape[0] != V:
        raise UsageError(f"dictionary {src} has atoms of {D.shape[0]} entries (shape "
                         f"{D.shape}) but the {args.patch_size}x{args.patch_size} patches "
                         f"have {V} features")
    if not np.all(np.isfinite(D)):
        raise UsageError(f"dictionary {src} holds NaN or infinite values")
    return normalize_columns(np.asarray(D, np.float64))


def run_fista(args, comm, say):
    import numpy as np

    from hpcnn.unsup import fista as fi

    V = args.patch_size ** 2
    full = _agree(comm, all_patches, args)
    m, x = len(full), rank_block(full, comm)
    D = _agree(comm, load_dictionary, args, V, full)
    fi.check_problem(x, D, args.lam)
    say(f"FISTA: {m} patches {args.patch_size}x{args.patch_size} of {args.dataset} over "
        f"{comm.Get_size()} rank(s), dictionary {args.dictionary} {D.shape}, lambda {args.lam}, "
        f"{args.iters} iterations, {args.dtype}")
    t0 = time.perf_counter()
    history = []
    if args.learn:
        def log(it, f):
            if it % max(1, args.learn // 10) == 0 or it == args.learn:
                say(f"dictionary step {it:4d}  objective/patch {f:.6f}")
        D, history = fi.learn_dictionary(x, D, args.lam, args.learn, args.iters, m, comm,
                                         log=log)
    L = fi.spectral_norm_sq(D)
    Z = fi.fista(x, D, args.lam, args.iters, L=L)
    F = fi.objective(x, D, Z, args.lam, comm)
    seconds = time.perf_counter() - t0
    nnz = np.array([float(np.count_nonzero(Z))])
    from hpcnn.unsup.autoencoder import _allreduce

    _allreduce(comm, nnz)
    result = {"command": "fista", "dataset": args.dataset, "patches": m,
              "ranks": comm.Get_size(), "dictionary": args.dictionary,
              "atoms": int(D.shape[1]), "lam": args.lam, "iters": args.iters,
              "learn_steps": args.learn, "learn_history": history, "L": L, "objective": F,
              "objective_per_patch": F / m, "nonzeros_per_patch": float(nnz[0]) / m,
              "seconds": seconds, "dtype": args.dtype}
    say(f"objective {F:.6f} ({F / m:.6f} per patch), {nnz[0] / m:.2f} nonzero codes per "
        f"patch of {D.shape[1]}, L = |D|_2^2 = {L:.4f}, {seconds:.2f} s")
    if args.reference:
        ref = fi.fista(np.asarray(x, np.float64), D, args.lam, args.reference_iters, L=L,
                       momentum=False)
        F_ref = fi.objective(x, D, ref, args.lam, comm)
        gap = (F - F_ref) / abs(F_ref)
        result.update(reference="ista float64", reference_iters=args.reference_iters,
                      reference_objective=F_ref, relative_gap=gap)
        say(f"reference: {args.reference_iters} ISTA iterations in float64: objective "
            f"{F_ref:.6f}; FISTA - reference = {gap:+.2e} relative")
    if args.save_dictionary and comm.Get_rank() == 0:
        np.save(args.save_dictionary, D)
        say(f"dictionary: {args.save_dictionary}")
    if args.png and comm.Get_rank() == 0:
        from hpcnn.unsup.patches import filter_grid, write_png

        write_png(args.png, filter_grid(D.T, args.patch_size))
        say(f"atoms: {args.png}")
    return result


def _agree(comm, fn, *a):
    from hpcnn.parallel.runtime import agree

    return agree(comm, fn, *a)


def _launcher_rank():
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def main(argv=None, comm=None):
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
    except UsageError as e:
        # every rank parses the same argv and exits alike; rank 0 alone says why
        if (comm.Get_rank() if comm is not None else _launcher_rank()) == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    from hpcnn import threads as thr
    from hpcnn.parallel.runtime import abort_on_exception, local_size

    n_threads = args.threads or thr.default_threads(local_size(comm))
    thr.pin_env(n_threads)
    rank = comm.Get_rank()

    def say(msg):
        if rank == 0:
            print(msg, flush=True)

    try:
        thr.apply(n_threads)
        run = run_autoencoder if args.cmd == "autoencoder" else run_fista
        result = run(args, comm, say)
        result["threads"] = n_threads
        if args.metrics and rank == 0:
            with open(args.metrics, "w") as f:
                json.dump(result, f, indent=1)
    except HpcnnError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BaseException as e:
        if isinstance(e, SystemExit):
            raise
        abort_on_exception(comm, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
