"""A one-line progress display for a running study (Ray's own trial table is switched off).

On a terminal the line is redrawn in place as trials start, report and finish; in a log (not a
TTY) it is printed at most every ``log_every`` seconds, and once at the end. A trial that failed
for good gets one line of its own: how many attempts, the error's last line, and where its full
tracebacks are (the study folder's ``errors/``); a failed attempt that restarts from its checkpoint
only counts in the status line.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray import tune

from raycl.tune.callbacks import diverged, error_line
from raycl.tune.compat import trial_error_file, trial_spec
from raycl.tune.trainable import setup_failure

__all__ = ["ProgressCallback"]


class ProgressCallback(tune.Callback):
    """Shows ``elapsed | done/total, running, errored | best <metric> (arm)``.

    Args:
        total: trials this run will start.
        metric, mode: what "best" means.
        already_done: trials finished by earlier runs (``--resume``), counted as done.
        best: the best (value, arm) of those earlier runs.
        out: where to write (stdout by default).
        log_every: seconds between lines when ``out`` is not a terminal.
        error_files: trial_id -> where its full error text was written (filled by the
            Parquet callback, which Tune calls first).
    """

    def __init__(self, total: int, metric: str, mode: str, already_done: int = 0,
                 best: tuple[float, str] | None = None, out: TextIO | None = None,
                 log_every: float = 10.0, error_files: dict[str, str] | None = None) -> None:
        self.error_files = {} if error_files is None else error_files
        #: trial_id -> failed attempts that restarted from a checkpoint
        self.retries: dict[str, int] = {}
        self.total = total + already_done
        self.metric = metric
        self.mode = mode
        self.done = already_done
        self.errored = 0
        self.running = 0
        self.best = best
        self.out = out or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.log_every = log_every
        self.start = time.monotonic()
        self._last_print = 0.0
        self._width = 0

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment; a stream (a terminal, pytest's
        # capture) is not picklable and is not needed to restore anything.
        state = dict(self.__dict__)
        state["out"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.out = sys.stdout

    # ---- display ----------------------------------------------------------------------------
    def line(self) -> str:
        """The status line as it would be shown now."""
        elapsed = time.monotonic() - self.start
        best = "-" if self.best is None else f"{self.best[0]:.4f} ({self.best[1]})"
        retrying = len(self.retries)
        return (f"[{elapsed:6.1f}s] trials {self.done}/{self.total} done, "
                f"{self.running} running"
                + (f" ({retrying} after a failure)" if retrying else "")
                + f", {self.errored} errored | "
                f"best {self.metric} {best}")

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            text = self.line()
            pad = max(0, self._width - len(text))
            self.out.write("\r" + text + " " * pad)
            self._width = len(text)
            self.out.flush()
        elif force or now - self._last_print >= self.log_every:
            print(self.line(), file=self.out, flush=True)
            self._last_print = now

    def _message(self, text: str) -> None:
        if self.tty and self._width:
            self.out.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(text, file=self.out, flush=True)

    # ---- Tune events ------------------------------------------------------------------------
    def _count(self, trials: list[Any], ended: Any = None) -> None:
        # From the trials' states: a trial started on a reused process gets no start event.
        # ``ended`` may still say RUNNING while its end is being reported.
        self.running = sum(t.status == "RUNNING" and t is not ended for t in trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial started (or restarted)."""
        self._count(trials)
        self._show()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """Track the best value of the metric reported so far."""
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = (self.best is None or (value > self.best[0] if self.mode == "max"
                                            else value < self.best[0]))
            if better:
                self.best = (float(value), trial_spec(trial).arm)
        self._count(trials)
        self._show()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """One more trial done (or diverged, or failed to load the study: errored)."""
        self._count(trials, trial)
        self.retries.pop(trial.trial_id, None)
        reason = diverged(trial) or setup_failure(trial)
        if reason:
            self.errored += 1
            self._message(f"trial {_who(trial)} errored: {reason}")
            self._show(force=True)
            return
        self.done += 1
        self._show()

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        """A trial failed and will restart from its last checkpoint (counted, no line)."""
        self._count(trials, trial)
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self._show()

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial errored for good: one line saying which, after how many attempts, why,
        and where its tracebacks are."""
        self._count(trials, trial)
        self.errored += 1
        attempts = self.retries.pop(trial.trial_id, 0) + 1
        where = self.error_files.get(trial.trial_id) or trial_error_file(trial)
        self._message(f"trial {_who(trial)} errored"
                      + (f" after {attempts} attempts" if attempts > 1 else "")
                      + f": {error_line(trial)}" + (f" (traceback: {where})" if where else ""))
        self._show(force=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """A Tune run (one batch of the study) ended: refresh the line (see :meth:`close`)."""
        self.running = 0
        self._show()

    def close(self) -> None:
        """Final line, once the study's last batch ended (or was stopped)."""
        self.running = 0
        if self.tty:
            self._show()
            self.out.write("\n")
            self.out.flush()
        else:
            self._show(force=True)


def _who(trial: Any) -> str:
    """``<trial id> (<arm>, seed <seed>)``."""
    spec = trial_spec(trial)
    return f"{trial.trial_id} ({spec.arm}, seed {spec.seed})"
