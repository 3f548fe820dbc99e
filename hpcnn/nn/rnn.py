"""A character-level language model: a vanilla tanh RNN with a softmax output at every step.

``char_rnn(...)`` is a :class:`~hpcnn.nn.model.Sequential` of two layers, so the flat buffers,
bucketed gradient reduction, optimizer, checkpoints and strategies work on it unchanged::

    Recurrent(V, H)   x: Windows (ids (B, T), state (B, H))  ->  hs (T*B, H), time-major rows
    Linear(H, V)      -> logits (T*B, V), scored by hpcnn.nn.loss.SequenceCrossEntropy

Truncated backpropagation through time: each step of training sees a window of T characters of
B streams; the hidden state at the end of a window is carried into the next window of the same
streams (:class:`Windows.state`, owned by the rank's streams, not reduced), but no gradient flows
across windows.
"""

import math
from dataclasses import dataclass

import numpy as np

from hpcnn.kernels import rnn as K
from hpcnn.nn.layers import Linear, Param
from hpcnn.nn.model import Sequential


@dataclass
class Windows:
    """A batch of windows: ``ids`` (B, T) integer characters of B streams, and ``state``
    (B, H), the streams' hidden state: the forward starts from it and overwrites it with the
    state after the window's last step. ``state=None``: start from zeros, carry nothing."""

    ids: np.ndarray
    state: np.ndarray | None = None

    def __len__(self):
        return len(self.ids)


class Recurrent:
    """h_t = tanh(emb[x_t] + h_{t-1} @ w_hh.T + b_h) over a window (:mod:`hpcnn.kernels.rnn`).

    Parameters: ``emb`` (V, H), the one-hot input weights stored by row; ``w_hh`` (H, H);
    ``b_h`` (H,). Initialised uniform in +-1/sqrt(H), as torch.nn.RNN.
    """

    kind = "rnn"  # op kind in the profile

    def __init__(self, vocab, hidden, *, rng, name="rnn"):
        a = 1.0 / math.sqrt(hidden)
        self.emb = Param(rng.uniform(-a, a, (vocab, hidden)), f"{name}.emb")
        self.w_hh = Param(rng.uniform(-a, a, (hidden, hidden)), f"{name}.w_hh")
        self.b_h = Param(np.zeros(hidden), f"{name}.b_h")
        self.vocab, self.hidden, self.name = int(vocab), int(hidden), name
        self._saved = None

    def params(self):
        return [self.emb, self.w_hh, self.b_h]

    def forward(self, x, train=True):
        ids = np.asarray(x.ids)
        dtype = self.w_hh.data.dtype
        h0 = np.zeros((len(ids), self.hidden), dtype) if x.state is None else \
            np.array(x.state, dtype=dtype)  # a copy: the state is overwritten below
        hs = K.rnn_forward(ids, h0, self.emb.data, self.w_hh.data, self.b_h.data)
        if x.state is not None:
            x.state[...] = hs[-1]
        if train:
            self._saved = (ids, h0, hs)
        return hs.reshape(-1, self.hidden)

    def backward(self, dy, input_grad=True):
        ids, h0, hs = self._saved
        demb, dw_hh, db_h, _ = K.rnn_backward(dy.reshape(hs.shape), ids, hs, h0,
                                              self.w_hh.data, self.vocab)
        self.emb.grad += demb
        self.w_hh.grad += dw_hh
        self.b_h.grad += db_h
        self._saved = None
        return None  # no gradient for integer characters

    def output_shape(self, in_shape):
        return (self.hidden,)


def char_rnn(input_shape, num_classes, rng, hidden=128, algo="auto", tuner=None):
    """The RNN over a vocabulary of ``num_classes`` characters, windows of ``input_shape[0]``
    steps. ``algo`` and ``tuner`` are accepted for a uniform call and unused."""
    layers = [Recurrent(num_classes, hidden, rng=rng, name="rnn"),
              Linear(hidden, num_classes, rng=rng, name="out", bias_lr_mult=1.0)]
    return Sequential(layers, tuple(input_shape), name="rnn", head_start=1)


def build_rnn(vocab, hidden, window, seed=0):
    """:func:`char_rnn` with weights drawn from ``seed``."""
    return char_rnn((int(window),), int(vocab), np.random.default_rng(seed), hidden=hidden)


def generate(model, vocab, length, rng, prime="", temperature=1.0):
    """``length`` characters sampled from ``model`` after feeding it ``prime`` (a string of
    characters of ``vocab``); each next character drawn from softmax(logits / temperature)."""
    index = {c: i for i, c in enumerate(vocab)}
    rec, out = model.layers
    state = np.zeros((1, rec.hidden), np.float32)
    ids = [index[c] for c in prime] or [int(rng.integers(len(vocab)))]
    logits = None
    for i in ids:  # one step at a time: the window length of training does not matter here
        logits = model.forward(Windows(np.array([[i]]), state), train=False)
    chars = []
    for _ in range(length):
        z = logits[0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        nxt = int(rng.choice(len(vocab), p=p))
        chars.append(vocab[nxt])
        logits = model.forward(Windows(np.array([[nxt]]), state), train=False)
    return "".join(chars)
