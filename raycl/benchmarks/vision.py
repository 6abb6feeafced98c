"""MNIST, Fashion-MNIST and CIFAR benchmarks.

Files already on disk (torchvision's layout under ``root``) are read by
:mod:`raycl.benchmarks.readers` into tensors, the fast path, with no torchvision needed.
torchvision (``pip install raycl[vision]``) is used only to download (``download=True``) and
when a transform is asked for (e.g. train-time augmentation): then experiences wrap
torchvision's datasets lazily and the transform runs on every access.

``root`` defaults to ``$RAYCL_DATA`` or ``~/.raycl/data``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import TensorDataset

from raycl.benchmarks.base import CLBenchmark
from raycl.benchmarks.generators import nc_benchmark, permuted_benchmark
from raycl.benchmarks.readers import (
    CIFAR10_STATS,
    CIFAR100_STATS,
    FASHION_MNIST_STATS,
    MNIST_STATS,
    cifar_files_present,
    load_cifar_tensors,
    load_mnist_tensors,
    mnist_files_present,
)

__all__ = [
    "PermutedMNIST",
    "SplitCIFAR10",
    "SplitCIFAR100",
    "SplitFashionMNIST",
    "SplitMNIST",
    "default_dataset_root",
]

Transform = Callable[[Any], Tensor]

_TV_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", 10: "CIFAR10",
               100: "CIFAR100"}
_STATS = {"mnist": MNIST_STATS, "fashion_mnist": FASHION_MNIST_STATS, 10: CIFAR10_STATS,
          100: CIFAR100_STATS}


def default_dataset_root() -> Path:
    """Where datasets live unless a ``root`` is given: ``$RAYCL_DATA`` or ``~/.raycl/data``."""
    return Path(os.environ.get("RAYCL_DATA", "~/.raycl/data")).expanduser()


def _require_torchvision(why: str) -> Any:
    try:
        import torchvision
    except Exception as err:  # ImportError, or a broken install failing at import
        raise ImportError(f"torchvision is needed to {why}: pip install raycl[vision] "
                          f"(or pip install torchvision)") from err
    return torchvision


def _load(kind: str | int, root: str | Path | None, download: bool, flatten: bool,
          normalize: bool, train_transform: Transform | None,
          eval_transform: Transform | None) -> tuple[Any, Any]:
    """Train and test datasets: tensors read from disk, or torchvision datasets if transforms."""
    root = default_dataset_root() if root is None else Path(root).expanduser()
    is_mnist = kind in ("mnist", "fashion_mnist")
    if train_transform is not None or eval_transform is not None:
        tv = _require_torchvision("apply image transforms")
        cls = getattr(tv.datasets, _TV_CLASSES[kind])
        default = _default_transform(tv, _STATS[kind], flatten)
        return (cls(str(root), train=True, download=download,
                    transform=train_transform or default),
                cls(str(root), train=False, download=download,
                    transform=eval_transform or default))
    present = (mnist_files_present(root, kind) if is_mnist  # type: ignore[arg-type]
               else cifar_files_present(root, kind))  # type: ignore[arg-type]
    if download and not present:
        tv = _require_torchvision("download datasets")
        cls = getattr(tv.datasets, _TV_CLASSES[kind])
        for train in (True, False):  # torchvision fetches the files; we read them below
            cls(str(root), train=train, download=True)
    if is_mnist:
        tensors = load_mnist_tensors(root, kind, flatten=flatten,  # type: ignore[arg-type]
                                     normalize=normalize)
    else:
        tensors = load_cifar_tensors(root, kind, flatten=flatten,  # type: ignore[arg-type]
                                     normalize=normalize)
    x_tr, y_tr, x_te, y_te = tensors
    return TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te)


def _default_transform(tv: Any, stats: tuple[tuple[float, ...], tuple[float, ...]],
                       flatten: bool) -> Any:
    """What the tensor path computes, as a torchvision transform (for the side not given)."""
    import torch

    steps = [tv.transforms.ToTensor(), tv.transforms.Normalize(*stats)]
    if flatten:
        steps.append(tv.transforms.Lambda(torch.flatten))
    return tv.transforms.Compose(steps)


def _split(kind: str | int, name: str, n_experiences: int, return_task_id: bool,
           seed: int | None, fixed_class_order: Sequence[int] | None, root: str | Path | None,
           download: bool, shuffle: bool, class_ids_from_zero_in_each_exp: bool | None,
           flatten: bool, normalize: bool, train_transform: Transform | None,
           eval_transform: Transform | None) -> CLBenchmark:
    train, test = _load(kind, root, download, flatten, normalize, train_transform,
                        eval_transform)
    if class_ids_from_zero_in_each_exp is None:
        class_ids_from_zero_in_each_exp = bool(return_task_id)
    bench = nc_benchmark(train, test, n_experiences, task_labels=return_task_id, seed=seed,
                         fixed_class_order=fixed_class_order,
                         class_ids_from_zero_in_each_exp=class_ids_from_zero_in_each_exp,
                         shuffle=shuffle)
    bench.name = name
    return bench


def SplitMNIST(n_experiences: int = 5, return_task_id: bool = False, seed: int | None = None,
               fixed_class_order: Sequence[int] | None = None, root: str | Path | None = None,
               download: bool = False, *, shuffle: bool = True,
               class_ids_from_zero_in_each_exp: bool | None = None, flatten: bool = True,
               normalize: bool = True, train_transform: Transform | None = None,
               eval_transform: Transform | None = None) -> CLBenchmark:
    """MNIST's ten digits split evenly over ``n_experiences`` (class- or task-incremental).

    Args:
        n_experiences: experiences; must divide the number of classes.
        return_task_id: experience ``i`` gets task label ``i`` (task-incremental).
        seed: seeds the class order (private generator); None: a random order.
        fixed_class_order: explicit class order (a permutation of the classes).
        root: dataset folder in torchvision's layout (default :func:`default_dataset_root`).
        download: fetch missing files with torchvision.
        shuffle: False keeps the sorted class order when no fixed_class_order is given.
        class_ids_from_zero_in_each_exp: relabel classes 0..k-1 per experience; defaults to
            ``return_task_id`` (Avalanche defaults to False).
        flatten: samples as flat vectors (for MLPs) instead of (C, H, W) images.
        normalize: standardise with the dataset's channel mean/std; else values in [0, 1].
        train_transform, eval_transform: torchvision transforms of PIL images (need
            torchvision). Experiences are then lazy, and ``flatten``/``normalize`` shape only
            the default transform of the side left as None.

    Raises:
        FileNotFoundError: files missing and ``download=False``.
        ImportError: torchvision needed (download or transforms) but not installed.
    """
    return _split("mnist", "SplitMNIST", n_experiences, return_task_id, seed,
                  fixed_class_order, root, download, shuffle, class_ids_from_zero_in_each_exp,
                  flatten, normalize, train_transform, eval_transform)


def SplitFashionMNIST(n_experiences: int = 5, return_task_id: bool = False,
                      seed: int | None = None, fixed_class_order: Sequence[int] | None = None,
                      root: str | Path | None = None, download: bool = False, *,
                      shuffle: bool = True, class_ids_from_zero_in_each_exp: bool | None = None,
                      flatten: bool = True, normalize: bool = True,
                      train_transform: Transform | None = None,
                      eval_transform: Transform | None = None) -> CLBenchmark:
    """Fashion-MNIST's ten classes split evenly over ``n_experiences``; arguments as
    :func:`SplitMNIST`."""
    return _split("fashion_mnist", "SplitFashionMNIST", n_experiences, return_task_id, seed,
                  fixed_class_order, root, download, shuffle, class_ids_from_zero_in_each_exp,
                  flatten, normalize, train_transform, eval_transform)


def SplitCIFAR10(n_experiences: int = 5, return_task_id: bool = False, seed: int | None = None,
                 fixed_class_order: Sequence[int] | None = None,
                 root: str | Path | None = None, download: bool = False, *,
                 shuffle: bool = True, class_ids_from_zero_in_each_exp: bool | None = None,
                 flatten: bool = False, normalize: bool = True,
                 train_transform: Transform | None = None,
                 eval_transform: Transform | None = None) -> CLBenchmark:
    """CIFAR-10's ten classes split evenly over ``n_experiences``; arguments as
    :func:`SplitMNIST` (images stay (3, 32, 32) unless ``flatten``)."""
    return _split(10, "SplitCIFAR10", n_experiences, return_task_id, seed, fixed_class_order,
                  root, download, shuffle, class_ids_from_zero_in_each_exp, flatten, normalize,
                  train_transform, eval_transform)


def SplitCIFAR100(n_experiences: int = 10, return_task_id: bool = False,
                  seed: int | None = None, fixed_class_order: Sequence[int] | None = None,
                  root: str | Path | None = None, download: bool = False, *,
                  shuffle: bool = True, class_ids_from_zero_in_each_exp: bool | None = None,
                  flatten: bool = False, normalize: bool = True,
                  train_transform: Transform | None = None,
                  eval_transform: Transform | None = None) -> CLBenchmark:
    """CIFAR-100's hundred fine classes split evenly over ``n_experiences``; arguments as
    :func:`SplitMNIST` (images stay (3, 32, 32) unless ``flatten``)."""
    return _split(100, "SplitCIFAR100", n_experiences, return_task_id, seed,
                  fixed_class_order, root, download, shuffle, class_ids_from_zero_in_each_exp,
                  flatten, normalize, train_transform, eval_transform)


def PermutedMNIST(n_experiences: int = 10, seed: int | None = None,
                  root: str | Path | None = None, download: bool = False, *,
                  return_task_id: bool = False, flatten: bool = True,
                  normalize: bool = True) -> CLBenchmark:
    """MNIST with one fixed pixel permutation per experience (domain-incremental).

    The first experience is permuted too, as in Avalanche. Every experience holds its own
    permuted copy of the 70,000 images (about 220 MB each as float32).

    Args:
        n_experiences: number of permutations.
        seed: seeds the permutations (private generator); None: random ones.
        root, download: as for :func:`SplitMNIST`.
        return_task_id: experience ``i`` gets task label ``i``.
        flatten, normalize: as for :func:`SplitMNIST`.
    """
    train, test = _load("mnist", root, download, flatten, normalize, None, None)
    bench = permuted_benchmark(train, test, n_experiences, seed=seed,
                               task_labels=return_task_id)
    bench.name = "PermutedMNIST"
    return bench
