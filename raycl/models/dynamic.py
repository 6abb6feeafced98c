"""Modules that grow with the stream: the dynamic-module protocol and the multi-head classifier.

The strategy calls ``adaptation(experience)`` on every :class:`DynamicModule` found in
``model.modules()`` before training on an experience, then adds the new parameters to the
optimizer. A module's ``adaptation`` therefore grows only the module itself, never its children
(they get their own call), and must be idempotent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from raycl.benchmarks.base import Experience
from raycl.checks import check_int

__all__ = ["DynamicModule", "MultiHeadClassifier", "MultiTaskModule"]


class DynamicModule(nn.Module):
    """A module whose structure may grow when a new experience arrives."""

    def adaptation(self, experience: Experience) -> None:
        """Grow this module for ``experience`` (default: nothing to grow)."""


class MultiTaskModule(DynamicModule):
    """A module whose forward takes the task label of every sample.

    Subclasses implement :meth:`forward_single_task`; :meth:`forward` routes each task's
    samples there and reassembles the outputs in batch order. When tasks' outputs differ in
    width (heads of different sizes), narrower outputs are padded with :attr:`pad_value`, a
    logit low enough that softmax gives those columns zero probability and argmax never picks
    them (zero padding would beat a head whose logits are all negative).
    """

    #: Fill for the columns a task's output lacks in a mixed-task batch.
    pad_value: float = -1e4

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """The output for ``x`` whose i-th sample belongs to task ``task_labels[i]``.

        ``task_labels`` is a per-sample long tensor or one int for the whole batch.
        """
        if not isinstance(task_labels, Tensor):
            return self.forward_single_task(x, int(task_labels))
        if task_labels.dim() == 0:
            return self.forward_single_task(x, int(task_labels))
        # One host sync per batch: the set of tasks present decides the routing.
        tasks = torch.unique(task_labels).tolist()
        if len(tasks) == 1:
            return self.forward_single_task(x, tasks[0])
        return self._forward_mixed(x, task_labels, tasks)

    def _forward_mixed(self, x: Tensor, task_labels: Tensor, tasks: list[int]) -> Tensor:
        parts = []
        for task in tasks:
            idx = (task_labels == task).nonzero().squeeze(1)
            parts.append((idx, self.forward_single_task(x[idx], task)))
        width = max(out.shape[1] for _, out in parts)
        first = parts[0][1]
        out = first.new_full((x.shape[0], width, *first.shape[2:]), self.pad_value)
        for idx, part in parts:
            out[idx, :part.shape[1]] = part
        return out

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """The output for a batch whose samples all belong to ``task_label``."""
        raise NotImplementedError


class MultiHeadClassifier(MultiTaskModule):
    """One linear head per task, created as tasks appear.

    Args:
        in_features: input features of every head.
        initial_out_features: minimum width of a head, and the width of the zero logits
            returned for a task that has no head yet.

    Heads live in ``classifiers`` (an ``nn.ModuleDict`` keyed by ``str(task)``), kept in
    ascending task order so a model trained on tasks in any order and a model restored from
    its checkpoint list their parameters identically. Loading a state dict creates (or
    resizes) the heads it names, so a checkpoint restores into a freshly built model.
    """

    def __init__(self, in_features: int, initial_out_features: int = 2) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.initial_out_features = check_int("initial_out_features", initial_out_features,
                                              minimum=1)
        self.classifiers = nn.ModuleDict()
        # Heads are built after construction, possibly after .to(device/dtype): this empty
        # buffer follows the module around and tells new heads where to live.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def tasks(self) -> list[int]:
        """Task labels that have a head, ascending."""
        return [int(k) for k in self.classifiers]

    def adaptation(self, experience: Experience) -> None:
        """Create the head of ``experience.task_label`` or widen it to the experience's classes.

        Width = max(classes_in_this_experience) + 1, at least ``initial_out_features``; a head
        never shrinks, and widening keeps the trained rows. A widened head is a new
        ``nn.Linear``: the optimizer must pick up its parameters again.
        """
        classes = list(experience.classes_in_this_experience)
        width = max(self.initial_out_features, max(classes) + 1 if classes else 0)
        self._ensure_head(int(experience.task_label), width)

    def _ensure_head(self, task: int, width: int) -> None:
        key = str(task)
        old = self.classifiers[key] if key in self.classifiers else None
        if old is not None and old.out_features >= width:
            return
        head = nn.Linear(self.in_features, width, device=self._anchor.device,
                         dtype=self._anchor.dtype)
        if old is not None:
            with torch.no_grad():
                head.weight[:old.out_features] = old.weight
                head.bias[:old.out_features] = old.bias
            self.classifiers[key] = head  # replaces in place: the order is unchanged
            return
        heads = dict(self.classifiers.items())
        heads[key] = head
        self.classifiers = nn.ModuleDict(sorted(heads.items(), key=lambda kv: int(kv[0])))

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of the task's head; zeros of width ``initial_out_features`` if it has none.

        Evaluating the whole test stream after each experience reaches tasks not trained yet;
        their (meaningless) zero logits keep that evaluation running instead of crashing.
        """
        key = str(int(task_label))
        if key not in self.classifiers:
            return x.new_zeros((x.shape[0], self.initial_out_features))
        return self.classifiers[key](x)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Runs before the children load: build the heads the checkpoint holds with its
        # shapes, so nn.Module's loading finds a parameter of the right size for every key.
        head_prefix = prefix + "classifiers."
        for key, value in state_dict.items():
            if not (key.startswith(head_prefix) and key.endswith(".weight")):
                continue
            task = key[len(head_prefix):-len(".weight")]
            if not task.lstrip("-").isdigit() or value.dim() != 2:
                continue
            if value.shape[1] != self.in_features:
                error_msgs.append(f"{key}: head of {value.shape[1]} input features, this "
                                  f"classifier has in_features={self.in_features}")
                continue
            current = self.classifiers[task] if task in self.classifiers else None
            if current is not None and current.out_features > value.shape[0]:
                # A smaller saved head: rebuild at the saved size so the load is exact.
                del self.classifiers[task]
            self._ensure_head(int(task), int(value.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

