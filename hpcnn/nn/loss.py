"""Losses a strategy applies to the model's output: ``loss(out, y, scale) -> (loss, dout)``.

A strategy receives one loss object and calls it on this rank's output and targets with
``scale`` = this rank's share of the global batch (``1 / ranks`` for equal shares). The loss
returns this rank's mean loss (for the log) and the gradient of ``scale`` x that mean with
respect to ``out``, so that summing gradients over ranks gives the gradient of the mean over
the global batch: no buffer is rescaled after a reduction.

``score(out, y)`` gives what evaluation sums over ranks: (summed loss, correct predictions,
number of predictions).
"""

import numpy as np

from hpcnn import profile
from hpcnn.kernels import softmax_cross_entropy


class SoftmaxCrossEntropy:
    """Softmax cross-entropy of logits (N, M) against integer labels (N,): the classifiers'."""

    name = "softmax_cross_entropy"

    def __call__(self, logits, y, scale=1.0):
        with profile.region("loss"):
            loss, dlogits = softmax_cross_entropy(logits, y)
            if scale != 1.0:
                dlogits *= np.float32(scale)
        return loss, dlogits

    def score(self, logits, y):
        loss, _ = softmax_cross_entropy(logits, y)
        return loss * len(y), int((np.argmax(logits, axis=1) == y).sum()), len(y)


class SequenceCrossEntropy:
    """Per-step softmax cross-entropy over a window: logits (T*B, V) in time-major rows (or
    (T, B, V)), targets (B, T) (row ``t*B + b`` predicts ``y[b, t]``).

    The mean is over the B*T predicted characters of this rank; with ``scale`` = 1/ranks (every
    rank predicting as many characters) the summed gradient is that of the loss normalised by
    the global number of predicted characters.
    """

    name = "sequence_cross_entropy"

    def __call__(self, logits, y, scale=1.0):
        from hpcnn.kernels.rnn import softmax_ce_steps

        with profile.region("loss"):
            z, labels = self._flat(logits, y)
            total, dz = softmax_ce_steps(z, labels, scale / len(labels))
        return total / len(labels), dz.reshape(logits.shape)

    def score(self, logits, y):
        from hpcnn.kernels.rnn import softmax_ce_steps

        z, labels = self._flat(logits, y)
        total, _ = softmax_ce_steps(z, labels, 0.0, grad=False)
        return total, int((np.argmax(z, axis=1) == labels).sum()), len(labels)

    @staticmethod
    def _flat(logits, y):
        y = np.asarray(y)
        v = logits.shape[-1]
        if y.ndim != 2 or logits.size != y.size * v:
            raise ValueError(f"sequence_cross_entropy: targets {y.shape} (B, T) do not match "
                             f"logits {logits.shape} (T*B, V)")
        return logits.reshape(-1, v), np.ascontiguousarray(y.T).reshape(-1)


SOFTMAX_CE = SoftmaxCrossEntropy()
