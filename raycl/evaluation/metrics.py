"""Accuracy, loss and confusion-matrix metrics, named exactly as Avalanche names them.

Each factory returns a list with one metric object that handles every granularity asked for,
so a minibatch's predictions are computed once however many granularities are logged.

Names (``T`` = task label, ``E`` = experience id, three digits):

===========================  ==================================================================
``accuracy_metrics``         ``Top1_Acc_MB/train_phase/train_stream/TaskT``,
                             ``Top1_Acc_Epoch/train_phase/train_stream/TaskT``,
                             ``Top1_RunningAcc_Epoch/train_phase/train_stream/TaskT``,
                             ``Top1_Acc_Exp/eval_phase/test_stream/TaskT/ExpE``,
                             ``Top1_Acc_Stream/eval_phase/test_stream/TaskT``,
                             ``Accuracy_On_Trained_Experiences/eval_phase/test_stream/TaskT``
``loss_metrics``             ``Loss_MB``, ``Loss_Epoch``, ``RunningLoss_Epoch``, ``Loss_Exp``,
                             ``Loss_Stream`` with the same suffixes
``confusion_matrix_metrics`` ``ConfusionMatrix_Stream/eval_phase/test_stream``
===========================  ==================================================================

Accuracy is split by the task labels of the samples (a multi-task stream gives one
``Top1_Acc_Stream`` per task label, as Avalanche does); the loss, a per-minibatch scalar, is
filed under the experience's task label. Stream values weight every sample (accuracy) or
minibatch by its size (loss), not every experience equally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from raycl.checks import check_choice, check_optional_int
from raycl.evaluation.metric_base import (
    PROGRESS_HOOKS,
    BatchSums,
    ExperienceResult,
    MetricResult,
    OutputQueue,
    PluginMetric,
    ProgressMetric,
    Totals,
    add_totals,
    means,
    metric_name,
    predictions,
    sample_task_labels,
    stream_name,
    targets,
)

if TYPE_CHECKING:  # pragma: no cover
    from raycl.plugins.base import Strategy

__all__ = ["AccuracyMetric", "ConfusionMatrixMetric", "LossMetric", "accuracy_metrics",
           "confusion_matrix_metrics", "loss_metrics"]


class _MeanMetric(ProgressMetric):
    """A mean over minibatches, epochs, evaluated experiences and streams, split by task.

    With ``experience=True``, :attr:`last_experience` holds what the last ``after_eval_exp``
    emitted, in structured form (the evaluator builds its matrices from it).
    """

    #: granularity -> metric base name
    NAMES: ClassVar[dict[str, str]]

    def __init__(self, *, minibatch: bool = False, epoch: bool = False,
                 epoch_running: bool = False, experience: bool = False, stream: bool = False,
                 trained_experience: bool = False) -> None:
        super().__init__()
        self.minibatch, self.epoch, self.epoch_running = minibatch, epoch, epoch_running
        self.experience, self.stream = experience, stream
        self.trained_experience = trained_experience
        # Per-minibatch values need a host sync every iteration; only when asked for.
        self._sync_each_iteration = minibatch or epoch_running
        hooks: set[str] = set()
        if minibatch or epoch or epoch_running:
            hooks |= {"before_training_epoch", "after_training_iteration"}
        if epoch:
            hooks.add("after_training_epoch")
        if experience or stream or trained_experience:
            hooks |= {"before_eval", "before_eval_exp", "after_eval_iteration", "after_eval_exp"}
        if stream or trained_experience:
            hooks.add("after_eval")
        if trained_experience:
            hooks |= PROGRESS_HOOKS
        self._hooks = frozenset(hooks)
        self._train = self._accumulator()
        self._eval = self._accumulator()
        self._epoch_totals: Totals = {}
        self._stream_totals: Totals = {}
        self._trained_totals: Totals = {}
        #: The per-experience values of the experience being evaluated, once it is done
        #: (``None`` before, or when it emitted nothing).
        self.last_experience: ExperienceResult | None = None

    # ---- what a subclass defines ----------------------------------------------------------
    def _accumulator(self) -> Any:
        raise NotImplementedError

    def _add(self, acc: Any, strategy: Strategy) -> None:
        raise NotImplementedError

    # ---- training -------------------------------------------------------------------------
    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._train.clear()
        self._epoch_totals = {}
        return None

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._add(self._train, strategy)
        if not self._sync_each_iteration:
            return None
        batch = self._train.reduce()
        add_totals(self._epoch_totals, batch)
        out: dict[str, float] = {}
        if self.minibatch:
            for task, value in means(batch).items():
                out[metric_name(self.NAMES["minibatch"], strategy, task)] = value
        if self.epoch_running:
            for task, value in means(self._epoch_totals).items():
                out[metric_name(self.NAMES["epoch_running"], strategy, task)] = value
        return out

    def after_training_epoch(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        add_totals(self._epoch_totals, self._train.reduce())
        return {metric_name(self.NAMES["epoch"], strategy, task): value
                for task, value in means(self._epoch_totals).items()}

    # ---- evaluation -----------------------------------------------------------------------
    def before_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._stream_totals = {}
        self._trained_totals = {}
        return None

    def before_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._eval.clear()
        self.last_experience = None
        return None

    def after_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._add(self._eval, strategy)
        return None

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        totals = self._eval.reduce()
        add_totals(self._stream_totals, totals)
        exp = int(strategy.experience.current_experience)
        if self.trained_experience and exp <= self._progress.row(strategy):
            add_totals(self._trained_totals, totals)
        if not self.experience:
            return None
        values = means(totals)
        if values:
            self.last_experience = ExperienceResult(stream_name(strategy), exp, values)
        return {metric_name(self.NAMES["experience"], strategy, task, exp): value
                for task, value in values.items()}

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        out: dict[str, float] = {}
        if self.stream:
            for task, value in means(self._stream_totals).items():
                out[metric_name(self.NAMES["stream"], strategy, task)] = value
        if self.trained_experience:
            for task, value in means(self._trained_totals).items():
                out[metric_name(self.NAMES["trained_experience"], strategy, task)] = value
        return out

    # ---- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        self._train.clear()
        self._eval.clear()
        self._epoch_totals, self._stream_totals, self._trained_totals = {}, {}, {}
        self.last_experience = None
        self._progress.in_exp, self._progress.start_iter = False, 0

    def state_dict(self) -> dict[str, Any]:
        # Per-epoch and per-eval sums restart with their period: only the progress persists.
        return {"progress": self._progress.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._progress.load_state_dict(state["progress"])


class AccuracyMetric(_MeanMetric):
    """Top-1 accuracy (fraction of samples whose argmax output is the target), by task label.

    ``trained_experience``: accuracy over the evaluated experiences already trained on
    (experience id ``<=`` the last trained row, see ``TrainingProgress``); unlike Avalanche,
    an experience being trained when a periodic evaluation runs counts as trained, and an
    evaluation before any training reports nothing.
    """

    NAMES: ClassVar[dict[str, str]] = {
        "minibatch": "Top1_Acc_MB",
        "epoch": "Top1_Acc_Epoch",
        "epoch_running": "Top1_RunningAcc_Epoch",
        "experience": "Top1_Acc_Exp",
        "stream": "Top1_Acc_Stream",
        "trained_experience": "Accuracy_On_Trained_Experiences",
    }

    def _accumulator(self) -> OutputQueue:
        return OutputQueue()

    def _add(self, acc: OutputQueue, strategy: Strategy) -> None:
        acc.add(strategy.mb_output, strategy.mb_y, sample_task_labels(strategy))


class LossMetric(_MeanMetric):
    """Mean of ``strategy.loss`` weighted by minibatch size, under the experience's task label.

    In training ``strategy.loss`` is the full loss (penalties included); in evaluation, the
    criterion's loss.
    """

    NAMES: ClassVar[dict[str, str]] = {
        "minibatch": "Loss_MB",
        "epoch": "Loss_Epoch",
        "epoch_running": "RunningLoss_Epoch",
        "experience": "Loss_Exp",
        "stream": "Loss_Stream",
    }

    def __init__(self, *, minibatch: bool = False, epoch: bool = False,
                 epoch_running: bool = False, experience: bool = False,
                 stream: bool = False) -> None:
        super().__init__(minibatch=minibatch, epoch=epoch, epoch_running=epoch_running,
                         experience=experience, stream=stream)

    def _accumulator(self) -> BatchSums:
        return BatchSums()

    def _add(self, acc: BatchSums, strategy: Strategy) -> None:
        acc.add(strategy.loss.detach(), int(strategy.mb_y.shape[0]),
                int(strategy.experience.task_label))


def accuracy_metrics(*, minibatch: bool = False, epoch: bool = False,
                     epoch_running: bool = False, experience: bool = False,
                     stream: bool = False, trained_experience: bool = False) -> list[PluginMetric]:
    """Top-1 accuracy at the chosen granularities (Avalanche's ``accuracy_metrics``).

    ``minibatch`` and ``epoch_running`` emit every iteration and so sync with the device every
    iteration; the others reduce once per epoch or evaluated experience.
    """
    flags = dict(minibatch=minibatch, epoch=epoch, epoch_running=epoch_running,
                 experience=experience, stream=stream, trained_experience=trained_experience)
    return [AccuracyMetric(**flags)] if any(flags.values()) else []


def loss_metrics(*, minibatch: bool = False, epoch: bool = False, epoch_running: bool = False,
                 experience: bool = False, stream: bool = False) -> list[PluginMetric]:
    """Loss at the chosen granularities (Avalanche's ``loss_metrics``)."""
    flags = dict(minibatch=minibatch, epoch=epoch, epoch_running=epoch_running,
                 experience=experience, stream=stream)
    return [LossMetric(**flags)] if any(flags.values()) else []


class ConfusionMatrixMetric(PluginMetric):
    """Confusion matrix over an evaluated stream: ``cm[true, predicted]`` counts (CPU tensor).

    Args:
        num_classes: matrix size; ``None`` takes the model's output width (growing with it).
        normalize: ``None`` (counts), ``"true"`` (rows sum to 1), ``"pred"`` (columns sum to
            1) or ``"all"`` (the matrix sums to 1).
    """

    def __init__(self, num_classes: int | None = None, normalize: str | None = None) -> None:
        super().__init__()
        self.num_classes = check_optional_int("num_classes", num_classes, minimum=1)
        self.normalize = check_choice("normalize", normalize, (None, "true", "pred", "all"))
        self._cm: torch.Tensor | None = None
        self._hooks = frozenset({"before_eval", "after_eval_iteration", "after_eval"})

    def before_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._cm = None
        return None

    def after_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        output = strategy.mb_output
        y = targets(strategy.mb_y).long()
        pred = predictions(output).long()
        if output.dim() > 1:
            width = int(output.shape[1])
            if self.num_classes is not None and width > self.num_classes:
                raise ValueError(f"ConfusionMatrixMetric: num_classes={self.num_classes} but "
                                 f"the model outputs {width} classes")
        else:  # predicted labels: the size needs their maximum (one sync, rare case)
            width = int(torch.maximum(y.max(), pred.max())) + 1
        size = self.num_classes or width
        cm = self._cm
        if cm is None:
            cm = torch.zeros(size, size, dtype=torch.long, device=y.device)
        elif size > cm.shape[0]:  # the head grew during the stream
            grown = torch.zeros(size, size, dtype=torch.long, device=cm.device)
            grown[: cm.shape[0], : cm.shape[1]] = cm
            cm = grown
        cm.index_put_((y, pred), torch.ones_like(y), accumulate=True)
        self._cm = cm
        return None

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        if self._cm is None:
            return None
        cm = self._cm.cpu()
        self._cm = None
        value: torch.Tensor = cm
        if self.normalize is not None:
            f = cm.to(torch.float64)
            if self.normalize == "true":
                denom = f.sum(dim=1, keepdim=True)
            elif self.normalize == "pred":
                denom = f.sum(dim=0, keepdim=True)
            else:
                denom = f.sum()
            value = torch.nan_to_num(f / denom)
        return {metric_name("ConfusionMatrix_Stream", strategy): value}


def confusion_matrix_metrics(num_classes: int | None = None, normalize: str | None = None,
                             stream: bool = True) -> list[PluginMetric]:
    """The stream confusion matrix as a tensor (Avalanche's ``confusion_matrix_metrics`` with
    ``save_image=False``; no image is drawn, so matplotlib is never imported)."""
    return [ConfusionMatrixMetric(num_classes, normalize)] if stream else []
