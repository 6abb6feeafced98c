"""Experience replay: every training minibatch is joined by an equally sized memory minibatch.

Rolnick et al. 2019, "Experience Replay for Continual Learning" (NeurIPS); Chaudhry et al. 2019,
"On Tiny Episodic Memories in Continual Learning". A :class:`StoragePolicy` fills the memory
after each experience (default: :class:`ExperienceBalancedStoragePolicy`). During the next
experiences each step trains on ``[current minibatch; memory minibatch]`` (twice the samples);
the epoch length is set by the current data. Memory minibatches come from shuffled cycles drawn
from torch's global generator (so a checkpointed run replays them): one cycle over the whole
memory (``memory_batches='cycled'``, what the reference library does in class-IL up to cycle
ends), the same as a loader restarted each epoch with a short last minibatch (``'loader'``,
exactly Avalanche 0.5/0.6's ``ReplayDataLoader`` in class-IL), or one cycle per memory group
with every minibatch split equally over the groups (``'balanced'``, Avalanche's
task-balanced loader when each experience has its own task label). Task labels travel with
every memory sample, so class-, task- (multi-head models route by ``mb_task_id``) and
domain-IL work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from raycl.benchmarks.base import TensorCLDataset
from raycl.checks import check_choice, check_int
from raycl.plugins.base import Strategy, StrategyPlugin
from raycl.plugins.storage_policy import (
    ExperienceBalancedStoragePolicy,
    Group,
    StoragePolicy,
)


class ReplayPlugin(StrategyPlugin):
    """Replay from a memory of at most ``mem_size`` samples.

    Args:
        mem_size: the memory's capacity in samples (>= 1).
        storage_policy: what to store; default experience-balanced and adaptive. A given
            policy must have the same ``mem_size``; its ``ext_mem`` is the plugin's memory.
        memory_batches: how each memory minibatch is drawn. ``'cycled'`` (default): the next
            ``b`` samples (``b``: the current minibatch's size) of a shuffled cycle over the
            whole memory, so every stored sample is replayed once per cycle; a minibatch may
            span two cycles and the cycle runs on across epochs. ``'loader'``: as a shuffled
            ``DataLoader`` over the memory with batch size ``train_mb_size``, restarted at each
            epoch: the last minibatch of a pass is short (the reference library's loader in
            class-IL). ``'balanced'``: ``b // G`` samples from each of the memory's G groups
            (past experiences with the default policy; the remainder to randomly chosen
            groups), each group cycled on its own. ``docs/methods.md`` compares them.
    """

    def __init__(self, mem_size: int = 200, storage_policy: StoragePolicy | None = None, *,
                 memory_batches: str = "cycled") -> None:
        super().__init__()
        self.mem_size = check_int("mem_size", mem_size, minimum=1)
        if storage_policy is None:
            storage_policy = ExperienceBalancedStoragePolicy({}, mem_size, adaptive_size=True)
        elif not isinstance(storage_policy, StoragePolicy):
            raise TypeError(f"storage_policy must be a StoragePolicy, got "
                            f"{type(storage_policy).__name__}")
        elif storage_policy.mem_size != mem_size:
            raise ValueError(f"mem_size ({mem_size}) must equal storage_policy.mem_size "
                             f"({storage_policy.mem_size})")
        self.memory_batches = check_choice("memory_batches", memory_batches,
                                           ("cycled", "loader", "balanced"))
        self.storage_policy = storage_policy
        self._mem: TensorCLDataset | None = None  # all groups, concatenated on the device
        self._spans: list[tuple[int, int]] = []  # (offset, size) of each cycle in _mem
        self._orders: list[Tensor | None] = []  # per cycle: shuffled indices being cycled
        self._cursors: list[int] = []

    @property
    def ext_mem(self) -> dict[Group, TensorCLDataset]:
        """The memory: group -> samples (the storage policy's ``ext_mem``)."""
        return self.storage_policy.ext_mem

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        groups = [d for d in self.ext_mem.values() if len(d)]
        self._mem = TensorCLDataset.concat(groups).to(strategy.device) if groups else None
        if self.memory_batches == "balanced":
            starts = torch.tensor([0] + [len(d) for d in groups]).cumsum(0).tolist()
            self._spans = [(s, len(d)) for s, d in zip(starts, groups)]
        else:
            self._spans = [(0, len(self._mem))] if self._mem is not None else []
        self._orders, self._cursors = [None] * len(self._spans), [0] * len(self._spans)

    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> None:
        if self.memory_batches == "loader":  # a new pass over the memory, as a new loader
            self._orders, self._cursors = [None] * len(self._spans), [0] * len(self._spans)

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        mem, x, y, t = self._mem, strategy.mb_x, strategy.mb_y, strategy.mb_task_id
        if mem is None or x is None or y is None or t is None:
            return
        k, n_cycles = x.shape[0], len(self._spans)
        if self.memory_batches == "loader":
            idx = self._next_indices(0, strategy.train_mb_size, mem.device, short=True)
        elif n_cycles == 1:
            idx = self._next_indices(0, k, mem.device)
        else:  # k // G from each group, the remainder to randomly chosen groups
            counts = ((torch.randperm(n_cycles) < k % n_cycles).long() + k // n_cycles).tolist()
            idx = torch.cat([self._next_indices(c, n, mem.device)
                             for c, n in enumerate(counts) if n])
        strategy.mb_x = torch.cat((x, mem.x[idx]))
        strategy.mb_y = torch.cat((y, mem.targets[idx]))
        strategy.mb_task_id = torch.cat((t, mem.task_labels[idx]))

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self.storage_policy(strategy, **kwargs)
        self._mem, self._spans, self._orders, self._cursors = None, [], [], []

    def _next_indices(self, cycle: int, k: int, device: torch.device,
                      short: bool = False) -> Tensor:
        """The next ``k`` memory indices of ``cycle``, reshuffling it when it runs out (with
        ``short``, only what is left of the cycle when fewer than ``k``)."""
        offset, n = self._spans[cycle]
        parts = []
        while k > 0:
            if self._orders[cycle] is None or self._cursors[cycle] >= n:
                self._orders[cycle] = torch.randperm(n).add_(offset).to(device)
                self._cursors[cycle] = 0
            order, cursor = self._orders[cycle], self._cursors[cycle]
            take = min(k, n - cursor)
            parts.append(order[cursor:cursor + take])  # type: ignore[index]
            self._cursors[cycle] = cursor + take
            k = 0 if short else k - take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """The memory and the position of each replay cycle."""
        empty = torch.zeros(0, dtype=torch.long)
        return {"storage_policy": self.storage_policy.state_dict(),
                "orders": [empty if o is None else o for o in self._orders],
                "has_order": [o is not None for o in self._orders],
                "cursors": list(self._cursors), "spans": [list(s) for s in self._spans]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        if "orders" not in state:  # a checkpoint from before memory_batches: one cycle
            state = {"orders": [state["order"]], "has_order": [state["has_order"]],
                     "cursors": [state["cursor"]], "spans": []}
        self._orders = [o if has else None for o, has in zip(state["orders"],
                                                             state["has_order"])]
        self._cursors = [int(c) for c in state["cursors"]]
        self._spans = [(int(a), int(b)) for a, b in state["spans"]]
