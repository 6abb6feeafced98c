"""What every metric shares: the plugin base, Avalanche-style names, sync-free accumulators.

A metric is a :class:`PluginMetric`: a strategy plugin whose callbacks may return a dict of
``{full metric name: value}`` to emit. The :class:`~raycl.evaluation.plugin.EvaluationPlugin`
records what they return and hands it to the loggers. A metric lists in ``_hooks`` only the
callbacks its options need, so the strategy never calls it for anything else.

Speed rule: callbacks that run every iteration only queue tensors (no ``.item()``, no host
sync); values are reduced once per epoch or per evaluated experience.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from raycl.plugins.base import Strategy, StrategyPlugin

__all__ = ["ExperienceResult", "MetricResult", "PluginMetric", "TrainingProgress", "metric_name",
           "phase_name", "stream_name"]

#: What a metric callback returns: full metric names and their values, or ``None``.
MetricResult = dict[str, Any] | None



class ExperienceResult(NamedTuple):
    """What a per-experience metric emitted for one evaluated experience, in structured form:
    the values of its ``.../<stream>/TaskTTT/ExpEEE`` names, without names to parse back."""

    #: ``"<origin>_stream"`` of the evaluated stream (as in the metric names).
    stream: str
    #: Id of the evaluated experience in its stream.
    experience: int
    #: Task label -> value (only task labels that had samples).
    values: dict[int, float]


#: Callbacks that tell a metric how far training has got (see :class:`TrainingProgress`).
PROGRESS_HOOKS = frozenset({"before_training", "before_training_exp", "after_training_exp",
                            "after_training"})


# ---- names ------------------------------------------------------------------------------------
def phase_name(strategy: Strategy) -> str:
    """``"train"`` while training, ``"eval"`` otherwise (Avalanche's phase names)."""
    return "train" if strategy.is_training else "eval"


def stream_name(strategy: Strategy) -> str:
    """``"<origin>_stream"`` of the current experience (``eval_stream_name`` in eval)."""
    name = None if strategy.is_training else getattr(strategy, "eval_stream_name", None)
    if not name:
        name = str(strategy.experience.origin_stream)
    return name if name.endswith("_stream") else f"{name}_stream"


def metric_name(base: str, strategy: Strategy, task: int | None = None,
                exp: int | None = None) -> str:
    """``base/<phase>_phase/<stream>[/TaskTTT][/ExpEEE]``, exactly as Avalanche writes it."""
    name = f"{base}/{phase_name(strategy)}_phase/{stream_name(strategy)}"
    if task is not None:
        name += f"/Task{int(task):03}"
    if exp is not None:
        name += f"/Exp{int(exp):03}"
    return name


# ---- base class -------------------------------------------------------------------------------
class PluginMetric(StrategyPlugin):
    """Base of every metric: a plugin whose callbacks may return ``{name: value}`` to emit.

    Subclasses set ``self._hooks`` in ``__init__`` to the callbacks their options use; the
    evaluator calls nothing else. ``state_dict`` holds what the metric learned across
    experiences (never per-epoch scratch), as tensors and plain containers.
    """

    def __init__(self) -> None:
        self._hooks: frozenset[str] = frozenset()

    def active_hooks(self) -> frozenset[str]:
        # Only the callbacks the options need, and only ones this class really implements.
        return self._hooks & super().active_hooks()

    def reset(self) -> None:
        """Forget everything learned (``state_dict`` becomes the initial one)."""


class TrainingProgress:
    """Which row of the accuracy matrix an evaluation belongs to, read from the strategy clock.

    ``clock.train_exp_counter`` counts finished training experiences. An evaluation that runs
    while an experience is being trained (periodic evaluation every k epochs), after at least
    one of its iterations, belongs to that experience's row, as in Avalanche (whose row is the
    last experience that *started* training); otherwise it belongs to the last finished one.
    Row ``-1`` is the untrained model. Row ``i`` assumes the ``i``-th experience trained is
    experience ``i`` of the stream (the usual order).
    """

    def __init__(self) -> None:
        self.in_exp = False
        self.start_iter = 0

    def before_training(self, strategy: Strategy) -> None:
        self.in_exp = False

    def before_training_exp(self, strategy: Strategy) -> None:
        self.in_exp = True
        self.start_iter = int(strategy.clock.train_iterations)

    def after_training_exp(self, strategy: Strategy) -> None:
        self.in_exp = False

    def after_training(self, strategy: Strategy) -> None:
        self.in_exp = False

    def row(self, strategy: Strategy) -> int:
        """Index of the last experience the evaluated model has trained on (``-1``: none)."""
        clock = strategy.clock
        done = int(clock.train_exp_counter)
        if self.in_exp and clock.train_iterations > self.start_iter:
            return done
        return done - 1

    def state_dict(self) -> dict[str, Any]:
        return {"in_exp": self.in_exp, "start_iter": self.start_iter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_exp = bool(state["in_exp"])
        self.start_iter = int(state["start_iter"])


class ProgressMetric(PluginMetric):
    """A metric that needs :class:`TrainingProgress` (add ``PROGRESS_HOOKS`` to ``_hooks``)."""

    def __init__(self) -> None:
        super().__init__()
        self._progress = TrainingProgress()

    def before_training(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._progress.before_training(strategy)
        return None

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._progress.before_training_exp(strategy)
        return None

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._progress.after_training_exp(strategy)
        return None

    def after_training(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._progress.after_training(strategy)
        return None


# ---- accumulators -----------------------------------------------------------------------------
Totals = dict[int, list[float]]  # task label -> [sum, weight]


def add_totals(into: Totals, other: Totals) -> None:
    """``into += other`` task by task."""
    for task, (s, w) in other.items():
        acc = into.setdefault(task, [0.0, 0.0])
        acc[0] += s
        acc[1] += w


def means(totals: Totals) -> dict[int, float]:
    """Task label -> sum / weight, for tasks with weight (sorted by task label)."""
    return {t: s / w for t, (s, w) in sorted(totals.items()) if w > 0}


class SampleSums:
    """Per-sample values (e.g. correct / wrong) with their task labels, queued without syncs."""

    __slots__ = ("tasks", "values")

    def __init__(self) -> None:
        self.values: list[Tensor] = []
        self.tasks: list[Tensor] = []

    def add(self, values: Tensor, tasks: Tensor) -> None:
        self.values.append(values)
        self.tasks.append(tasks)

    def clear(self) -> None:
        self.values.clear()
        self.tasks.clear()

    def reduce(self) -> Totals:
        """Task label -> [sum, count] of everything queued (one host sync), then clear."""
        if not self.values:
            return {}
        values = torch.cat(self.values).to(torch.float64)
        tasks = torch.cat(self.tasks).to(values.device)
        self.clear()
        labels, inverse = torch.unique(tasks, return_inverse=True)
        sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=values.device)
        sums.index_add_(0, inverse, values)
        counts = torch.bincount(inverse, minlength=labels.shape[0])
        return {int(t): [float(s), float(c)]
                for t, s, c in zip(labels.tolist(), sums.tolist(), counts.tolist())}


class OutputQueue:
    """Correct / wrong per sample, by task label, for top-1 accuracy.

    ``add`` only keeps references to the minibatch's (detached) output, targets and task
    labels; the predictions of many minibatches are taken in one batched argmax when the queue
    is reduced or holds more than ``budget_bytes`` of outputs. This keeps the per-iteration
    cost of accuracy to a few list appends.
    """

    __slots__ = ("budget_bytes", "outputs", "pending_bytes", "sums", "targets", "tasks")

    def __init__(self, budget_bytes: int = 16 << 20) -> None:
        self.budget_bytes = budget_bytes
        self.outputs: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.tasks: list[Tensor] = []
        self.pending_bytes = 0
        self.sums = SampleSums()

    def add(self, output: Tensor, y: Tensor, tasks: Tensor) -> None:
        output = output.detach()  # never keep the autograd graph alive
        if self.outputs and output.shape[1:] != self.outputs[-1].shape[1:]:
            self.flush()  # the head grew (or the output kind changed): no common cat
        self.outputs.append(output)
        self.targets.append(y)
        self.tasks.append(tasks)
        self.pending_bytes += output.numel() * output.element_size()
        if self.pending_bytes > self.budget_bytes:
            self.flush()

    def flush(self) -> None:
        """Turn the queued outputs into correct / wrong flags (tensor ops only, no sync)."""
        if not self.outputs:
            return
        out = self.outputs[0] if len(self.outputs) == 1 else torch.cat(self.outputs)
        y = torch.cat(self.targets)
        self.sums.add(predictions(out) == targets(y), torch.cat(self.tasks))
        self.outputs, self.targets, self.tasks = [], [], []
        self.pending_bytes = 0

    def clear(self) -> None:
        self.outputs, self.targets, self.tasks = [], [], []
        self.pending_bytes = 0
        self.sums.clear()

    def reduce(self) -> Totals:
        """Task label -> [correct, count] of everything queued (one host sync), then clear."""
        self.flush()
        return self.sums.reduce()


class BatchSums:
    """Per-minibatch scalars (e.g. the loss) weighted by minibatch size, queued without syncs."""

    __slots__ = ("sizes", "tasks", "values")

    def __init__(self) -> None:
        self.values: list[Tensor] = []
        self.sizes: list[int] = []
        self.tasks: list[int] = []

    def add(self, value: Tensor, size: int, task: int) -> None:
        self.values.append(value)
        self.sizes.append(size)
        self.tasks.append(task)

    def clear(self) -> None:
        self.values.clear()
        self.sizes.clear()
        self.tasks.clear()

    def reduce(self) -> Totals:
        """Task label -> [sum of value * size, sum of sizes] (one host sync), then clear."""
        if not self.values:
            return {}
        values = torch.stack([v.reshape(()) for v in self.values]).to(torch.float64).tolist()
        out: Totals = {}
        for v, n, t in zip(values, self.sizes, self.tasks):
            acc = out.setdefault(t, [0.0, 0.0])
            acc[0] += v * n
            acc[1] += n
        self.clear()
        return out


def predictions(output: Tensor) -> Tensor:
    """Predicted labels: argmax over classes of logits or probabilities (1-D: already labels)."""
    return output.argmax(dim=1) if output.dim() > 1 else output


def targets(y: Tensor) -> Tensor:
    """Class labels from targets (one-hot or soft targets are argmax-ed)."""
    return y.argmax(dim=1) if y.dim() > 1 else y


def sample_task_labels(strategy: Strategy) -> Tensor:
    """The minibatch's per-sample task labels (the experience's label if the loop has none)."""
    tasks = getattr(strategy, "mb_task_id", None)
    if tasks is None:
        return torch.full((strategy.mb_y.shape[0],), int(strategy.experience.task_label),
                          dtype=torch.long, device=strategy.mb_y.device)
    return tasks
