"""Continual-learning benchmarks: datasets, experiences, streams and their generators.

Nothing is imported until it is used: the registry table (:data:`BENCHMARKS`) is read without
torch, scikit-learn is loaded only by :func:`load_digits_tensors` and torchvision only when a
vision benchmark downloads or transforms.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule, loaded on first use
_LAZY = {
    "BENCHMARKS": "registry",
    "BenchmarkEntry": "registry",
    "CLBenchmark": "base",
    "CLDataset": "base",
    "Experience": "base",
    "PermutedDigits": "digits",
    "PermutedMNIST": "vision",
    "PixelPermutation": "generators",
    "RotatedDigits": "digits",
    "Rotation": "generators",
    "SCENARIOS": "registry",
    "SplitCIFAR10": "vision",
    "SplitCIFAR100": "vision",
    "SplitDigits": "digits",
    "SplitFashionMNIST": "vision",
    "SplitMNIST": "vision",
    "SubsetCLDataset": "base",
    "TensorCLDataset": "base",
    "benchmark_entry": "registry",
    "benchmark_with_validation_stream": "validation",
    "build_benchmark": "registry",
    "data_incremental_benchmark": "generators",
    "default_dataset_root": "vision",
    "load_cifar_tensors": "readers",
    "load_digits_tensors": "digits",
    "load_mnist_tensors": "readers",
    "nc_benchmark": "generators",
    "permuted_benchmark": "generators",
    "read_cifar_meta": "readers",
    "read_idx": "readers",
    "rotated_benchmark": "generators",
}

__all__ = [
    "BENCHMARKS",
    "SCENARIOS",
    "BenchmarkEntry",
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
    "benchmark_entry",
    "benchmark_with_validation_stream",
    "build_benchmark",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raycl.benchmarks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raycl.benchmarks.{module}"), name)
