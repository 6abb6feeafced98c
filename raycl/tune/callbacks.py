"""Driver-side Tune callback that turns trial events into the study's Parquet tables."""

from __future__ import annotations

import sys
import time
from typing import Any

import pandas as pd
from ray import tune

from raycl.study.results import ResultStore
from raycl.study.schema import DIVERGED, ERRORED, EXPERIENCE, TERMINATED
from raycl.tune.compat import (
    trial_checkpoint_path,
    trial_error_text,
    trial_spec,
    trim_finished_trial,
)

__all__ = ["ParquetCallback", "diverged", "error_line"]


def diverged(trial: Any) -> str | None:
    """Why ``trial`` diverged (its last report says so), or None."""
    reason = (getattr(trial, "last_result", None) or {}).get(DIVERGED)
    return f"{DIVERGED}: {reason}" if reason else None


def error_line(trial: Any) -> str:
    """The last meaningful line of a trial's error (``Type: message``), at most 500 chars."""
    text = trial_error_text(trial)
    if not text:
        return "trial failed (no error message recorded)"
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    # Tracebacks end with "Type: message"; ActorDiedError puts its reason first.
    pick = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1])
    return pick[:500]


class ParquetCallback(tune.Callback):
    """Records every report and trial outcome in a :class:`ResultStore` and rewrites the files
    when a trial finishes (and when the experiment ends), so they are current and readable even
    if the driver is killed.

    A rewrite costs time in proportion to the rows so far. So that a long study does not spend
    its driver's time writing, the next rewrite waits ``write_factor`` times as long as the last
    one took (writes take at most about 1/(1 + write_factor) of the driver's time); a trial that
    finishes meanwhile is written by the next trial event or controller step once the wait is
    over. Small tables take milliseconds: in practice every trial is on disk as it ends.
    """

    def __init__(self, store: ResultStore, write_factor: float = 9.0) -> None:
        self.store = store
        #: trial_id -> when it first started, for every trial of this run.
        self.started: dict[str, pd.Timestamp] = {}
        #: trial_id -> its last report of an experience (a diverged trial's last report is not).
        self._last: dict[str, dict[str, Any]] = {}
        #: The last write's failure (None once a write succeeds again).
        self.write_error: str | None = None
        self.write_factor = write_factor
        self._dirty = False  # rows recorded since the last successful write
        self._next_write = 0.0  # time.monotonic() before which no rewrite starts

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """Note when the trial first started (a restart after a failure keeps the first time and
        its rows: it goes on from its checkpoint)."""
        if trial.trial_id not in self.started:
            self.started[trial.trial_id] = pd.Timestamp.now(tz="UTC")
            self.store.forget_reports(trial_spec(trial).trial_key)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """One experience done: its curves row and accuracy-matrix row."""
        if EXPERIENCE in result:
            self.store.add_report(trial_spec(trial), trial.trial_id, result)
            self._last[trial.trial_id] = result

    def _finish(self, trial: Any, status: str, error: str | None) -> None:
        last = self._last.pop(trial.trial_id, None)
        if last is None and EXPERIENCE in (trial.last_result or {}):
            last = trial.last_result
        self.store.set_trial(trial_spec(trial), trial.trial_id, status,
                             last or {}, error=error,
                             started_at=self.started.get(trial.trial_id),
                             finished_at=pd.Timestamp.now(tz="UTC"),
                             checkpoint=trial_checkpoint_path(trial))
        self._dirty = True
        self._write_when_due()
        trim_finished_trial(trial)

    def _write_when_due(self) -> None:
        if not self._dirty or time.monotonic() < self._next_write:
            return
        start = time.monotonic()
        self._write()
        end = time.monotonic()
        self._next_write = end + self.write_factor * (end - start)

    def _write(self) -> None:
        """Rewrite the files; a failure (disk full) is reported once and the study goes on:
        the files keep their last complete version, the rows stay in memory and the next
        write (the next trial's end, the end of the run) tries again."""
        try:
            self.store.write()
        except OSError as err:
            if self.write_error is None:
                print(f"raycl: warning: cannot write the results ({' '.join(str(err).split())})"
                      f"; the files keep their last complete version", file=sys.stderr)
            self.write_error = f"cannot write the results: {' '.join(str(err).split())}"
        else:
            self.write_error = None
        self._dirty = self.write_error is not None  # a failed write is tried again

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """A trial finished (or a scheduler stopped it): status TERMINATED; a trial that
        stopped because its loss diverged: status ERROR with the reason (it is not retried:
        it would diverge again)."""
        reason = diverged(trial)
        self._finish(trial, ERRORED if reason else TERMINATED, reason)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial failed more than ``max_failures`` times: status ERROR with the message."""
        self._finish(trial, ERRORED, error_line(trial))

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Write trials that finished while the last rewrite's wait was running."""
        self._write_when_due()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Write the files one last time (reports of trials still running when stopped)."""
        self._write()
