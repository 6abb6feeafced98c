"""``EvaluationPlugin``: runs the metrics on the strategy's callbacks, records what they emit and
hands it to the loggers.

The strategy dispatches to the evaluator only the callbacks in :meth:`active_hooks`, the union
of what its metrics and loggers use, and the evaluator forwards each callback only to the
metrics and loggers that use it: a metric that needs nothing per iteration costs nothing per
iteration.

The evaluator also keeps, per evaluated stream, the matrices ``R[i][j]`` of the per-experience
accuracy and loss (:meth:`EvaluationPlugin.accuracy_matrix`,
:meth:`EvaluationPlugin.loss_matrix`), built from the structured results the per-experience
metrics hand over (:class:`~raycl.evaluation.metric_base.ExperienceResult`), never from metric
names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from raycl.evaluation.loggers import BaseLogger
from raycl.evaluation.metric_base import PROGRESS_HOOKS, PluginMetric, TrainingProgress
from raycl.evaluation.metrics import AccuracyMetric, LossMetric, accuracy_metrics, loss_metrics
from raycl.evaluation.transfer import forgetting_metrics
from raycl.plugins.base import HOOKS, StrategyPlugin

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from raycl.plugins.base import Strategy

__all__ = ["EvaluationPlugin", "default_evaluator"]

#: stream -> row -> experience id -> task label -> value
_Rows = dict[str, dict[int, dict[int, dict[int, float]]]]

#: The matrices the evaluator keeps: kind -> (metric class whose per-experience values fill it,
#: factory call named in the error when it is missing).
_MATRICES: dict[str, tuple[type[AccuracyMetric | LossMetric], str]] = {
    "accuracy": (AccuracyMetric, "accuracy_metrics(experience=True)"),
    "loss": (LossMetric, "loss_metrics(experience=True)"),
}


def _flatten(metrics: Iterable[Any]) -> list[PluginMetric]:
    out: list[PluginMetric] = []
    for m in metrics:
        if isinstance(m, PluginMetric):
            out.append(m)
        elif isinstance(m, (list, tuple)):
            out.extend(_flatten(m))
        else:
            raise TypeError(f"metrics must be PluginMetric objects or lists of them, got "
                            f"{type(m).__name__}")
    return out


class EvaluationPlugin(StrategyPlugin):
    """Collects metric values and logs them.

    Args:
        *metrics: metric objects and lists of them (what the ``*_metrics`` factories return).
        loggers: a logger or a list of loggers (``None``: none; nothing is printed).
        collect_all: keep every emitted value with its step for :meth:`get_all_metrics`.

    Every emitted value is logged with ``x = strategy.clock.train_iterations``.
    """

    def __init__(self, *metrics: PluginMetric | Sequence[PluginMetric],
                 loggers: BaseLogger | Sequence[BaseLogger] | None = None,
                 collect_all: bool = True) -> None:
        self.metrics = _flatten(metrics)
        if loggers is None:
            loggers = []
        elif isinstance(loggers, BaseLogger):
            loggers = [loggers]
        self.loggers: list[BaseLogger] = list(loggers)
        for lg in self.loggers:
            if not isinstance(lg, BaseLogger):
                raise TypeError(f"loggers must be BaseLogger objects, got {type(lg).__name__}")
        self.collect_all = bool(collect_all)
        self._last: dict[str, Any] = {}
        self._all: dict[str, tuple[list[int], list[Any]]] = {}
        self._progress = TrainingProgress()
        # The per-experience metrics that fill each matrix, and the matrices' entries.
        self._matrix_sources: tuple[tuple[str, AccuracyMetric | LossMetric], ...] = tuple(
            (kind, m) for m in self.metrics for kind, (cls, _) in _MATRICES.items()
            if isinstance(m, cls) and m.experience)
        self._rows: dict[str, _Rows] = {kind: {} for kind in _MATRICES}
        self._metric_calls: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._logger_calls: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._active: frozenset[str] = frozenset()
        self._bind()

    def _bind(self) -> None:
        """Per callback, the bound methods of the metrics and loggers that use it."""
        metric_hooks = [(m, m.active_hooks()) for m in self.metrics]
        logger_hooks = [(lg, lg.active_hooks()) for lg in self.loggers]
        own = {h: getattr(self._progress, h) for h in PROGRESS_HOOKS}
        # After every metric has handled an evaluated experience, collect the matrix entries.
        collect = {"after_eval_exp": self._collect_experience} if self._matrix_sources else {}
        self._metric_calls = {
            h: tuple(([own[h]] if h in own else [])
                     + [getattr(m, h) for m, hooks in metric_hooks if h in hooks]
                     + ([collect[h]] if h in collect else []))
            for h in HOOKS}
        self._logger_calls = {h: tuple(getattr(lg, h) for lg, hooks in logger_hooks if h in hooks)
                              for h in HOOKS}
        self._active = frozenset(h for h in HOOKS
                                 if self._logger_calls[h]
                                 or any(h in hooks for _, hooks in metric_hooks)
                                 or h in own)

    # ---- what the strategy uses -----------------------------------------------------------
    def active_hooks(self) -> frozenset[str]:
        """The callbacks some metric or logger uses (plus the few per-experience ones the
        evaluator needs to place evaluations in the accuracy matrix)."""
        return self._active

    def _run(self, hook: str, strategy: Strategy) -> None:
        emitted: dict[str, Any] | None = None
        for call in self._metric_calls[hook]:
            out = call(strategy)
            if out:
                if emitted is None:
                    emitted = {}
                emitted.update(out)
        if emitted:
            self._record(emitted, strategy)
        for call in self._logger_calls[hook]:
            call(strategy)

    def _record(self, values: dict[str, Any], strategy: Strategy) -> None:
        x = int(strategy.clock.train_iterations)
        self._last.update(values)
        if self.collect_all:
            for name, value in values.items():
                xs, vs = self._all.setdefault(name, ([], []))
                xs.append(x)
                vs.append(value)
        for lg in self.loggers:
            lg.log_metrics(values, x)

    def _collect_experience(self, strategy: Strategy, **kwargs: Any) -> None:
        """File what the per-experience metrics emitted for the experience just evaluated at
        the row of the model's training progress (a later metric overwrites an earlier one)."""
        if strategy.is_training:
            return
        row = self._progress.row(strategy)
        for kind, metric in self._matrix_sources:
            result = metric.last_experience
            if result is None:
                continue
            (self._rows[kind].setdefault(result.stream, {}).setdefault(row, {})
             .setdefault(result.experience, {})).update(result.values)

    # ---- results --------------------------------------------------------------------------
    def get_last_metrics(self) -> dict[str, Any]:
        """A copy of ``{metric name: last value}``."""
        return dict(self._last)

    def get_all_metrics(self) -> dict[str, tuple[list[int], list[Any]]]:
        """``{metric name: (x steps, values)}`` of everything emitted (empty without
        ``collect_all``); a copy."""
        return {name: (list(xs), list(vs)) for name, (xs, vs) in self._all.items()}

    def reset_last_metrics(self) -> None:
        """Forget the last values (the full history is kept)."""
        self._last = {}

    def accuracy_matrix(self, stream: str = "test_stream") -> list[list[float]]:
        """``R[i][j]``: ``Top1_Acc_Exp`` on experience ``j`` of ``stream`` after training on
        experience ``i`` (the last evaluation of each row wins; ``NaN`` where never measured).

        Rows run from the first to the last trained experience evaluated; evaluations of the
        untrained model are in :meth:`initial_accuracies`. An experience holding several task
        labels gets the unweighted mean of its per-task accuracies. Needs
        ``accuracy_metrics(experience=True)``.
        """
        return self._matrix("accuracy", stream)

    def loss_matrix(self, stream: str = "test_stream") -> list[list[float]]:
        """``L[i][j]``: ``Loss_Exp`` on experience ``j`` of ``stream`` after training on
        experience ``i``; the same rows, columns, ``NaN`` entries and task-label mean as
        :meth:`accuracy_matrix`. Needs ``loss_metrics(experience=True)``.
        """
        return self._matrix("loss", stream)

    def initial_accuracies(self, stream: str = "test_stream") -> list[float]:
        """Accuracy of the untrained model on each experience of ``stream`` (the ``b`` of
        forward transfer; ``NaN`` where no evaluation ran before training)."""
        rows = self._matrix_rows("accuracy", stream)
        if not rows:
            return []
        n_cols = 1 + max(j for r in rows.values() for j in r)
        return [_mean_or_nan(rows.get(-1, {}).get(j)) for j in range(n_cols)]

    def _matrix(self, kind: str, stream: str) -> list[list[float]]:
        rows = self._matrix_rows(kind, stream)
        trained = [r for r in rows if r >= 0]
        if not trained:
            return []
        n_cols = 1 + max(j for r in rows.values() for j in r)
        return [[_mean_or_nan(rows.get(i, {}).get(j)) for j in range(n_cols)]
                for i in range(max(trained) + 1)]

    def _matrix_rows(self, kind: str, stream: str) -> dict[int, dict[int, dict[int, float]]]:
        if not any(k == kind for k, _ in self._matrix_sources):
            raise ValueError(f"{kind}_matrix needs {_MATRICES[kind][1]} in the evaluator")
        return self._rows[kind].get(stream, {})

    # ---- state ----------------------------------------------------------------------------
    def _keys(self, items: Sequence[Any]) -> list[str]:
        return [f"{i}:{type(item).__name__}" for i, item in enumerate(items)]

    def state_dict(self) -> dict[str, Any]:
        """Collected values and every metric's and logger's state (tensors and plain
        containers, ``torch.load(weights_only=True)`` loadable)."""
        return {
            "last": dict(self._last),
            "all": {name: [list(xs), list(vs)] for name, (xs, vs) in self._all.items()},
            "progress": self._progress.state_dict(),
            "acc_rows": _copy_rows(self._rows["accuracy"]),
            "loss_rows": _copy_rows(self._rows["loss"]),
            "metrics": dict(zip(self._keys(self.metrics),
                                [m.state_dict() for m in self.metrics])),
            "loggers": dict(zip(self._keys(self.loggers),
                                [lg.state_dict() for lg in self.loggers])),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into an evaluator built with the same metrics and
        loggers, in the same order."""
        for what, items in (("metrics", self.metrics), ("loggers", self.loggers)):
            keys = self._keys(items)
            if list(state[what]) != keys:
                raise ValueError(f"state has {what} {list(state[what])} but this evaluator has "
                                 f"{keys}")
        self._last = dict(state["last"])
        self._all = {name: (list(xs), list(vs)) for name, (xs, vs) in state["all"].items()}
        self._progress.load_state_dict(state["progress"])
        self._rows = {"accuracy": _load_rows(state["acc_rows"]),
                      "loss": _load_rows(state.get("loss_rows", {}))}  # absent before loss_matrix
        for key, m in zip(self._keys(self.metrics), self.metrics):
            m.load_state_dict(state["metrics"][key])
        for key, lg in zip(self._keys(self.loggers), self.loggers):
            lg.load_state_dict(state["loggers"][key])


def _copy_rows(rows: _Rows) -> _Rows:
    return {s: {r: {j: dict(t) for j, t in row.items()} for r, row in by_row.items()}
            for s, by_row in rows.items()}


def _load_rows(rows: dict[Any, Any]) -> _Rows:
    return {str(s): {int(r): {int(j): {int(t): float(v) for t, v in tasks.items()}
                              for j, tasks in row.items()}
                     for r, row in by_row.items()}
            for s, by_row in rows.items()}


def _mean_or_nan(tasks: dict[int, float] | None) -> float:
    if not tasks:
        return math.nan
    return sum(tasks.values()) / len(tasks)


def _forwarder(hook: str) -> Callable[..., None]:
    def forward(self: EvaluationPlugin, strategy: Strategy, **kwargs: Any) -> None:
        self._run(hook, strategy)

    forward.__name__ = forward.__qualname__ = hook
    forward.__doc__ = f"Forward ``{hook}`` to the metrics and loggers that use it."
    return forward


# Every callback forwards the same way; defined in a loop rather than 26 identical methods.
for _hook in HOOKS:
    setattr(EvaluationPlugin, _hook, _forwarder(_hook))
del _hook


def default_evaluator(loggers: BaseLogger | Sequence[BaseLogger] | None = None
                      ) -> EvaluationPlugin:
    """The evaluator a strategy gets when given none: accuracy per epoch, experience and
    stream, loss per experience and stream, forgetting per experience and stream. Only the
    epoch accuracy runs per training iteration (tensor ops, no sync). No loggers unless given.
    """
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=True),
        loss_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        loggers=loggers,
    )
