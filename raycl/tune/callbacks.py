"""Driver-side Tune callbacks: the study's Parquet tables (and the error file of each failed
trial), the stopper that ends a study early, and a watch over trials no node can place."""

from __future__ import annotations

import errno
import re
import sys
import time
from typing import Any

import pandas as pd
from ray import tune

from raycl.study.results import ResultStore, scrub, storage_retry_s, transient_storage_error
from raycl.study.schema import DIVERGED, ERRORED, EXPERIENCE, TERMINATED
from raycl.tune.compat import (
    trial_checkpoint_path,
    trial_error_text,
    trial_folder,
    trial_spec,
    trim_finished_trial,
)
from raycl.tune.trainable import STORAGE_FULL_ERRNOS, STORAGE_RETRIED, setup_failure

#: Terminal colour codes, which Ray puts in its error texts.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: Storage failures less than this many seconds apart are one outage, said once.
OUTAGE_QUIET_S = 300.0

__all__ = ["ParquetCallback", "PlacementWatch", "StudyStopper", "diverged", "error_line"]


class StudyStopper(tune.Stopper):
    """Stops every trial of the Tune run once :attr:`stopped` is set: by the first Ctrl-C or
    SIGTERM (``raycl.tune.runner``), or by :meth:`fail` when every trial would fail the same
    way (the study file does not import in a trial, the storage is full, no node can place a
    trial). One instance serves every batch of a study."""

    def __init__(self) -> None:
        # A plain flag, not a threading.Event: Tune pickles its stopper with the experiment,
        # and the signal handler and Tune's loop both run in the main thread.
        self.stopped = False
        #: Why the study was stopped by :meth:`fail` (the first reason is kept), or None.
        self.failure: str | None = None

    def fail(self, reason: str) -> None:
        """Stop the study because of ``reason``."""
        self.failure = self.failure or reason
        self.stopped = True

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopped


class PlacementWatch(tune.Callback):
    """On a cluster where no node can run a trial now (an autoscaler may add one), stops the
    study with one line saying what a trial asks for when no trial has started within
    ``timeout_s``."""

    def __init__(self, stopper: StudyStopper, asks: str, timeout_s: float) -> None:
        self.stopper = stopper
        self.asks = asks
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.started = False

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started = True

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self.started and time.monotonic() > self.deadline:
            self.stopper.fail(f"no node of the Ray cluster could run a trial for "
                              f"{self.timeout_s:g} s: it asks for {self.asks} (lower "
                              f"--cpus-per-trial / --gpus-per-trial, add such nodes, or wait "
                              f"longer with --pending-timeout)")


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

    def __init__(self, store: ResultStore, write_factor: float = 9.0,
                 stopper: StudyStopper | None = None, keep_checkpoints: int | None = None,
                 keep_final_checkpoint: bool = True) -> None:
        self.store = store
        #: Checkpoints kept per running trial (None: all); see :meth:`on_trial_result`.
        self.keep_checkpoints = keep_checkpoints
        #: Whether a finished trial keeps its last checkpoint (else all are deleted).
        self.keep_final_checkpoint = keep_final_checkpoint
        #: Stops the study when every trial would fail the same way (None: never).
        self.stopper = stopper
        #: trial_id -> where its full error text was written (the last failure's).
        self.error_files: dict[str, str] = {}
        #: trial_id -> the error text of each failed attempt so far.
        self._attempts: dict[str, list[str]] = {}
        #: trial_id -> when it first started, for every trial of this run.
        self.started: dict[str, pd.Timestamp] = {}
        #: trial_id -> its last report of an experience (a diverged trial's last report is not).
        self._last: dict[str, dict[str, Any]] = {}
        #: The last write's failure (None once a write succeeds again).
        self.write_error: str | None = None
        self.write_factor = write_factor
        self._dirty = False  # rows recorded since the last successful write
        self._trouble_at: float | None = None  # when the storage last failed to answer
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
        if result.get(STORAGE_RETRIED):  # the trial waited for the storage to answer
            self.storage_trouble(str(result[STORAGE_RETRIED]))
        if EXPERIENCE in result:
            self.store.add_report(trial_spec(trial), trial.trial_id, result)
            self._last[trial.trial_id] = result
            # raycl prunes, not Tune's CheckpointConfig(num_to_keep): a bound there makes Tune
            # snapshot its experiment state with every checkpoint, which costs time
            folder = trial_folder(trial)
            if self.keep_checkpoints and folder:
                self.store.prune_checkpoints(folder, self.keep_checkpoints)

    def _finish(self, trial: Any, status: str, error: str | None) -> None:
        last = self._last.pop(trial.trial_id, None)
        if last is None and EXPERIENCE in (trial.last_result or {}):
            last = trial.last_result
        checkpoint = trial_checkpoint_path(trial)
        folder = trial_folder(trial)
        if folder and not (self.keep_final_checkpoint and status == TERMINATED):
            # a finished trial is never restarted (a resumed study reruns unfinished ones from
            # their start), so its checkpoints are only disk; an errored trial's too
            self.store.prune_checkpoints(folder, 0)
            checkpoint = None
        elif folder:
            self.store.prune_checkpoints(folder, 1)
        self.store.set_trial(trial_spec(trial), trial.trial_id, status,
                             last or {}, error=error,
                             started_at=self.started.get(trial.trial_id),
                             finished_at=pd.Timestamp.now(tz="UTC"),
                             checkpoint=checkpoint)
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
        """Rewrite the files; a failure is reported once: the files keep their last complete
        version, the rows stay in memory and the next write (the next trial's end, the end of
        the run) tries again. A storage that is full, over quota or read-only also stops the
        study (with a stopper): every later trial would fail to save as well."""
        try:
            self.store.write()
        except OSError as err:
            text = scrub(" ".join(str(err).split()))
            if transient_storage_error(err, self.store.fs):
                self.storage_trouble(text)  # the next write tries again
            elif self.write_error is None:
                print(f"raycl: warning: cannot write the results ({text}); the files keep "
                      f"their last complete version", file=sys.stderr)
            self.write_error = f"cannot write the results: {text}"
            if self.stopper is not None and err.errno in STORAGE_FULL_ERRNOS:
                self.stopper.fail(f"cannot write the results to {self.store.uri}: "
                                  f"{errno.errorcode.get(err.errno, '')} {text}".strip())
        else:
            self.write_error = None
        self._dirty = self.write_error is not None  # a failed write is tried again

    def storage_trouble(self, text: str) -> None:
        """Say that the storage does not answer (``text``: why), once per outage: failures
        less than :data:`OUTAGE_QUIET_S` apart are one. Every write is retried meanwhile: the
        driver's tables at the next write (and for up to ``RAYCL_STORAGE_RETRY_S`` at the
        end of the run), each trial's checkpoint upload in the trial."""
        now = time.monotonic()
        said, self._trouble_at = self._trouble_at, now
        if said is not None and now - said < OUTAGE_QUIET_S:
            return
        print(f"raycl: warning: the storage {self.store.uri} does not answer "
              f"({scrub(text)[:400]}); writes are retried for up to {storage_retry_s():g} s, "
              f"the files keep their last complete version meanwhile",
              file=sys.stderr, flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """A trial finished (or a scheduler stopped it): status TERMINATED; a trial that
        stopped because its loss diverged: status ERROR with the reason (it is not retried:
        it would diverge again)."""
        failure = setup_failure(trial)
        if failure is not None:  # it would fail the same way again, and so would every trial
            self._finish(trial, ERRORED, failure)
            if self.stopper is not None:
                self.stopper.fail(failure)
            return
        reason = diverged(trial)
        self._finish(trial, ERRORED if reason else TERMINATED, reason)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any,
                         **info: Any) -> None:
        """A trial failed and restarts from its last checkpoint: keep the attempt's error."""
        self._attempts.setdefault(trial.trial_id, []).append(trial_error_text(trial) or "")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        """A trial failed more than ``max_failures`` times: status ERROR with the message, and
        every attempt's full error in the study folder (:meth:`ResultStore.error_file`)."""
        attempts = [*self._attempts.pop(trial.trial_id, []), trial_error_text(trial) or ""]
        text = "".join(f"==== attempt {i} of {len(attempts)} ====\n{_ANSI.sub('', a).rstrip()}"
                       f"\n\n" for i, a in enumerate(attempts, 1))
        try:
            where = self.store.write_error_file(trial_spec(trial).trial_key, text)
        except OSError:  # the storage cannot take it: Tune's own copy
            where = getattr(trial, "error_file", None) or ""
        if where:
            self.error_files[trial.trial_id] = where
        self._finish(trial, ERRORED, error_line(trial))

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        """Write trials that finished while the last rewrite's wait was running."""
        self._write_when_due()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Write the files one last time (reports of trials still running when stopped)."""
        self._write()
