"""The progress display of a running study (Ray's own trial table is switched off).

A status line (``elapsed | done/total, running, errored | best <metric> (arm) | ~time left``)
and one line per running trial (``<arm>  seed <s>  experience k/N  <metric> <latest>``). On a
terminal the block is redrawn in place as trials start, report and finish; in a log (not a TTY)
it is printed at most every ``log_every`` seconds, and once at the end. The time left is the
trials still to run times the mean wall time of the trials this run finished, divided by the
trials running at once (shown once one has finished). A trial that failed for good gets one
line of its own: how many attempts, the error's last line, and where its full tracebacks are
(the study folder's ``errors/``); a failed attempt that restarts from its checkpoint only
counts in the status line.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray import tune

from raycl.study.schema import EXPERIENCE
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
        n_experiences: experiences of a trial that trains on the whole stream (the ``N`` of
            ``experience k/N``).
        accuracy: the report column shown per running trial (its latest value).
    """

    def __init__(self, total: int, metric: str, mode: str, already_done: int = 0,
                 best: tuple[float, str] | None = None, out: TextIO | None = None,
                 log_every: float = 10.0, error_files: dict[str, str] | None = None,
                 n_experiences: int | None = None,
                 accuracy: str = "valid_avg_accuracy") -> None:
        self.accuracy = accuracy
        self.error_files = {} if error_files is None else error_files
        self.n_experiences = n_experiences
        #: trial_id -> (arm, seed, experiences done, of how many, latest metric value)
        self.current: dict[str, tuple[str, int, int, int | None, float | None]] = {}
        #: trial_id -> when it first started in this run; wall times of the finished ones
        self._began: dict[str, float] = {}
        self._durations: list[float] = []
        self._lines = 0  # lines of the block drawn last on a terminal
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
        left = self.time_left()
        return (f"[{elapsed:6.1f}s] trials {self.done}/{self.total} done, "
                f"{self.running} running"
                + (f" ({retrying} after a failure)" if retrying else "")
                + f", {self.errored} errored | "
                f"best {self.metric} {best}"
                + ("" if left is None else f" | ~{_duration(left)} left"))

    def time_left(self) -> float | None:
        """Seconds until the last trial ends, estimated from the trials this run finished
        (None before one has)."""
        if not self._durations:
            return None
        mean = sum(self._durations) / len(self._durations)
        to_start = max(0, self.total - self.done - self.errored - self.running)
        running_left = sum(max(0.0, mean - (time.monotonic() - self._began.get(t, 0.0)))
                           for t in self.current)
        slots = max(1, self.running, len(self.current))
        return (to_start * mean + running_left) / slots

    def trial_lines(self) -> list[str]:
        """One line per running trial: arm, seed, experiences done, latest metric value."""
        lines = []
        for arm, seed, k, n, value in sorted(self.current.values(), key=lambda v: v[:2]):
            shown = "-" if value is None else f"{value:.4f}"
            lines.append(f"  {arm:<14} seed {seed:<3} experience {k}/{n or '?'}  "
                         f"{self.accuracy} {shown}")
        return lines

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self._erase()
            block = [self.line(), *self.trial_lines()]
            self.out.write("\n".join(block))
            self._lines = len(block)
            self.out.flush()
        elif force or now - self._last_print >= self.log_every:
            print("\n".join([self.line(), *self.trial_lines()]), file=self.out, flush=True)
            self._last_print = now

    def _erase(self) -> None:
        """Terminal: clear the block drawn last (cursor back to its first line)."""
        if self._lines:
            self.out.write("\r\x1b[2K" + "\x1b[1A\x1b[2K" * (self._lines - 1))
            self._lines = 0

    def _message(self, text: str) -> None:
        if self.tty:
            self._erase()
        print(text, file=self.out, flush=True)

    # ---- Tune events ------------------------------------------------------------------------
    def _count(self, trials: list[Any], ended: Any = None) -> None:
        # From the trials' states: a trial started on a reused process gets no start event.
        # ``ended`` may still say RUNNING while its end is being reported.
        self.running = sum(t.status == "RUNNING" and t is not ended for t in trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial started (or restarted)."""
        self._count(trials)
        self._began.setdefault(trial.trial_id, time.monotonic())
        spec = trial_spec(trial)
        if trial.trial_id not in self.current:
            self.current[trial.trial_id] = (spec.arm, spec.seed, 0, self._length(spec), None)
        self._show()

    def _length(self, spec: Any) -> int | None:
        """How many experiences the trial of ``spec`` trains."""
        n = self.n_experiences
        if spec.stream is not None:
            n = spec.stream[1] - spec.stream[0]
        if spec.steps is not None:
            n = spec.steps if n is None else min(n, spec.steps)
        return n

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """Track the best value of the metric reported so far."""
        value = result.get(self.metric)
        spec = trial_spec(trial)
        if EXPERIENCE in result:
            _, _, k, n, shown = self.current.get(trial.trial_id,
                                                 (spec.arm, spec.seed, 0, None, None))
            k += 1
            latest = result.get(self.accuracy)
            if isinstance(latest, (int, float)) and math.isfinite(latest):
                shown = float(latest)
            self.current[trial.trial_id] = (spec.arm, spec.seed, k, n or self._length(spec),
                                            shown)
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
        self._ended(trial)
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
        attempts = self.retries.get(trial.trial_id, 0) + 1
        self._ended(trial)
        where = self.error_files.get(trial.trial_id) or trial_error_file(trial)
        self._message(f"trial {_who(trial)} errored"
                      + (f" after {attempts} attempts" if attempts > 1 else "")
                      + f": {error_line(trial)}" + (f" (traceback: {where})" if where else ""))
        self._show(force=True)

    def _ended(self, trial: Any) -> None:
        self.retries.pop(trial.trial_id, None)
        self.current.pop(trial.trial_id, None)
        began = self._began.pop(trial.trial_id, None)
        if began is not None:
            self._durations.append(time.monotonic() - began)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """A Tune run (one batch of the study) ended: refresh the line (see :meth:`close`)."""
        self.running = 0
        self._show()

    def close(self) -> None:
        """Final line, once the study's last batch ended (or was stopped)."""
        self.running = 0
        self.current.clear()  # trials a Ctrl-C stopped: no longer running
        if self.tty:
            self._show()
            self.out.write("\n")
            self.out.flush()
        else:
            self._show(force=True)


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _who(trial: Any) -> str:
    """``<trial id> (<arm>, seed <seed>)``."""
    spec = trial_spec(trial)
    return f"{trial.trial_id} ({spec.arm}, seed {spec.seed})"
