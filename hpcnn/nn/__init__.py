"""Layers, the Sequential model and the reference networks."""

from hpcnn.nn.layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Param, ReLU
from hpcnn.nn.model import Sequential
from hpcnn.nn.nets import NETS, build_net

__all__ = ["AvgPool2d", "Conv2d", "Flatten", "Linear", "MaxPool2d", "Param", "ReLU",
           "Sequential", "NETS", "build_net"]
