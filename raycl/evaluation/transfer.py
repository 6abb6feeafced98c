"""Forgetting, backward transfer and forward transfer, computed from an accuracy matrix that
each metric keeps (and checkpoints) itself.

Every evaluated experience ``j`` stores its accuracy (over all its samples) at
``R[stream][row][j]``, where ``row`` is the last experience the model has trained on
(``TrainingProgress``: read from ``clock.train_exp_counter``; ``-1`` for an untrained model).
A later evaluation with the same row overwrites the entry, as in Avalanche. Matrices are kept
per evaluated stream, so evaluating the train stream does not disturb the test stream's.

Names: ``ExperienceForgetting/eval_phase/test_stream/TaskT/ExpE``,
``StreamForgetting/eval_phase/test_stream``, ``ExperienceBWT/...``, ``StreamBWT/...``,
``ExperienceForwardTransfer/...``, ``StreamForwardTransfer/...``. Stream values are the mean
over the experiences of the evaluation that have a value, and ``0.0`` when none has (as
Avalanche reports them, e.g. forgetting after the first experience).

The math is that of :mod:`raycl.evaluation.functional` (Lopez-Paz & Ranzato 2017; Chaudhry et
al. 2018), evaluated at the current row ``k``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from raycl.checks import check_choice
from raycl.evaluation.metric_base import (
    PROGRESS_HOOKS,
    MetricResult,
    OutputQueue,
    PluginMetric,
    ProgressMetric,
    metric_name,
    sample_task_labels,
    stream_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from raycl.plugins.base import Strategy

__all__ = ["BWTMetric", "ForgettingMetric", "ForwardTransferMetric", "bwt_metrics",
           "forgetting_metrics", "forward_transfer_metrics"]

Rows = dict[int, dict[int, float]]  # row -> experience id -> accuracy


class _MatrixMetric(ProgressMetric):
    """Keeps ``R`` per stream; subclasses turn the current row into per-experience values."""

    EXP_NAME: ClassVar[str]
    STREAM_NAME: ClassVar[str]

    def __init__(self, experience: bool = False, stream: bool = False) -> None:
        super().__init__()
        self.experience, self.stream = experience, stream
        hooks = PROGRESS_HOOKS | {"before_eval", "before_eval_exp", "after_eval_iteration",
                                  "after_eval_exp"}
        if stream:
            hooks = hooks | {"after_eval"}
        self._hooks = frozenset(hooks)
        self._rows: dict[str, Rows] = {}
        self._queue = OutputQueue()
        self._stream_values: list[float] = []

    def _values(self, rows: Rows, k: int, j: int) -> tuple[float | None, float | None]:
        """(value emitted for experience ``j``, value averaged into the stream) at row ``k``."""
        raise NotImplementedError

    # ---- callbacks --------------------------------------------------------------------------
    def before_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._stream_values = []
        return None

    def before_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._queue.clear()
        return None

    def after_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        self._queue.add(strategy.mb_output, strategy.mb_y, sample_task_labels(strategy))
        return None

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        totals = self._queue.reduce()  # the one sync; accuracy over all the samples
        count = sum(w for _, w in totals.values())
        if count == 0:
            return None
        accuracy = sum(c for c, _ in totals.values()) / count
        k = self._progress.row(strategy)
        j = int(strategy.experience.current_experience)
        rows = self._rows.setdefault(stream_name(strategy), {})
        rows.setdefault(k, {})[j] = accuracy
        exp_value, stream_value = self._values(rows, k, j)
        if stream_value is not None:
            self._stream_values.append(stream_value)
        if self.experience and exp_value is not None:
            name = metric_name(self.EXP_NAME, strategy, strategy.experience.task_label, j)
            return {name: exp_value}
        return None

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> MetricResult:
        values = self._stream_values
        mean = sum(values) / len(values) if values else 0.0
        return {metric_name(self.STREAM_NAME, strategy): mean + 0.0}  # + 0.0: no -0.0

    # ---- state ------------------------------------------------------------------------------
    def reset(self) -> None:
        self._rows = {}
        self._progress.in_exp, self._progress.start_iter = False, 0

    def state_dict(self) -> dict[str, Any]:
        return {"progress": self._progress.state_dict(),
                "rows": {s: {k: dict(r) for k, r in rows.items()}
                         for s, rows in self._rows.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._progress.load_state_dict(state["progress"])
        self._rows = {str(s): {int(k): {int(j): float(a) for j, a in r.items()}
                               for k, r in rows.items()}
                      for s, rows in state["rows"].items()}

    def accuracy_matrix(self, stream: str = "test_stream") -> dict[int, dict[int, float]]:
        """The stored ``R`` of ``stream``: row -> experience id -> accuracy (a copy)."""
        return {k: dict(r) for k, r in self._rows.get(stream, {}).items()}


class ForgettingMetric(_MatrixMetric):
    """Forgetting of each experience already trained on (the current one excluded).

    ``reference="initial"`` (default, Avalanche's): ``R[j][j] - R[k][j]``, the accuracy right
    after training on ``j`` minus the current one; emitted only when ``R[j][j]`` was measured.
    ``reference="best"`` (Chaudhry et al. 2018): ``max_{j <= l < k} R[l][j] - R[k][j]``, the
    best accuracy after ``j`` was learned (as ``raycl.evaluation.functional.forgetting``).
    """

    EXP_NAME: ClassVar[str] = "ExperienceForgetting"
    STREAM_NAME: ClassVar[str] = "StreamForgetting"

    def __init__(self, experience: bool = False, stream: bool = False,
                 reference: str = "initial") -> None:
        check_choice("reference", reference, ("initial", "best"))
        super().__init__(experience, stream)
        self.reference = reference

    def _values(self, rows: Rows, k: int, j: int) -> tuple[float | None, float | None]:
        if j >= k:
            return None, None
        if self.reference == "initial":
            ref = rows.get(j, {}).get(j)
        else:
            seen = [rows[r][j] for r in rows if j <= r < k and j in rows[r]]
            ref = max(seen) if seen else None
        if ref is None:
            return None, None
        value = ref - rows[k][j]
        return value, value


class BWTMetric(_MatrixMetric):
    """Backward transfer of each experience already trained on: ``R[k][j] - R[j][j]``
    (Lopez-Paz & Ranzato 2017; minus Avalanche's forgetting)."""

    EXP_NAME: ClassVar[str] = "ExperienceBWT"
    STREAM_NAME: ClassVar[str] = "StreamBWT"

    def _values(self, rows: Rows, k: int, j: int) -> tuple[float | None, float | None]:
        if j >= k or j not in rows.get(j, {}):
            return None, None
        value = rows[k][j] - rows[j][j]
        return value, value


class ForwardTransferMetric(_MatrixMetric):
    """Forward transfer to experience ``j >= 1``: ``R[j-1][j] - b_j`` (Lopez-Paz & Ranzato
    2017).

    ``b_j`` is the accuracy on ``j`` of the untrained model: an evaluation run before any
    training (``clock.train_exp_counter == 0``), e.g. ``strategy.eval(test_stream)`` before the
    first ``train``. Without one, ``b_j`` falls back to the first accuracy ever measured on
    ``j``, which is Avalanche's rule (its first evaluation is the baseline) and makes the
    forward transfer to experience 1 zero; a warning says so once.

    The experience value is emitted by the evaluation right after training on ``j - 1``; the
    stream value averages every evaluated ``j`` whose ``R[j-1][j]`` exists, as Avalanche does.
    """

    EXP_NAME: ClassVar[str] = "ExperienceForwardTransfer"
    STREAM_NAME: ClassVar[str] = "StreamForwardTransfer"

    def __init__(self, experience: bool = False, stream: bool = False) -> None:
        super().__init__(experience, stream)
        self._warned = False

    def _baseline(self, rows: Rows, j: int) -> float | None:
        if j in rows.get(-1, {}):
            return rows[-1][j]
        measured = [r for r in rows if j in rows[r]]
        if not measured:
            return None
        if not self._warned:
            self._warned = True
            warnings.warn("forward transfer: no evaluation of the untrained model; the first "
                          "accuracy measured on each experience is used as its baseline "
                          "(call strategy.eval(stream) before training)", stacklevel=2)
        return rows[min(measured)][j]

    def _values(self, rows: Rows, k: int, j: int) -> tuple[float | None, float | None]:
        if j < 1 or j not in rows.get(j - 1, {}):
            return None, None
        base = self._baseline(rows, j)
        if base is None:
            return None, None
        value = rows[j - 1][j] - base
        return (value if k == j - 1 else None), value

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "warned": self._warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._warned = bool(state.get("warned", False))


def forgetting_metrics(*, experience: bool = False, stream: bool = False,
                       reference: str = "initial") -> list[PluginMetric]:
    """Forgetting per experience and/or averaged over the stream (Avalanche's
    ``forgetting_metrics``; ``reference="best"`` gives Chaudhry et al.'s definition)."""
    if not (experience or stream):
        return []
    return [ForgettingMetric(experience, stream, reference)]


def bwt_metrics(*, experience: bool = False, stream: bool = False) -> list[PluginMetric]:
    """Backward transfer per experience and/or averaged over the stream."""
    return [BWTMetric(experience, stream)] if (experience or stream) else []


def forward_transfer_metrics(*, experience: bool = False,
                             stream: bool = False) -> list[PluginMetric]:
    """Forward transfer per experience and/or averaged over the stream."""
    return [ForwardTransferMetric(experience, stream)] if (experience or stream) else []
