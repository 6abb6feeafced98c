"""Experience replay: every training minibatch is joined by an equally sized memory minibatch.

Rolnick et al. 2019, "Experience Replay for Continual Learning" (NeurIPS); Chaudhry et al. 2019,
"On Tiny Episodic Memories in Continual Learning". A :class:`StoragePolicy` fills the memory
after each experience (default: :class:`ExperienceBalancedStoragePolicy`). During the next
experiences each step trains on ``[current minibatch; memory minibatch]`` (twice the samples);
the epoch length is set by the current data and the memory is cycled in a shuffled order drawn
from torch's global generator, so a checkpointed run replays it. Task labels travel with every
memory sample, so class-, task- (multi-head models route by ``mb_task_id``) and domain-IL work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from raycl.benchmarks.base import TensorCLDataset
from raycl.checks import check_int
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
    """

    def __init__(self, mem_size: int = 200, storage_policy: StoragePolicy | None = None) -> None:
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
        self.storage_policy = storage_policy
        self._mem: TensorCLDataset | None = None  # all groups, concatenated on the device
        self._order: Tensor | None = None  # shuffled memory indices being cycled through
        self._cursor = 0

    @property
    def ext_mem(self) -> dict[Group, TensorCLDataset]:
        """The memory: group -> samples (the storage policy's ``ext_mem``)."""
        return self.storage_policy.ext_mem

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        groups = [d for d in self.ext_mem.values() if len(d)]
        self._mem = TensorCLDataset.concat(groups).to(strategy.device) if groups else None
        self._order, self._cursor = None, 0

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        mem, x, y, t = self._mem, strategy.mb_x, strategy.mb_y, strategy.mb_task_id
        if mem is None or x is None or y is None or t is None:
            return
        idx = self._next_indices(x.shape[0], len(mem), mem.device)
        strategy.mb_x = torch.cat((x, mem.x[idx]))
        strategy.mb_y = torch.cat((y, mem.targets[idx]))
        strategy.mb_task_id = torch.cat((t, mem.task_labels[idx]))

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self.storage_policy(strategy, **kwargs)
        self._mem, self._order = None, None

    def _next_indices(self, k: int, n: int, device: torch.device) -> Tensor:
        """The next ``k`` of ``n`` memory indices in the cycle, reshuffling when it runs out."""
        parts = []
        while k > 0:
            if self._order is None or self._cursor >= n:
                self._order, self._cursor = torch.randperm(n).to(device), 0
            take = min(k, n - self._cursor)
            parts.append(self._order[self._cursor:self._cursor + take])
            self._cursor += take
            k -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """The memory and the replay cycle's position."""
        order = self._order if self._order is not None else torch.zeros(0, dtype=torch.long)
        return {"storage_policy": self.storage_policy.state_dict(), "order": order,
                "cursor": self._cursor, "has_order": self._order is not None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        self._order = state["order"] if state["has_order"] else None
        self._cursor = int(state["cursor"])
