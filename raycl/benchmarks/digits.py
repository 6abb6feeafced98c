"""Benchmarks on scikit-learn's embedded handwritten digits: no download, seconds to train.

``load_digits`` ships 1,797 8x8 grey images of the digits 0-9 inside scikit-learn. They make
real (if small) continual-learning benchmarks for tests, examples and quick studies.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from raycl.benchmarks.base import CLBenchmark
from raycl.benchmarks.generators import nc_benchmark, permuted_benchmark, rotated_benchmark

__all__ = ["PermutedDigits", "RotatedDigits", "SplitDigits", "load_digits_tensors"]

#: Fraction of each class held out for testing, and the seed of that fixed split.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # sklearn is imported here, not at module import, to keep `import raycl` fast.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (np.asarray(digits.data, dtype=np.float32) / 16.0)  # pixel values are 0..16
    y = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)  # private: global RNGs stay untouched
    test = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = int(round(len(members) * DIGITS_TEST_FRACTION))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def load_digits_tensors() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)`` of scikit-learn's digits.

    ``x`` is float32 ``(N, 64)`` (flattened 8x8 images scaled to [0, 1]), ``y`` int64 in 0..9.
    The split is fixed and stratified: a quarter of each class is held out (1,347 train and
    450 test samples), chosen with a private generator of fixed seed. Fresh tensors each call.
    """
    return tuple(torch.from_numpy(a.copy()) for a in _digits_arrays())  # type: ignore[return-value]


def _datasets() -> tuple[TensorDataset, TensorDataset]:
    x_tr, y_tr, x_te, y_te = load_digits_tensors()
    return TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te)


def SplitDigits(n_experiences: int = 5, return_task_id: bool = False, seed: int | None = 0,
                fixed_class_order: Sequence[int] | None = None,
                class_ids_from_zero_in_each_exp: bool | None = None) -> CLBenchmark:
    """The ten digit classes split evenly over ``n_experiences`` (class- or task-incremental).

    ``return_task_id=True`` gives experience ``i`` task label ``i``;
    ``class_ids_from_zero_in_each_exp`` (default: ``return_task_id``) relabels each
    experience's classes 0..k-1. See :func:`nc_benchmark` for the other arguments.
    """
    if class_ids_from_zero_in_each_exp is None:
        class_ids_from_zero_in_each_exp = bool(return_task_id)
    train, test = _datasets()
    bench = nc_benchmark(train, test, n_experiences, task_labels=return_task_id, seed=seed,
                         fixed_class_order=fixed_class_order,
                         class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp)
    bench.name = "SplitDigits"
    return bench


def PermutedDigits(n_experiences: int = 5, seed: int | None = 0,
                   return_task_id: bool = False) -> CLBenchmark:
    """Every digit in every experience, with one fixed pixel permutation per experience.

    The first experience is permuted too. Labels unchanged (domain-incremental).
    """
    train, test = _datasets()
    bench = permuted_benchmark(train, test, n_experiences, seed=seed,
                               task_labels=return_task_id)
    bench.name = "PermutedDigits"
    return bench


def RotatedDigits(n_experiences: int = 5, seed: int | None = 0,
                  rotations_list: Sequence[float] | None = None,
                  return_task_id: bool = False) -> CLBenchmark:
    """Every digit in every experience, rotated by one fixed angle per experience.

    The 8x8 images are rotated and kept flattened as 64 features. Angles (degrees,
    counter-clockwise) from ``rotations_list`` or drawn in [-180, 180) with ``seed``.
    """
    train, test = _datasets()
    bench = rotated_benchmark(train, test, n_experiences, seed=seed,
                              rotations_list=rotations_list, task_labels=return_task_id)
    bench.name = "RotatedDigits"
    return bench
