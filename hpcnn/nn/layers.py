"""Layers: plain classes that own their parameters and gradients.

Every layer has ``forward(x, train=True) -> y``, ``backward(dy, input_grad=True) -> dx`` and
``params()``. A layer keeps what its backward needs from the last forward. With
``input_grad=False`` (a network's first layer: nothing needs the gradient of the images) a layer
makes only its parameter gradients and returns None. ``backward`` *accumulates* into the gradient
arrays (``p.grad += ...``); the training loop zeroes them before each step, as in PyTorch.
Each forward is one call into :mod:`hpcnn.kernels`; the layer only keeps state.
"""

import math

import numpy as np

from hpcnn import kernels as K


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class Param:
    """A trainable array with its gradient, its name and Caffe's per-parameter multipliers.

    ``data`` and ``grad`` may later be re-homed as views of one flat buffer
    (:class:`hpcnn.parallel.flatbuf.FlatGroup`); code must always go through the attributes.

    A parameter split across ranks (a model-parallel layer) holds rows ``start:start+count`` of
    the full tensor along axis 0: ``shard = (start, count)`` (from
    :func:`hpcnn.parallel.blockdist`), ``full_shape`` the whole tensor's shape. Unsplit, ``shard``
    is None and ``full_shape == data.shape``.
    """

    def __init__(self, data, name, lr_mult=1.0, decay_mult=1.0):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)
        self.name = name
        self.lr_mult = float(lr_mult)
        self.decay_mult = float(decay_mult)
        self.full_shape = self.data.shape
        self.shard = None

    def take_rows(self, start, count):
        """Keep rows ``start:start+count`` of this (full) parameter: this rank's slice."""
        if self.shard is not None:
            raise ValueError(f"{self.name} is already split ({self.shard})")
        self.data = np.ascontiguousarray(self.data[start:start + count])
        self.grad = np.zeros_like(self.data)
        self.shard = (int(start), int(count))

    def local_part(self, full):
        """This rank's part of a full-shape array of this parameter (a view)."""
        if tuple(full.shape) != tuple(self.full_shape):
            raise ValueError(f"{self.name}: shape {tuple(full.shape)} != {self.full_shape}")
        if self.shard is None:
            return full
        start, count = self.shard
        return full[start:start + count]

    def __repr__(self):
        split = f", rows {self.shard[0]}:{sum(self.shard)} of {self.full_shape}" \
            if self.shard else ""
        return f"Param({self.name}, shape={self.data.shape}{split})"


def _init(rng, shape, fan_in, init, std):
    """Caffe's fillers: 'xavier' (uniform +-sqrt(3/fan_in)), 'gaussian' (std), 'he' (normal)."""
    if init == "xavier":
        a = math.sqrt(3.0 / fan_in)
        return rng.uniform(-a, a, size=shape)
    if init == "gaussian":
        return rng.normal(0.0, std, size=shape)
    if init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    raise ValueError(f"unknown init {init!r} (expected xavier, gaussian or he)")


class Conv2d:
    """2-D convolution. x (N, C, H, W) -> y (N, K, P, Q), P = (H + 2*pad - R)//stride + 1.

    ``algo``: a strategy of :data:`hpcnn.kernels.conv.ALGOS`, or "auto": the choice of ``tuner``
    (an :class:`~hpcnn.kernels.autotune.Autotuner`; None: the kernels' default one).
    """

    kind = "conv"  # op kind in the profile (hpcnn.profile.KINDS)

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, *, rng, name="conv",
                 init="xavier", std=0.01, bias_lr_mult=2.0, algo="auto", tuner=None):
        r, s = _pair(kernel_size)
        self.stride, self.padding, self.algo = _pair(stride), _pair(padding), algo
        self.tuner = tuner
        fan_in = in_ch * r * s
        self.weight = Param(_init(rng, (out_ch, in_ch, r, s), fan_in, init, std), f"{name}.weight")
        self.bias = Param(np.zeros(out_ch), f"{name}.bias", lr_mult=bias_lr_mult)
        self.name = name
        self._x = None

    def params(self):
        return [self.weight, self.bias]

    def forward(self, x, train=True):
        if train:
            self._x = x
        return K.conv2d_forward(x, self.weight.data, self.bias.data, self.stride, self.padding,
                                algo=self.algo, tuner=self.tuner)

    def backward(self, dy, input_grad=True):
        dx, dw, db = K.conv2d_backward(dy, self._x, self.weight.data, self.stride, self.padding,
                                       algo=self.algo, input_grad=input_grad, tuner=self.tuner)
        self.weight.grad += dw
        self.bias.grad += db
        self._x = None
        return dx

    def output_shape(self, in_shape):
        c, h, w = in_shape
        k, _, r, s = self.weight.data.shape
        return (k, (h + 2 * self.padding[0] - r) // self.stride[0] + 1,
                (w + 2 * self.padding[1] - s) // self.stride[1] + 1)


class Linear:
    """Fully connected layer. x (N, F_in) -> y (N, F_out) = x @ W.T + b, W (F_out, F_in)."""

    kind = "gemm"  # op kind in the profile (hpcnn.profile.KINDS)

    def __init__(self, in_features, out_features, *, rng, name="fc", init="xavier", std=0.01,
                 bias_lr_mult=2.0):
        w = _init(rng, (out_features, in_features), in_features, init, std)
        self.weight = Param(w, f"{name}.weight")
        self.bias = Param(np.zeros(out_features), f"{name}.bias", lr_mult=bias_lr_mult)
        self.name = name
        self._x = None

    def params(self):
        return [self.weight, self.bias]

    def forward(self, x, train=True):
        if train:
            self._x = x
        return K.linear_forward(x, self.weight.data, self.bias.data)

    def backward(self, dy, input_grad=True):
        dx, dw, db = K.linear_backward(dy, self._x, self.weight.data, input_grad=input_grad)
        self.weight.grad += dw
        self.bias.grad += db
        self._x = None
        return dx

    def output_shape(self, in_shape):
        return (self.weight.data.shape[0],)


class ReLU:
    kind = "activation"  # op kind in the profile (hpcnn.profile.KINDS)

    def __init__(self, name="relu"):
        self.name = name
        self._y = None

    def params(self):
        return []

    def forward(self, x, train=True):
        y = K.relu_forward(x)
        if train:
            self._y = y
        return y

    def backward(self, dy, input_grad=True):
        dx = K.relu_backward(dy, self._y) if input_grad else None
        self._y = None
        return dx

    def output_shape(self, in_shape):
        return in_shape


def _pool_out(n, k, s, p):
    """Caffe's ceil-mode pooled size."""
    out = -(-(n + 2 * p - k) // s) + 1
    if p > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


class MaxPool2d:
    """Max pooling with Caffe's ceil-mode output size."""

    kind = "pooling"  # op kind in the profile (hpcnn.profile.KINDS)

    def __init__(self, kernel_size, stride=None, padding=0, name="maxpool"):
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel_size
        self.padding = _pair(padding)
        self.name = name
        self._argmax = self._shape = None

    def params(self):
        return []

    def forward(self, x, train=True):
        y, argmax = K.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        if train:
            self._argmax, self._shape = argmax, x.shape
        return y

    def backward(self, dy, input_grad=True):
        dx = K.maxpool2d_backward(dy, self._argmax, self._shape) if input_grad else None
        self._argmax = None
        return dx

    def output_shape(self, in_shape):
        c, h, w = in_shape
        return (c,) + tuple(_pool_out(n, k, s, p) for n, k, s, p in
                            zip((h, w), self.kernel_size, self.stride, self.padding))


class AvgPool2d(MaxPool2d):
    """Average pooling with Caffe's ceil-mode output size and divisor."""

    def __init__(self, kernel_size, stride=None, padding=0, name="avgpool"):
        super().__init__(kernel_size, stride, padding, name)

    def forward(self, x, train=True):
        if train:
            self._shape = x.shape
        return K.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy, input_grad=True):
        if not input_grad:
            return None
        return K.avgpool2d_backward(dy, self._shape, self.kernel_size, self.stride, self.padding)


class Flatten:
    """(N, C, H, W) -> (N, C*H*W): a view, no copy."""

    kind = "layout"  # op kind in the profile (hpcnn.profile.KINDS)

    def __init__(self, name="flatten"):
        self.name = name
        self._shape = None

    def params(self):
        return []

    def forward(self, x, train=True):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, input_grad=True):
        return dy.reshape(self._shape) if input_grad else None

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)
