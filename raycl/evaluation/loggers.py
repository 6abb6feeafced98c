"""Loggers: where the evaluator's metric values go.

A logger is a plugin (it may use strategy callbacks, which the ``EvaluationPlugin`` forwards
to it) that also receives every batch of emitted values through :meth:`BaseLogger.log_metrics`.
Only :class:`InteractiveLogger` runs per training iteration (to move its progress bar).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import torch

from raycl.checks import check_int, check_number
from raycl.plugins.base import StrategyPlugin

if TYPE_CHECKING:  # pragma: no cover
    from raycl.plugins.base import Strategy

__all__ = ["BaseLogger", "CSVLogger", "InteractiveLogger", "TensorboardLogger", "TextLogger"]


def _short_name(name: str) -> str:
    """``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001`` -> ``Top1_Acc_Exp/Task000``."""
    parts = name.split("/")
    keep = [p for p in parts[1:] if not (p.endswith("_phase") or p.endswith("_stream")
                                         or p.startswith("Exp"))]
    return "/".join([parts[0], *keep])


def _format(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return _format(value.item())
        return f"<tensor {'x'.join(str(d) for d in value.shape)}>"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class BaseLogger(StrategyPlugin):
    """Base of every logger: :meth:`log_metrics` receives the values emitted by one callback
    (``{metric name: value}``) and ``x``, the strategy's ``clock.train_iterations``."""

    def log_metrics(self, values: dict[str, Any], x: int) -> None:
        """Record ``values`` emitted at step ``x``."""

    def close(self) -> None:
        """Release files or other resources (the logger must not be used afterwards)."""


class InteractiveLogger(BaseLogger):
    """A progress bar per training experience and one line per evaluated experience.

    Args:
        file: where to write (``None``: ``sys.stderr`` at the time of writing).
        every: seconds between two redraws of the bar (the check is one clock read per
            iteration).
        width: characters of the bar.
    """

    def __init__(self, file: IO[str] | None = None, every: float = 0.2, width: int = 30) -> None:
        self._file = file
        self.every = check_number("every", every, low=0.0)  # seconds
        self.width = check_int("width", width, minimum=1)
        self._pending: dict[str, Any] = {}
        self._done = 0
        self._total = 0
        self._start = 0.0
        self._last_draw = 0.0
        self._bar_open = False

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stderr

    def _write(self, text: str) -> None:
        f = self.file
        f.write(text)
        f.flush()

    def _close_bar(self) -> None:
        if self._bar_open:
            self._write("\n")
            self._bar_open = False

    def _draw(self, now: float) -> None:
        self._last_draw = now
        total = max(self._total, self._done, 1)
        filled = int(self.width * self._done / total)
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else 0.0
        self._write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self._done}/{total} it "
                    f"{elapsed:6.1f}s {rate:8.1f} it/s")
        self._bar_open = True

    def _flush_pending(self, prefix: str) -> None:
        if self._pending:
            items = "  ".join(f"{_short_name(k)}={_format(v)}" for k, v in self._pending.items())
            self._write(f"{prefix}{items}\n")
        self._pending = {}

    def log_metrics(self, values: dict[str, Any], x: int) -> None:
        self._pending.update(values)

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        exp = strategy.experience
        self._close_bar()
        self._pending = {}
        self._write(f"-- training experience {exp.current_experience} (task {exp.task_label}, "
                    f"classes {list(exp.classes_in_this_experience)}) --\n")
        dataset = getattr(strategy, "adapted_dataset", None)
        if dataset is None:
            dataset = exp.dataset
        batches = math.ceil(len(dataset) / max(1, int(strategy.train_mb_size)))
        self._total = int(getattr(strategy, "train_epochs", 1)) * batches
        self._done = 0
        self._start = time.monotonic()
        self._draw(self._start)

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last_draw >= self.every:
            self._draw(now)

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self._draw(time.monotonic())
        self._close_bar()
        self._flush_pending("  ")

    def before_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        self._close_bar()
        self._flush_pending("  ")  # training values emitted before a periodic evaluation
        stream = getattr(strategy, "eval_stream_name", "")
        n = len(getattr(strategy, "current_eval_stream", []) or [])
        self._write(f"-- eval on {stream} ({n} experiences) --\n")

    def after_eval_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self._flush_pending(f"  exp {strategy.experience.current_experience:3d}  ")

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        self._flush_pending("  stream   ")


class TextLogger(BaseLogger):
    """Every emitted metric as ``name = value`` (full names, so the phase is in each line),
    with a header line per training experience and per evaluation.

    Args:
        file: where to write (``None``: ``sys.stdout`` at the time of writing).
    """

    def __init__(self, file: IO[str] | None = None) -> None:
        self._file = file

    @property
    def file(self) -> IO[str]:
        return self._file if self._file is not None else sys.stdout

    def _write(self, text: str) -> None:
        f = self.file
        f.write(text)
        f.flush()

    def log_metrics(self, values: dict[str, Any], x: int) -> None:
        lines = []
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                lines.append(f"\t{name} = \n{value}")
            else:
                lines.append(f"\t{name} = {_format(value)}")
        self._write("\n".join(lines) + "\n")

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        exp = strategy.experience
        self._write(f"-- >> Start of training experience {exp.current_experience} "
                    f"(task {exp.task_label}) << --\n")

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self._write(f"-- >> End of training experience "
                    f"{strategy.experience.current_experience} << --\n")

    def before_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        self._write(f"-- >> Start of eval phase ({getattr(strategy, 'eval_stream_name', '')}) "
                    f"<< --\n")

    def after_eval(self, strategy: Strategy, **kwargs: Any) -> None:
        self._write("-- >> End of eval phase << --\n")


class CSVLogger(BaseLogger):
    """Metric values as CSV rows in ``log_folder``, in long format (one row per value):
    ``training_results.csv`` gets training-phase metrics, ``eval_results.csv`` the others,
    both with the columns ``metric_name,x,value``.

    Files are created on the first value and flushed after every batch of values. Floats are
    written with full precision; tensors (e.g. a confusion matrix) as nested lists. The state
    is the byte length of each file, so a strategy resumed from a checkpoint truncates the
    rows written after it and continues the same files.
    """

    FILES = {"train": "training_results.csv", "eval": "eval_results.csv"}
    HEADER = ("metric_name", "x", "value")

    def __init__(self, log_folder: str | os.PathLike[str] = "csvlogs") -> None:
        self.log_folder = os.fspath(log_folder)
        self._handles: dict[str, IO[str]] = {}
        self._writers: dict[str, Any] = {}
        self._resume_at: dict[str, int] = {}

    def _writer(self, kind: str) -> Any:
        writer = self._writers.get(kind)
        if writer is not None:
            return writer
        os.makedirs(self.log_folder, exist_ok=True)
        path = os.path.join(self.log_folder, self.FILES[kind])
        offset = self._resume_at.pop(kind, -1)
        if offset >= 0 and os.path.exists(path):
            f = open(path, "r+", newline="", encoding="utf-8")
            f.truncate(offset)
            f.seek(offset)
        else:
            f = open(path, "w", newline="", encoding="utf-8")
            csv.writer(f).writerow(self.HEADER)
        self._handles[kind] = f
        writer = self._writers[kind] = csv.writer(f)
        return writer

    @staticmethod
    def _cell(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, float):
            return repr(value)
        return value

    def log_metrics(self, values: dict[str, Any], x: int) -> None:
        touched = set()
        for name, value in values.items():
            kind = "train" if "/train_phase/" in name else "eval"
            self._writer(kind).writerow((name, x, self._cell(value)))
            touched.add(kind)
        for kind in touched:
            self._handles[kind].flush()

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles, self._writers = {}, {}

    def __del__(self) -> None:  # files are flushed already; closing avoids ResourceWarnings
        for f in getattr(self, "_handles", {}).values():
            f.close()

    def state_dict(self) -> dict[str, Any]:
        sizes = dict(self._resume_at)
        for kind, f in self._handles.items():
            f.flush()
            sizes[kind] = f.tell()
        return {"sizes": {k: int(v) for k, v in sizes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self._resume_at = {str(k): int(v) for k, v in state.get("sizes", {}).items()}

    def __getstate__(self) -> dict[str, Any]:
        # Open files do not pickle: a copy reopens the files where this one stands.
        state = dict(self.__dict__)
        state.update(self.state_dict())
        state["_resume_at"] = state.pop("sizes")
        state["_handles"], state["_writers"] = {}, {}
        return state


class TensorboardLogger(BaseLogger):
    """Every scalar metric value as a TensorBoard scalar in event files under ``tb_log_dir``.

    What it logs: each value the :class:`EvaluationPlugin` emits that is a number (``int``,
    ``float``, ``bool``) or a one-element tensor, under its full metric name as the tag
    (``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp001``), with the evaluator's step ``x``
    (the strategy's ``clock.train_iterations``) as the global step. Values of other kinds
    (a confusion matrix, a list) are skipped. Files are flushed after every batch of values
    and closed by :meth:`close`. Open with ``tensorboard --logdir <tb_log_dir>``.

    Needs ``tensorboardX`` (the ``tensorboard`` extra: ``pip install raycl[tensorboard]``).

    Args:
        tb_log_dir: the folder of the event files (created if missing).
        filename_suffix: appended to the event file's name.
    """

    def __init__(self, tb_log_dir: str | os.PathLike[str] = "tb_data",
                 filename_suffix: str = "") -> None:
        if not isinstance(tb_log_dir, (str, os.PathLike)):
            raise TypeError(f"tb_log_dir must be a path, got {type(tb_log_dir).__name__}")
        self.tb_log_dir = os.fspath(tb_log_dir)
        if not self.tb_log_dir:
            raise ValueError("tb_log_dir must be a non-empty path")
        if not isinstance(filename_suffix, str):
            raise TypeError(f"filename_suffix must be a str, got "
                            f"{type(filename_suffix).__name__}")
        self.filename_suffix = filename_suffix
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("TensorboardLogger needs tensorboardX: "
                              "pip install 'raycl[tensorboard]'") from None
        self.writer: Any = SummaryWriter(self.tb_log_dir, filename_suffix=self.filename_suffix)

    @staticmethod
    def _scalar(value: Any) -> float | None:
        if isinstance(value, torch.Tensor):
            return float(value.item()) if value.numel() == 1 else None
        if isinstance(value, (bool, int, float)):
            return float(value)
        return None

    def log_metrics(self, values: dict[str, Any], x: int) -> None:
        if self.writer is None:
            raise RuntimeError("TensorboardLogger is closed")
        for name, value in values.items():
            scalar = self._scalar(value)
            if scalar is not None:
                self.writer.add_scalar(name, scalar, global_step=int(x))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
