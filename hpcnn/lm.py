"""What ``python -m hpcnn.train --net rnn --dataset text --text PATH`` adds to the training loop.

A character-level language model (:mod:`hpcnn.nn.rnn`) on a UTF-8 text (:mod:`hpcnn.data.text`),
trained with truncated backpropagation through time over windows of ``--bptt`` steps, the loss
:class:`hpcnn.nn.loss.SequenceCrossEntropy`. The loop is the CNNs' one: the few places where a
text run differs call the functions here (option checks, loading, the model and its loss, the
epoch's windows, held-out perplexity).
"""

from hpcnn.errors import UsageError
from hpcnn.nn.nets import Solver

NET = "rnn"
DATASET = "text"
DEFAULT_BPTT = 50
MAX_BPTT = 10000
# SGD with momentum 0.9 on the mean loss per character: lr 0.1 went from perplexity 28 to 14 in
# 300 steps of 32 x 50 characters on the fortunes text; lr 1.0 diverged in the first 100. Held
# at 0.1 (no gradient clipping), H 256 reached held-out perplexity 7.04 at epoch 5 and rose to
# 7.73 at epoch 6 (results/rnn/fortunes_h256_fixed_metrics.jsonl): annealed to 0 instead.
SOLVER = Solver(0.1, 0.9, 0.0, 32, "cosine")
ENTRY = (None, SOLVER, (DEFAULT_BPTT,))  # as hpcnn.nn.NETS: (builder, solver, input shape)


def is_text(ds):
    return getattr(ds, "kind", None) == DATASET


def validate(args):
    """--net rnn trains on --dataset text, and only it does; --bptt in range; data parallel."""
    rnn, text = args.net == NET, args.dataset == DATASET
    if rnn != text:
        raise UsageError("--net rnn trains on --dataset text (--text PATH), and --dataset text "
                         "needs --net rnn")
    if text and not args.text:
        raise UsageError("--dataset text needs --text PATH (a UTF-8 text file)")
    if args.text and not text:
        raise UsageError("--text needs --dataset text")
    if args.bptt is not None:
        if not rnn:
            raise UsageError("--bptt applies to --net rnn only")
        if not 1 <= args.bptt <= MAX_BPTT:
            raise UsageError(f"--bptt (the window T) must be from 1 to {MAX_BPTT}, got "
                             f"{args.bptt}")
    if rnn and args.parallel != "data":
        raise UsageError("--parallel hybrid splits a CNN's fully connected head; --net rnn "
                         "trains with --parallel data")
    if rnn and args.fallback_synthetic:
        raise UsageError("--fallback-synthetic makes images: not for --net rnn")


def bptt(args):
    return args.bptt or DEFAULT_BPTT


def load(args):
    from hpcnn.data.text import load_text

    return load_text(args.text, bptt(args))


def build(args, ds):
    """The model (its ``meta`` names the vocabulary, for checkpoints and sampling) and its
    loss."""
    from hpcnn.nn.loss import SequenceCrossEntropy
    from hpcnn.nn.rnn import build_rnn

    model = build_rnn(ds.num_classes, args.hidden, ds.bptt, seed=args.seed)
    model.meta = {"vocab": ds.vocab, "hidden": int(args.hidden), "bptt": int(ds.bptt)}
    return model, SequenceCrossEntropy()


def hidden(strategy):
    return strategy.model.layers[0].hidden


def carried(strategy, per_rank, resuming):
    """The hidden states (per_rank, H) of this rank's streams for an epoch: a checkpoint's when
    resuming in the middle of the epoch it was written in, else zeros. Kept as the model's
    ``carried`` so that checkpoints save them (:class:`hpcnn.parallel.strategy.Strategy`)."""
    import numpy as np

    model = strategy.model
    shape = (per_rank, hidden(strategy))
    state = getattr(model, "resumed_carried", None) if resuming else None
    model.resumed_carried = None
    if state is None or state.shape != shape:
        state = np.zeros(shape, np.float32)
    model.carried = state
    return state


def sample_batch(ds, per_rank, hidden_size):
    """The first window of a rank's streams (to compile the kernels before the run)."""
    return next(ds.epoch_batches(per_rank, per_rank, 0, 0, 1, hidden_size))
