"""Storage policies: which samples a replay memory of at most ``mem_size`` samples keeps.

The memory (``ext_mem``) maps a group (an experience, or a class) to a ``TensorCLDataset`` on the
strategy's device. A policy is called after an experience with the strategy as ``data_source``
(as in Avalanche) and stores exemplars of ``data_source.experience.dataset``, shrinking older
groups by random subsampling so the groups stay balanced to within one sample and the total never
exceeds ``mem_size``; remainders are spread so the memory holds ``mem_size`` samples once enough
data has been seen. Random choices use torch's global generator, so a checkpointed run replays them.
Other datasets are stored as the tensors they yield (an augmentation is frozen when stored).

Exemplar memories for replay: Rolnick et al. 2019, "Experience Replay for Continual
Learning"; Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from raycl.benchmarks.base import CLDataset, TensorCLDataset
from raycl.checks import check_int

#: A memory group: an experience counter, a class id, or (task label, class id) for task-IL.
Group = int | tuple[int, int]


def balanced_sizes(caps: Sequence[int], budget: int) -> list[int]:
    """Split ``budget`` over groups holding ``caps`` samples as evenly as possible.

    Each group gets at most its cap; groups below their cap differ by at most one sample (earlier
    groups get the remainder); the total is ``min(budget, sum(caps))``.
    """
    sizes = [0] * len(caps)
    active = [i for i, c in enumerate(caps) if c > 0]
    left = budget
    while active and left > 0:
        share = left // len(active)
        if share == 0:  # fewer samples left than groups: one more to the earliest groups
            for i in active[:left]:
                sizes[i] += 1
            break
        still = []
        for i in active:
            add = min(share, caps[i] - sizes[i])
            sizes[i] += add
            left -= add
            if sizes[i] < caps[i]:
                still.append(i)
        active = still
    return sizes


def materialize(data: CLDataset, idx: Tensor | None = None) -> TensorCLDataset:
    """The samples of ``data`` at ``idx`` (all if None) as a ``TensorCLDataset``."""
    if isinstance(data, TensorCLDataset):
        return data if idx is None else data.subset(idx)
    idx = torch.arange(len(data.targets)) if idx is None else idx.cpu()
    if len(idx) == 0:  # keep the sample shape so empty groups still concatenate
        x0 = torch.as_tensor(data[0][0])
        return TensorCLDataset(x0.new_empty((0, *x0.shape)), torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, dtype=torch.long))
    items = [data[int(i)] for i in idx]
    return TensorCLDataset(torch.stack([torch.as_tensor(it[0]) for it in items]),
                           torch.as_tensor([int(it[1]) for it in items]),
                           torch.as_tensor([int(it[2]) for it in items]))


def experience_data(strategy: Any) -> CLDataset:
    """The training data of the strategy's current experience."""
    if strategy.experience is None:
        raise RuntimeError("no current experience: the strategy is not training")
    return strategy.experience.dataset


def random_subset(data: CLDataset, size: int) -> TensorCLDataset:
    """``size`` samples of ``data`` drawn without replacement (all of them if it has fewer)."""
    n = len(data.targets)
    if size >= n:
        return materialize(data)
    return materialize(data, torch.randperm(n)[:size])


def memory_state(ext_mem: dict[Any, TensorCLDataset]) -> list[dict[str, Any]]:
    """``ext_mem`` as a list of plain dicts of tensors, in group order (``weights_only`` safe)."""
    return [{"group": g, "x": d.x, "targets": d.targets, "task_labels": d.task_labels}
            for g, d in ext_mem.items()]


def load_memory_state(ext_mem: dict[Any, TensorCLDataset], state: list[dict[str, Any]]) -> None:
    """Refill ``ext_mem`` in place from :func:`memory_state` output."""
    ext_mem.clear()
    for e in state:
        g = e["group"]
        ext_mem[tuple(g) if isinstance(g, list | tuple) else int(g)] = TensorCLDataset(
            e["x"], e["targets"], e["task_labels"])


class StoragePolicy(ABC):
    """Decides what ``ext_mem`` (group -> ``TensorCLDataset``) keeps, in at most ``mem_size``."""

    def __init__(self, ext_mem: dict[Group, TensorCLDataset], mem_size: int) -> None:
        if not isinstance(ext_mem, dict):
            raise TypeError(f"ext_mem must be a dict, got {type(ext_mem).__name__}")
        self.ext_mem = ext_mem
        self.mem_size = check_int("mem_size", mem_size, minimum=1)

    @abstractmethod
    def __call__(self, data_source: Any, **kwargs: Any) -> None:
        """Store exemplars of ``data_source.experience.dataset`` (``data_source``: the strategy)."""

    def __len__(self) -> int:
        return sum(len(d) for d in self.ext_mem.values())

    def _to_device(self, device: torch.device) -> None:
        # a checkpoint may have been loaded onto another device than the strategy's
        for g, d in self.ext_mem.items():
            self.ext_mem[g] = d.to(device)

    def state_dict(self) -> dict[str, Any]:
        """The memory as tensors and plain containers."""
        return {"ext_mem": memory_state(self.ext_mem)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        load_memory_state(self.ext_mem, state["ext_mem"])


class ExperienceBalancedStoragePolicy(StoragePolicy):
    """One group per experience (keyed by the training-experience counter), sizes balanced.

    Adaptive: ``mem_size`` is divided over the experiences seen so far. Fixed
    (``adaptive_size=False``): experience i keeps at most ``mem_size // num_experiences`` samples
    (the first ``mem_size % num_experiences`` experiences one more).
    """

    def __init__(self, ext_mem: dict[Group, TensorCLDataset], mem_size: int,
                 adaptive_size: bool = True, num_experiences: int = -1) -> None:
        super().__init__(ext_mem, mem_size)
        self.adaptive_size = bool(adaptive_size)
        self.num_experiences = num_experiences
        if not self.adaptive_size:
            check_int("num_experiences", num_experiences, minimum=1)

    def subsample_single(self, data: CLDataset, new_size: int) -> TensorCLDataset:
        """``data`` randomly subsampled to at most ``new_size`` samples."""
        return random_subset(data, new_size)

    def subsample_all_groups(self, new_size: int) -> None:
        """Shrink every group evenly so the memory holds at most ``new_size`` samples."""
        groups = list(self.ext_mem)
        sizes = balanced_sizes([len(self.ext_mem[g]) for g in groups], new_size)
        for g, s in zip(groups, sizes, strict=True):
            self.ext_mem[g] = self.subsample_single(self.ext_mem[g], s)

    def __call__(self, data_source: Any, **kwargs: Any) -> None:
        strategy = data_source
        self._to_device(strategy.device)
        key = strategy.clock.train_exp_counter
        new = experience_data(strategy)
        if key in self.ext_mem:  # the same experience counter again: its samples compete
            new = TensorCLDataset.concat([self.ext_mem.pop(key), materialize(new).to(
                strategy.device)])
        old = list(self.ext_mem)
        if self.adaptive_size:
            sizes = balanced_sizes([len(self.ext_mem[g]) for g in old] + [len(new.targets)],
                                   self.mem_size)
            self.subsample_all_groups(sum(sizes[:-1]))
            new_size = sizes[-1]
        else:
            i = len(old)
            if i >= self.num_experiences:
                raise ValueError(f"num_experiences is {self.num_experiences} but experience "
                                 f"{i + 1} arrived; raise num_experiences or use adaptive_size")
            q, r = divmod(self.mem_size, self.num_experiences)
            new_size = q + (i < r)
        self.ext_mem[key] = self.subsample_single(new, new_size).to(strategy.device)


class ClassBalancedStoragePolicy(StoragePolicy):
    """One group per class, sizes balanced over the classes seen (or ``total_num_classes``).

    Groups are keyed by class id; samples with a non-zero task label are keyed
    ``(task_label, class)`` so task-IL classes that share ids stay apart. A class seen again
    (e.g. domain-IL) competes with its stored samples: the group is a random subset of both.
    """

    def __init__(self, ext_mem: dict[Group, TensorCLDataset], mem_size: int,
                 adaptive_size: bool = True, total_num_classes: int = -1) -> None:
        super().__init__(ext_mem, mem_size)
        self.adaptive_size = bool(adaptive_size)
        self.total_num_classes = total_num_classes
        if not self.adaptive_size:
            check_int("total_num_classes", total_num_classes, minimum=1)

    def __call__(self, data_source: Any, **kwargs: Any) -> None:
        device = data_source.device
        self._to_device(device)
        data = experience_data(data_source)
        targets, tasks = data.targets.cpu(), data.task_labels.cpu()
        code = tasks * (int(targets.max()) + 1 if len(targets) else 1) + targets
        order = torch.argsort(code, stable=True)
        _, counts = torch.unique_consecutive(code[order], return_counts=True)
        parts: dict[Group, TensorCLDataset] = {}
        for c_idx in torch.split(order, counts.tolist()) if len(order) else ():
            t, c = int(tasks[c_idx[0]]), int(targets[c_idx[0]])
            # no class keeps more than mem_size, so a subsample bounds the work on large data
            if len(c_idx) > self.mem_size:
                c_idx = c_idx[torch.randperm(len(c_idx))[:self.mem_size]]
            parts[c if t == 0 else (t, c)] = materialize(data, c_idx).to(device)
        n_groups = len(set(self.ext_mem) | set(parts))
        div_cnt = n_groups if self.adaptive_size else self.total_num_classes
        if div_cnt < n_groups:
            raise ValueError(f"total_num_classes is {self.total_num_classes} but "
                             f"{n_groups} classes arrived")
        for group, part in parts.items():
            old = self.ext_mem.get(group)
            self.ext_mem[group] = part if old is None else TensorCLDataset.concat([old, part])
        self.cutoff_memory(self.divide_remaining_samples(self.mem_size // div_cnt, div_cnt))

    def divide_remaining_samples(self, exp_mem_size: int, div_cnt: int) -> dict[Group, int]:
        """Size per group: ``exp_mem_size`` each (+1 for the first ``mem_size % div_cnt``).

        When adaptive, room that small groups leave unused goes to the others, so the total
        reaches ``mem_size`` whenever the groups hold that many samples.
        """
        groups = list(self.ext_mem)
        caps = [len(self.ext_mem[g]) for g in groups]
        if self.adaptive_size:
            sizes = balanced_sizes(caps, self.mem_size)
        else:
            r = self.mem_size - exp_mem_size * div_cnt
            sizes = [min(c, exp_mem_size + (i < r)) for i, c in enumerate(caps)]
        return dict(zip(groups, sizes, strict=True))

    def cutoff_memory(self, cutoff_per_group: dict[Group, int]) -> None:
        """Randomly subsample each group to its size in ``cutoff_per_group``."""
        for g, size in cutoff_per_group.items():
            self.ext_mem[g] = random_subset(self.ext_mem[g], size)
