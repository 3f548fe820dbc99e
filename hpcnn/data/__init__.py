"""Datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10 (binary), and a learnable synthetic set.

``load_dataset(name)`` finds, checks and normalises a dataset; ``find_dataset_files(name)`` says
whether its files are present; ``python -m hpcnn.data download|describe`` fetches and inspects.
"""

from hpcnn.data.cifar import read_cifar_batch, write_cifar_batch
from hpcnn.data.download import download_dataset
from hpcnn.data.idx import Checksum, read_idx_images, read_idx_labels, read_idx_pair, write_idx
from hpcnn.data.loading import load_dataset
from hpcnn.data.registry import (
    DATASETS,
    Dataset,
    cache_dir,
    find_dataset_files,
    resolve_data_dir,
)
from hpcnn.data.synthetic import make_synthetic

__all__ = [
    "DATASETS",
    "Checksum",
    "Dataset",
    "cache_dir",
    "download_dataset",
    "find_dataset_files",
    "load_dataset",
    "make_synthetic",
    "read_cifar_batch",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "resolve_data_dir",
    "write_cifar_batch",
    "write_idx",
]
