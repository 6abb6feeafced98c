"""Everything raycl uses of Ray that is not Ray's public API, in one place.

raycl is pinned to no Ray release, so each use below is guarded (a Ray that renamed a thing loses
only what that thing was for, never the study) and :func:`missing_internals` lists the ones the
installed Ray lacks: ``tests/test_tune.py`` fails when that list is not empty, which is how a Ray
upgrade that renames one of them is noticed.

What is used, and why:

* Tune's per-trial bookkeeping (``Trial.run_metadata``: metric statistics, checkpoint records),
  trimmed when a trial ends so the driver's memory stays flat on long studies.
* ``Trial.error_file`` / ``Trial.get_error()``: the error text of a failed trial;
  ``Trial.checkpoint``: where its last checkpoint is (per-experience selection continues it).
* Logger names: Ray's checkpoint-storage logger (one INFO line per checkpoint in every trial) and
  the loggers that print "resume with Tuner.restore" advice, which does not apply to raycl.
* Environment switches read by Tune: its SIGINT handler (raycl handles signals itself), its
  default per-trial file loggers, and the old console output engine (so ``verbose=0`` is quiet).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from raycl.study.spec import TrialSpec

__all__ = ["TRIAL_CONFIG", "missing_internals", "quiet_checkpoint_logs", "quiet_ray_console",
           "set_run_environment", "signal_handling_off", "spec_of_config", "trial_error_file",
           "trial_checkpoint_path", "trial_error_text", "trial_folder", "trial_spec",
           "trim_finished_trial", "tune_config"]

#: Key of the Tune trial config that holds the trial's :class:`~raycl.study.spec.TrialSpec`.
TRIAL_CONFIG = "trial"

_CHECKPOINT_LOGGER = "ray.train._internal.storage"
_TRAINABLE_LOGGER = "ray.tune.trainable.trainable"
_ANALYSIS_LOGGER = "ray.tune.analysis.experiment_analysis"
_SIGINT_SWITCH = "TUNE_DISABLE_SIGINT_HANDLER"
_RUN_DEFAULTS = {
    # Ray's trial table is replaced by raycl's progress line (verbose=0 silences it only with
    # the classic output engine).
    "RAY_AIR_NEW_OUTPUT": "0",
    # No per-trial result.json / progress.csv / TensorBoard files: the Parquet tables hold every
    # report, and the loggers' per-trial writers cost the driver ~0.1 MB of RSS per trial
    # (bench/bench_load.py). Setting it to 0 in the environment brings them back.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def tune_config(spec: TrialSpec) -> dict[str, Any]:
    """``spec`` as Tune's trial config holds it: a plain dict (Tune's variant generator takes
    dataclasses in a grid apart into tuples)."""
    return dataclasses.asdict(spec)


def spec_of_config(config: Mapping[str, Any]) -> TrialSpec:
    """The :class:`TrialSpec` in a Tune trial config (see :func:`tune_config`)."""
    fields = dict(config[TRIAL_CONFIG])
    if fields.get("stream") is not None:  # a tuple may come back from Tune as a list
        fields["stream"] = tuple(fields["stream"])
    return TrialSpec(**fields)


def trial_spec(trial: Any) -> TrialSpec:
    """The :class:`TrialSpec` a Tune ``Trial`` runs."""
    return spec_of_config(trial.config)


def set_run_environment() -> None:
    """Tune's environment switches for a raycl run (values already set by the user win)."""
    for name, value in _RUN_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def signal_handling_off() -> Iterator[None]:
    """Tune installs no SIGINT handler of its own while this is entered."""
    saved = os.environ.get(_SIGINT_SWITCH)
    os.environ[_SIGINT_SWITCH] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_SIGINT_SWITCH, None)
        else:
            os.environ[_SIGINT_SWITCH] = saved


def quiet_checkpoint_logs() -> None:
    """Silence Ray's INFO lines for every checkpoint a trial process saves and for its
    restart from one (the driver says a trial restarted)."""
    for name in (_CHECKPOINT_LOGGER, _TRAINABLE_LOGGER):
        logging.getLogger(name).setLevel(logging.WARNING)


#: Driver-side Ray log records that raycl replaces by its own lines: (logger, message start).
_DROPPED = (
    # every failed attempt, with a full traceback: raycl prints one line per failed trial and
    # keeps the traceback in the study folder (``errors/``)
    ("ray.tune.execution.tune_controller", "Trial task failed for trial"),
    # the trials that did not finish: raycl's summary counts them
    ("ray.tune.tune", "Trials did not complete"),
    # advice to resume with Tuner.restore: a raycl study resumes with --resume
    ("ray.tune.tune", None),
    # a local Ray that turned token authentication on, as it should: nothing to do
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled"),
)
#: Ray's failure to copy its experiment state to storage, logged with a traceback every time
#: (by these loggers): raycl says it once, in one line (its own tables are written apart).
_SYNC_LOGGERS = ("ray.train._internal.syncer", "ray.tune.execution.experiment_state")


class _Drop(logging.Filter):
    def __init__(self, start: str | None) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.start is None:  # the restore hint, whatever its wording
            return "Tuner.restore" not in message
        return not message.startswith(self.start)


class _OnceInOneLine(logging.Filter):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and not self.said:
            self.said = True
            cause = record.exc_info[1] if record.exc_info else None
            text = " ".join(str(cause or record.getMessage()).split())
            print(f"raycl: warning: {self.what}: {text[:300]}", file=sys.stderr, flush=True)
        return False


@contextmanager
def quiet_ray_console() -> Iterator[None]:
    """While entered, Ray's driver-side log records that raycl replaces by its own lines are
    dropped (see ``_DROPPED``): per-attempt trial tracebacks, Tune's "resume with
    Tuner.restore(...)" advice and its list of unfinished trials, the token-authentication
    notice, warnings about trials that never started having no metrics (after an
    interruption), and repeated tracebacks of Ray's experiment-state uploads (said once)."""
    filters = [(logging.getLogger(name), _Drop(start)) for name, start in _DROPPED]
    once = _OnceInOneLine("Ray cannot save its experiment state to the storage")
    filters += [(logging.getLogger(name), once) for name in _SYNC_LOGGERS]
    analysis_logger = logging.getLogger(_ANALYSIS_LOGGER)
    level = analysis_logger.level
    for logger, f in filters:
        logger.addFilter(f)
    analysis_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
        analysis_logger.setLevel(level)


def trial_error_text(trial: Any) -> str | None:
    """The error text Tune recorded for a failed trial, or None when it cannot be read.

    The driver writes the local copy as the failure is handled; the copy in storage
    (``get_error``) is synced later."""
    try:
        local = getattr(trial, "error_file", None)
        if local and os.path.exists(local):
            with open(local) as f:
                return f.read()
        return trial.get_error()
    except Exception:  # unreadable (remote storage, deleted folder)
        return None


def trial_error_file(trial: Any) -> str | None:
    """Where Tune keeps the failed trial's full error, if it says."""
    return getattr(trial, "error_file", None) or None


def trial_folder(trial: Any) -> str | None:
    """The trial's folder in the study's storage file system (its ``checkpoint_*`` folders
    are there), or None when Tune does not say."""
    try:
        return trial.path or None
    except Exception:  # no storage context (a stub trial)
        return None


def trial_checkpoint_path(trial: Any) -> str | None:
    """The path (in the study's storage file system) of the trial's latest checkpoint."""
    try:
        checkpoint = trial.checkpoint
    except Exception:  # a Trial of another Ray, or no storage context
        return None
    return getattr(checkpoint, "path", None)


def trim_finished_trial(trial: Any) -> None:
    """Free what Tune keeps of a finished trial only to update it or to pick "best" results
    from (ResultGrid), which a raycl run never reads: the per-metric statistics and last-5/10
    windows (~14 KB per trial of this project's ~24 metrics) and the metrics of every checkpoint
    but the latest (~6 KB per experience). Measured on Ray 2.60 with ``bench/bench_load.py``;
    Tune holds every Trial object to the end of its run, so without this the driver grows by
    that much per finished trial. The checkpoint files themselves stay (the records are
    bookkeeping only). A trial that ended is never updated again (a raycl run never uses
    ``Tuner.restore``); Tune versions without these attributes are left alone."""
    meta = getattr(trial, "run_metadata", None)
    if meta is None:
        return
    if isinstance(getattr(meta, "metric_n_steps", None), dict):
        meta.metric_n_steps = {}  # setting an attribute also drops Tune's cached JSON of meta
    if isinstance(getattr(meta, "metric_analysis", None), dict):
        meta.metric_analysis = {}
    manager = getattr(meta, "checkpoint_manager", None)
    latest = getattr(manager, "_latest_checkpoint_result", None)
    if latest is not None and isinstance(getattr(manager, "_checkpoint_results", None), list):
        manager._checkpoint_results = [latest]


def missing_internals() -> list[str]:
    """The internals above that the installed Ray does not have (empty when all are there)."""
    import importlib.util

    from ray.tune.experiment import Trial

    trial = Trial("__raycl_probe", config={TRIAL_CONFIG: None}, stub=True)
    # error_file is a property that needs a started trial: looked up on the class
    missing = [f"Trial.{name}" for name in ("error_file", "get_error", "checkpoint", "path")
               if not hasattr(Trial, name)]
    meta = getattr(trial, "run_metadata", None)
    if meta is None:
        missing.append("Trial.run_metadata")
    missing += [f"Trial.run_metadata.{name}"
                for name in ("metric_n_steps", "metric_analysis", "checkpoint_manager")
                if not hasattr(meta, name)]
    manager = getattr(meta, "checkpoint_manager", None)
    missing += [f"Trial.run_metadata.checkpoint_manager.{name}"
                for name in ("_latest_checkpoint_result", "_checkpoint_results")
                if not hasattr(manager, name)]
    missing += [f"logger {name} (no such module)"
                for name in (_CHECKPOINT_LOGGER, _TRAINABLE_LOGGER, _ANALYSIS_LOGGER,
                             *_SYNC_LOGGERS, *(logger for logger, _ in _DROPPED))
                if importlib.util.find_spec(name) is None]
    return missing
