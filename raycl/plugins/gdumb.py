"""GDumb: a class-balanced memory and a model retrained from scratch on it for every experience.

Prabhu, Torr and Dokania 2020, "GDumb: A Simple Approach that Questions Our Progress in
Continual Learning" (ECCV). After an experience's data arrive, a class-balanced memory of at most
``mem_size`` samples is updated with them (:class:`ClassBalancedStoragePolicy`) and becomes the
whole training set of the experience; before training, the model is reset to its initial weights
(and the optimizer's state is cleared, as a model trained from scratch would have none).

Initial weights are the model's state when the plugin first sees it. Parameters that appear
later (a new head of a multi-head model) are recorded when they appear, still untrained, and
reset to that; a tensor that grew (more output units) gets its old part reset to the recorded
values and keeps its newly created part as initial value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from raycl.benchmarks.base import TensorCLDataset
from raycl.checks import check_int
from raycl.plugins.base import Strategy, StrategyPlugin
from raycl.plugins.storage_policy import ClassBalancedStoragePolicy, Group


class GDumbPlugin(StrategyPlugin):
    """Greedy class-balanced sampler plus a dumb learner trained only on the memory.

    Args:
        mem_size: the memory's capacity in samples (>= 1).
    """

    def __init__(self, mem_size: int = 200) -> None:
        super().__init__()
        self.mem_size = check_int("mem_size", mem_size, minimum=1)
        self.storage_policy = ClassBalancedStoragePolicy({}, mem_size, adaptive_size=True)
        self.init_state: dict[str, Tensor] | None = None

    @property
    def ext_mem(self) -> dict[Group, TensorCLDataset]:
        """The memory: class (or ``(task, class)``) -> samples."""
        return self.storage_policy.ext_mem

    def after_train_dataset_adaptation(self, strategy: Strategy, **kwargs: Any) -> None:
        self.storage_policy(strategy)
        groups = [d for d in self.ext_mem.values() if len(d)]
        strategy.adapted_dataset = TensorCLDataset.concat(groups).to(strategy.device)

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        # fires after model adaptation, so heads created for this experience are still untrained
        self.reset_model(strategy)

    @torch.no_grad()
    def reset_model(self, strategy: Strategy) -> None:
        """Load the initial weights into ``strategy.model`` (in place) and clear optimizer state."""
        current = strategy.model.state_dict()
        if self.init_state is None:
            self.init_state = {k: v.detach().clone() for k, v in current.items()}
            return
        for k, v in current.items():
            init = self.init_state.get(k)
            if init is None:  # appeared since the snapshot: its fresh value is its initial one
                self.init_state[k] = v.detach().clone()
            elif init.shape == v.shape:
                v.copy_(init)
            else:  # grew (or shrank): reset the overlap, keep the rest as created
                if init.dim() == v.dim():
                    overlap = tuple(slice(0, min(a, b)) for a, b in zip(init.shape, v.shape,
                                                                        strict=True))
                    v[overlap] = init[overlap].to(v.device)
                self.init_state[k] = v.detach().clone()
        strategy.optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        """The memory and the initial weights."""
        return {"storage_policy": self.storage_policy.state_dict(),
                "init_state": dict(self.init_state) if self.init_state is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.storage_policy.load_state_dict(state["storage_policy"])
        init = state["init_state"]
        self.init_state = None if init is None else dict(init)
