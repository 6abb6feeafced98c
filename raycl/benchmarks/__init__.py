"""Continual-learning benchmarks: datasets, experiences, streams and their generators.

Nothing heavy is imported here: scikit-learn is loaded only by :func:`load_digits_tensors`
and torchvision only when a vision benchmark downloads or transforms.
"""

from raycl.benchmarks.base import (
    CLBenchmark,
    CLDataset,
    Experience,
    SubsetCLDataset,
    TensorCLDataset,
)
from raycl.benchmarks.digits import PermutedDigits, RotatedDigits, SplitDigits, load_digits_tensors
from raycl.benchmarks.generators import (
    PixelPermutation,
    Rotation,
    data_incremental_benchmark,
    nc_benchmark,
    permuted_benchmark,
    rotated_benchmark,
)
from raycl.benchmarks.readers import (
    load_cifar_tensors,
    load_mnist_tensors,
    read_cifar_meta,
    read_idx,
)
from raycl.benchmarks.vision import (
    PermutedMNIST,
    SplitCIFAR10,
    SplitCIFAR100,
    SplitFashionMNIST,
    SplitMNIST,
    default_dataset_root,
)

__all__ = [
    "CLBenchmark",
    "CLDataset",
    "Experience",
    "PermutedDigits",
    "PermutedMNIST",
    "PixelPermutation",
    "RotatedDigits",
    "Rotation",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitDigits",
    "SplitFashionMNIST",
    "SplitMNIST",
    "SubsetCLDataset",
    "TensorCLDataset",
    "data_incremental_benchmark",
    "default_dataset_root",
    "load_cifar_tensors",
    "load_digits_tensors",
    "load_mnist_tensors",
    "nc_benchmark",
    "permuted_benchmark",
    "read_cifar_meta",
    "read_idx",
    "rotated_benchmark",
]
