"""Datasets, experiences and benchmarks: the data contract of the strategy loop.

Every dataset the loop sees yields ``(x, y, task_label)`` triples and exposes ``targets`` and
``task_labels`` as 1-D long tensors. :class:`TensorCLDataset` keeps its samples in tensors, which
lets the strategy train by slicing shuffled index batches (the fast path); any other
:class:`CLDataset` (e.g. torchvision images with transforms) goes through a ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset


class CLDataset(Dataset):
    """A dataset of ``(x, y, task_label)`` with ``targets`` and ``task_labels`` tensors."""

    targets: Tensor
    task_labels: Tensor

    def subset(self, indices: Tensor | Sequence[int]) -> CLDataset:  # pragma: no cover
        """The samples at ``indices``, in that order."""
        raise NotImplementedError


class TensorCLDataset(CLDataset):
    """Samples held in tensors: ``x`` (N, ...), ``targets`` (N,), ``task_labels`` (N,)."""

    def __init__(self, x: Tensor, targets: Tensor, task_labels: Tensor | int = 0) -> None:
        if not isinstance(x, Tensor) or not isinstance(targets, Tensor):
            raise TypeError("TensorCLDataset: x and targets must be tensors")
        if x.shape[0] != targets.shape[0]:
            raise ValueError(
                f"TensorCLDataset: x has {x.shape[0]} samples but targets has {targets.shape[0]}"
            )
        if isinstance(task_labels, int):
            task_labels = torch.full((x.shape[0],), task_labels, dtype=torch.long)
        if task_labels.shape[0] != x.shape[0]:
            raise ValueError("TensorCLDataset: task_labels must have one entry per sample")
        self.x = x
        self.targets = targets.long()
        self.task_labels = task_labels.long().to(targets.device)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.x[i], self.targets[i], self.task_labels[i]

    @property
    def device(self) -> torch.device:
        """Where the tensors live."""
        return self.x.device

    def to(self, device: torch.device | str) -> TensorCLDataset:
        """This dataset with every tensor on ``device`` (self if already there)."""
        device = torch.device(device)
        if self.x.device == device:
            return self
        return TensorCLDataset(self.x.to(device), self.targets.to(device),
                               self.task_labels.to(device))

    def subset(self, indices: Tensor | Sequence[int]) -> TensorCLDataset:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return TensorCLDataset(self.x[idx], self.targets[idx], self.task_labels[idx])

    @staticmethod
    def concat(datasets: Sequence[TensorCLDataset]) -> TensorCLDataset:
        """All samples of ``datasets`` in order (they must share a device)."""
        if not datasets:
            raise ValueError("concat: no datasets given")
        return TensorCLDataset(torch.cat([d.x for d in datasets]),
                               torch.cat([d.targets for d in datasets]),
                               torch.cat([d.task_labels for d in datasets]))


class SubsetCLDataset(CLDataset):
    """A view of an indexable dataset of ``(x, y)`` pairs, with remapped targets and task labels.

    Used for datasets that cannot be tensors up front, such as images decoded and augmented
    by a ``transform`` on every access.
    """

    def __init__(self, base: Any, indices: Tensor, targets: Tensor, task_labels: Tensor,
                 transform: Callable[[Any], Tensor] | None = None) -> None:
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.task_labels = torch.as_tensor(task_labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        x = self.base[int(self.indices[i])][0]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i], self.task_labels[i]

    def subset(self, indices: Tensor | Sequence[int]) -> SubsetCLDataset:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return SubsetCLDataset(self.base, self.indices[idx], self.targets[idx],
                               self.task_labels[idx], self.transform)


@dataclass(eq=False)
class Experience:
    """One step of a stream: its data and what the benchmark knows about it."""

    dataset: CLDataset
    current_experience: int
    classes_in_this_experience: list[int]
    task_label: int
    origin_stream: str  # "train", "valid" or "test"
    benchmark: Any = field(default=None, repr=False)

    @property
    def task_labels(self) -> list[int]:
        """Task labels present in this experience (Avalanche compatibility)."""
        return [self.task_label]


@dataclass(eq=False)
class CLBenchmark:
    """A continual-learning benchmark: matching train and test streams (and optionally a
    validation stream, see :func:`~raycl.benchmarks.benchmark_with_validation_stream`)."""

    train_stream: list[Experience]
    test_stream: list[Experience]
    n_classes: int
    classes_order: list[int]
    task_labels: bool = False
    name: str = "benchmark"
    #: The original class ids of each training experience, position-matched with that
    #: experience's ``classes_in_this_experience`` (identical lists unless class ids were
    #: remapped): ``original_classes_in_exp[e][r]`` is the original id of
    #: ``train_stream[e].classes_in_this_experience[r]``.
    original_classes_in_exp: list[list[int]] = field(default_factory=list)
    #: Held-out parts of the training experiences, position-matched with ``train_stream``
    #: (``origin_stream="valid"``); empty unless the benchmark was built with one.
    valid_stream: list[Experience] = field(default_factory=list)

    @property
    def n_experiences(self) -> int:
        """Number of training experiences."""
        return len(self.train_stream)

    @property
    def streams(self) -> dict[str, list[Experience]]:
        """The streams by name: ``train``, ``valid`` (only when there is one) and ``test``."""
        if self.valid_stream:
            return {"train": self.train_stream, "valid": self.valid_stream,
                    "test": self.test_stream}
        return {"train": self.train_stream, "test": self.test_stream}

    def __post_init__(self) -> None:
        for exp in [*self.train_stream, *self.valid_stream, *self.test_stream]:
            exp.benchmark = self
