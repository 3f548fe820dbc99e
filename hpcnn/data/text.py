"""Any UTF-8 text file as a character-level language-modelling dataset, split into streams.

The text's distinct characters, sorted, are the vocabulary; the last 10% of the characters are
held out for evaluation. For truncated backpropagation through time with a global batch of B and
windows of T steps, the training characters are cut into B contiguous *streams* of L characters
(as Zaremba et al.'s and PyTorch's word-language-model batchify): step ``i`` of an epoch gives
every stream its window ``i`` (T inputs and the T characters that follow each), so the hidden
state at the end of one window is the right start for the next. Each of N ranks takes a block of
B/N streams, so N ranks see exactly the serial run's windows and states. An epoch is
``(L - 1) // T`` steps; the hidden states start from zero at every epoch.

Bad input is one :class:`hpcnn.errors.DataError` line naming the file: missing, empty, larger
than the bound, not UTF-8, or too short for the streams and windows asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcnn.errors import DataError, UsageError

MAX_TEXT_BYTES = 256 << 20  # int32 ids of a 256 MiB text take 1 GiB
MAX_VOCAB = 1 << 16
HELD_OUT = 0.1


def read_text(path, max_bytes=MAX_TEXT_BYTES) -> str:
    """The text of a UTF-8 file (a leading byte-order mark dropped); DataError when missing,
    empty, larger than ``max_bytes`` or not UTF-8."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read the text file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: larger than the {max_bytes} bytes a text may have")
    if not data:
        raise DataError(f"{path}: the text file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}: {e.reason})") from None
    text = text.removeprefix("\ufeff")
    if not text:
        raise DataError(f"{path}: the text file is empty")
    return text


def encode(text, vocab):
    """Characters as int32 ids into ``vocab`` (a string of distinct characters)."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))
    except KeyError as e:
        raise UsageError(f"character {e.args[0]!r} is not in the model's vocabulary") from None


@dataclass
class TextData:
    """A text cut into training and held-out characters (int32 ids into ``vocab``).

    ``input_shape`` is (T,), ``num_classes`` the vocabulary size; ``x_train``/``x_test`` are the
    id arrays (their lengths are counts of characters).
    """

    kind = "text"
    name: str
    vocab: str
    x_train: np.ndarray
    x_test: np.ndarray
    bptt: int
    source: str

    @property
    def input_shape(self):
        return (self.bptt,)

    @property
    def num_classes(self):
        return len(self.vocab)

    # training streams -------------------------------------------------------------------------
    def _streams(self, ids, batch, what):
        length = (len(ids) - 1) // batch
        if length < 1:
            raise UsageError(f"the {what} text ({len(ids)} characters) is too short for "
                             f"{batch} streams (--batch-size): each needs 2 characters or more")
        return length

    def steps_per_epoch(self, batch):
        """Windows of T steps in each of ``batch`` streams of the training text."""
        length = self._streams(self.x_train, batch, "training")
        steps = length // self.bptt
        if steps < 1:
            raise UsageError(f"the training text ({len(self.x_train)} characters) cut into "
                             f"{batch} streams gives {length} characters each, fewer than one "
                             f"window of --bptt {self.bptt}: use a smaller --batch-size or "
                             f"--bptt")
        return steps

    def train_examples(self, batch):
        """Windows of an epoch times streams: what a step count is derived from (the
        held-out text checked too, before any step is taken)."""
        steps = self.steps_per_epoch(batch)
        self._streams(self.x_test, batch, "held-out")
        return steps * batch

    def window(self, ids, length, first_stream, count, start, steps):
        """Inputs and targets (count, steps) of streams ``first_stream ..`` from ``start``."""
        base = (first_stream + np.arange(count)) * length + start
        idx = base[:, None] + np.arange(steps)
        return ids[idx], ids[idx + 1]

    def epoch_batches(self, batch, per_rank, rank, first, stop, hidden, state=None):
        """This rank's ``(Windows, targets)`` for steps ``first .. stop - 1`` of an epoch; one
        hidden state (per_rank, H) for its streams, carried from window to window: ``state``
        (a resumed run's, updated in place), else zeros."""
        from hpcnn.nn.rnn import Windows

        length = self._streams(self.x_train, batch, "training")
        if state is None:
            state = np.zeros((per_rank, hidden), np.float32)
        for i in range(first, stop):
            x, y = self.window(self.x_train, length, rank * per_rank, per_rank, i * self.bptt,
                               self.bptt)
            yield Windows(x, state), y

    # held-out evaluation ----------------------------------------------------------------------
    def evaluate(self, strategy, comm, batch, hidden):
        """(perplexity, next-character accuracy, mean loss) on the held-out text, cut into
        ``batch`` streams like the training text, each rank scoring its block of them in
        windows of T (the last one shorter) from a zero state; sums are reduced over ranks."""
        from hpcnn.nn.rnn import Windows

        size, rank = (comm.Get_size(), comm.Get_rank()) if comm is not None else (1, 0)
        per = batch // size
        length = self._streams(self.x_test, batch, "held-out")
        state = np.zeros((per, hidden), np.float32)
        sums = np.zeros(3, np.float64)  # loss, correct, predictions
        strategy.prepare_eval()
        for start in range(0, length, self.bptt):
            steps = min(self.bptt, length - start)
            x, y = self.window(self.x_test, length, rank * per, per, start, steps)
            sums += strategy.score(Windows(x, state), y)
        if size > 1:
            from mpi4py import MPI

            comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        loss = sums[0] / sums[2]
        return float(np.exp(loss)), float(sums[1] / sums[2]), float(loss)


def load_text(path, bptt, max_bytes=MAX_TEXT_BYTES) -> TextData:
    """Read ``path`` (UTF-8) into a :class:`TextData` for windows of ``bptt`` steps."""
    if bptt < 1:
        raise UsageError(f"--bptt must be at least 1, got {bptt}")
    text = read_text(path, max_bytes)
    vocab = "".join(sorted(set(text)))
    if len(vocab) > MAX_VOCAB:
        raise DataError(f"{path}: {len(vocab)} distinct characters, more than the {MAX_VOCAB} "
                        f"a vocabulary may have")
    if len(text) < 4:
        raise DataError(f"{path}: {len(text)} characters; a text needs at least 4 (training "
                        f"and held-out)")
    ids = encode(text, vocab)
    n_test = max(2, int(len(ids) * HELD_OUT))
    nbytes = Path(path).stat().st_size
    source = (f"text from {path}: {nbytes:,} bytes, {len(text):,} characters, vocabulary of "
              f"{len(vocab)}; the last {n_test:,} characters held out")
    return TextData(name=f"text:{Path(path).name}", vocab=vocab, x_train=ids[:-n_test],
                    x_test=ids[-n_test:], bptt=int(bptt), source=source)
