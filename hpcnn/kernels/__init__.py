"""Compute kernels: validated Python wrappers over Numba loops and numpy BLAS GEMMs.

Arrays are float32 (float64 is accepted too, for gradient checks), activations NCHW, conv
weights (K, C, R, S). Every wrapper checks its arguments and raises ``ValueError`` naming the
shapes; the Numba kernels behind them check nothing.
"""

from hpcnn.kernels.conv import conv2d_backward, conv2d_forward
from hpcnn.kernels.im2col import col2im, im2col
from hpcnn.kernels.linear import linear_backward, linear_forward
from hpcnn.kernels.pointwise import (
    bias_backward,
    bias_forward,
    relu_backward,
    relu_forward,
    softmax_cross_entropy,
)
from hpcnn.kernels.pool import (
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "avgpool2d_backward",
    "avgpool2d_forward",
    "bias_backward",
    "bias_forward",
    "col2im",
    "conv2d_backward",
    "conv2d_forward",
    "im2col",
    "linear_backward",
    "linear_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "softmax_cross_entropy",
]
