"""hpcnn: train convolutional neural networks on CPU clusters with MPI."""

__version__ = "0.1.0"
