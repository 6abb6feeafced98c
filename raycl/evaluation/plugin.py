"""``EvaluationPlugin``: runs the metrics on the strategy's callbacks, records what they emit and
hands it to the loggers.

The strategy dispatches to the evaluator only the callbacks in :meth:`active_hooks`, the union
of what its metrics and loggers use, and the evaluator forwards each callback only to the
metrics and loggers that use it: a metric that needs nothing per iteration costs nothing per
iteration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from raycl.evaluation.loggers import BaseLogger
from raycl.evaluation.metric_base import PROGRESS_HOOKS, PluginMetric, TrainingProgress
from raycl.evaluation.metrics import AccuracyMetric, accuracy_metrics, loss_metrics
from raycl.evaluation.transfer import forgetting_metrics
from raycl.plugins.base import HOOKS, StrategyPlugin

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from raycl.training.strategy import BaseStrategy

__all__ = ["EvaluationPlugin", "default_evaluator"]

_EXP_ACC = re.compile(r"^Top1_Acc_Exp/eval_phase/(?P<stream>[^/]+)/Task(?P<task>\d+)"
                      r"/Exp(?P<exp>\d+)$")


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
        # stream -> row -> experience -> task -> Top1_Acc_Exp, for accuracy_matrix()
        self._acc_rows: dict[str, dict[int, dict[int, dict[int, float]]]] = {}
        self._metric_calls: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._logger_calls: dict[str, tuple[Callable[..., Any], ...]] = {}
        self._active: frozenset[str] = frozenset()
        self._bind()

    def _bind(self) -> None:
        """Per callback, the bound methods of the metrics and loggers that use it."""
        metric_hooks = [(m, m.active_hooks()) for m in self.metrics]
        logger_hooks = [(lg, lg.active_hooks()) for lg in self.loggers]
        own = {h: getattr(self._progress, h) for h in PROGRESS_HOOKS}
        self._metric_calls = {
            h: tuple(([own[h]] if h in own else [])
                     + [getattr(m, h) for m, hooks in metric_hooks if h in hooks])
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

    def _run(self, hook: str, strategy: BaseStrategy) -> None:
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

    def _record(self, values: dict[str, Any], strategy: BaseStrategy) -> None:
        x = int(strategy.clock.train_iterations)
        self._last.update(values)
        if self.collect_all:
            for name, value in values.items():
                xs, vs = self._all.setdefault(name, ([], []))
                xs.append(x)
                vs.append(value)
        if not strategy.is_training:
            for name, value in values.items():
                if name.startswith("Top1_Acc_Exp/"):
                    self._note_accuracy(name, value, strategy)
        for lg in self.loggers:
            lg.log_metrics(values, x)

    def _note_accuracy(self, name: str, value: Any, strategy: BaseStrategy) -> None:
        match = _EXP_ACC.match(name)
        if match is None:
            return
        row = self._progress.row(strategy)
        (self._acc_rows.setdefault(match["stream"], {}).setdefault(row, {})
         .setdefault(int(match["exp"]), {}))[int(match["task"])] = float(value)

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
        rows = self._matrix_rows(stream)
        trained = [r for r in rows if r >= 0]
        if not trained:
            return []
        n_cols = 1 + max(j for r in rows.values() for j in r)
        return [[_mean_or_nan(rows.get(i, {}).get(j)) for j in range(n_cols)]
                for i in range(max(trained) + 1)]

    def initial_accuracies(self, stream: str = "test_stream") -> list[float]:
        """Accuracy of the untrained model on each experience of ``stream`` (the ``b`` of
        forward transfer; ``NaN`` where no evaluation ran before training)."""
        rows = self._matrix_rows(stream)
        if not rows:
            return []
        n_cols = 1 + max(j for r in rows.values() for j in r)
        return [_mean_or_nan(rows.get(-1, {}).get(j)) for j in range(n_cols)]

    def _matrix_rows(self, stream: str) -> dict[int, dict[int, dict[int, float]]]:
        if not any(isinstance(m, AccuracyMetric) and m.experience for m in self.metrics):
            raise ValueError("accuracy_matrix needs accuracy_metrics(experience=True) in the "
                             "evaluator")
        return self._acc_rows.get(stream, {})

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
            "acc_rows": {s: {r: {j: dict(t) for j, t in row.items()} for r, row in rows.items()}
                         for s, rows in self._acc_rows.items()},
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
        self._acc_rows = {
            str(s): {int(r): {int(j): {int(t): float(v) for t, v in tasks.items()}
                              for j, tasks in row.items()}
                     for r, row in rows.items()}
            for s, rows in state["acc_rows"].items()}
        for key, m in zip(self._keys(self.metrics), self.metrics):
            m.load_state_dict(state["metrics"][key])
        for key, lg in zip(self._keys(self.loggers), self.loggers):
            lg.load_state_dict(state["loggers"][key])


def _mean_or_nan(tasks: dict[int, float] | None) -> float:
    if not tasks:
        return math.nan
    return sum(tasks.values()) / len(tasks)


def _forwarder(hook: str) -> Callable[..., None]:
    def forward(self: EvaluationPlugin, strategy: BaseStrategy, **kwargs: Any) -> None:
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
