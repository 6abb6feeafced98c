"""Running a study on Ray Tune: from a study file to Parquet results.

:func:`run_study` is what ``python -m raycl.study`` calls. It validates the study (no Ray yet),
decides the trials, refuses to mix a new run with old results (or to resume nothing), starts or
joins Ray, runs one Tuner over the trials with the Parquet and progress callbacks, prints the
per-arm table and shuts down the Ray it started.

``--resume`` does not use ``Tuner.restore``: the trials table is the record of what finished.
The trial list is rebuilt from the study file (it is deterministic), trials whose ``trial_key``
is TERMINATED in ``trials.parquet`` are skipped, and the rest run in a new Tune experiment under
the same study folder; their rows replace any partial rows of the interrupted run.

A long study runs as successive Tune runs ("batches") of at most ``trials_per_batch`` trials,
sharing one progress line, one results store, one ASHA scheduler and one Optuna searcher. Tune
keeps every Trial object of a run (config, last result, checkpoint records, placement-group
and storage objects: some 25 KB per finished trial once ``ParquetCallback`` has trimmed what it
can) until the run ends, and loops over all of them; the batches bound both, so a study of
thousands of trials runs with the driver's memory and speed of a short one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from ray import tune

from raycl.study.loader import load_study
from raycl.study.plan import apply_overrides, arm_budget, plan_trials, settings_of
from raycl.study.results import ResultStore
from raycl.study.spec import Study
from raycl.study.summary import header, summary_lines
from raycl.study.trial import reported_every_experience
from raycl.tune.callbacks import ParquetCallback
from raycl.tune.progress import ProgressCallback
from raycl.tune.trainable import trainable

__all__ = ["PreparedRun", "RunError", "StudyOutcome", "default_trials_per_batch",
           "prepare_run", "ray_init_kwargs", "resources_text", "run_study", "trial_slots"]


class RunError(Exception):
    """A run that must not start (one line): results already there, nothing to resume, ..."""


@dataclasses.dataclass
class PreparedRun:
    """A validated study, its trials and where its results go (nothing started yet)."""

    study: Study
    """The study with the command-line overrides applied."""
    path: str
    """The study file."""
    store: ResultStore
    """Its results tables (loaded when resuming)."""
    trials: list[dict[str, Any]] | None
    """Trials to run now (None for Optuna, which picks configs as it goes)."""
    skipped: int
    """Trials already finished by an earlier run (``--resume``)."""


@dataclasses.dataclass
class StudyOutcome:
    """What a run did."""

    study: Study
    """The study that ran (overrides applied)."""
    directory: str
    """``<storage>/<study name>``: the folder ``raycl.report`` reads."""
    paths: dict[str, str]
    """trials / matrix / curves Parquet paths."""
    started: int
    """Trials this run started."""
    finished: int
    """Trials this run finished (TERMINATED)."""
    errored: int
    """Trials this run left in ERROR (diverged ones included)."""
    diverged: int
    """Of those, trials stopped because their loss became NaN or infinite: an outcome of their
    hyperparameters, recorded as a result, not a failure of the run."""
    skipped: int
    """Trials done by earlier runs and not rerun."""
    interrupted: bool
    """The run stopped before every trial ended (rerun with ``--resume``)."""
    wall_time_s: float
    """Seconds from the start of :func:`run_study` to the end, Ray start-up included."""
    summary: list[str]
    """The per-arm table as printed."""


def prepare_run(path: str | Path, *, storage: str = "results", num_samples: int | None = None,
                max_concurrent: int | None = None, gpus_per_trial: float | None = None,
                cpus_per_trial: float | None = None, resume: bool = False,
                smoke: bool = False, check_storage: bool = True) -> PreparedRun:
    """Validate the study file and decide the trials, without starting Ray.

    Raises ``StudyError`` for a bad study file and :class:`RunError` when the storage holds
    results of this study but ``resume`` is False, or holds none and ``resume`` is True.
    """
    study = apply_overrides(load_study(path), num_samples=num_samples,
                            max_concurrent=max_concurrent, gpus_per_trial=gpus_per_trial,
                            cpus_per_trial=cpus_per_trial, smoke=smoke)
    r = study.resources
    if r.cpus_per_trial == 0 and not r.gpus_per_trial:
        raise RunError("a trial that asks for 0 CPUs must ask for GPUs (--gpus-per-trial)")
    try:
        store = ResultStore(storage, study.name)
    except ValueError as err:
        raise RunError(f"{path}: name: {err}") from None
    trials = None if study.search == "optuna" else plan_trials(study, smoke=smoke)
    skipped = 0
    if check_storage:
        exists = store.has_results()
        if resume and not exists:
            raise RunError(f"--resume: no results of study '{study.name}' in {store.uri} "
                           f"to resume (run it without --resume first)")
        if exists and not resume:
            if not smoke:
                raise RunError(f"{store.uri} already holds results of study '{study.name}': "
                               f"add --resume to continue it, or pass another --storage")
            store.clear()  # a smoke check replaces the previous smoke check
        try:  # before any trial: a study must not train for hours and fail to save
            store.check_writable()
        except OSError as err:
            raise RunError(f"--storage {storage}: cannot write there: "
                           f"{' '.join(str(err).split())}") from None
        if resume:
            store.load()
            done = store.done_keys()
            if trials is not None:
                skipped = sum(t["trial_key"] in done for t in trials)
                trials = [t for t in trials if t["trial_key"] not in done]
            else:
                skipped = len(done)
    return PreparedRun(study, str(path), store, trials, skipped)


def _gpus_per_trial(study: Study) -> float:
    import ray

    if study.resources.gpus_per_trial is not None:
        return float(study.resources.gpus_per_trial)
    # An autoscaling cluster may have no GPU node up yet: pass --gpus-per-trial there.
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def resources_text(study: Study, gpus: float | None = None) -> str:
    """What each trial asks for; ``gpus`` None: as the study says, before Ray is asked."""
    cpus = study.resources.cpus_per_trial
    if gpus is None:
        g = study.resources.gpus_per_trial
        gpu_text = "1 GPU if the cluster has GPUs, else 0" if g is None else f"{g:g} GPU"
    else:
        gpu_text = f"{gpus:g} GPU"
    return f"{cpus:g} CPU, {gpu_text}"


def _best_so_far(prepared: PreparedRun) -> tuple[float, str] | None:
    """(value, arm) of the best finished trial of earlier runs (``--resume``)."""
    from raycl.study.summary import metric_frame

    study = prepared.study
    frames = prepared.store.frames()
    trials = metric_frame(frames["trials"], frames["curves"], study.metric)
    if trials.empty or study.metric not in trials.columns:
        return None
    done = trials[(trials["status"] == "TERMINATED") & trials[study.metric].notna()]
    if done.empty:
        return None
    row = done.loc[done[study.metric].idxmax() if study.mode == "max"
                   else done[study.metric].idxmin()]
    return float(row[study.metric]), str(row["arm"])


def _trial_name(trial: Any) -> str:
    spec = trial.config["trial"]
    return f"{spec['arm']}_s{spec['seed']}_{spec['trial_key'][:8]}"


def _optuna_previous(prepared: PreparedRun) -> list[dict[str, Any]]:
    """Finished trials of earlier runs, as the Optuna searcher takes them."""
    from raycl.study.summary import metric_frame
    from raycl.tune.search import params_from_row

    study = prepared.study
    frames = prepared.store.frames()
    trials = metric_frame(frames["trials"], frames["curves"], study.metric)
    spaces = {a.name: a.space for a in study.arms}
    return [{"arm": row["arm"], "params": params_from_row(spaces[row["arm"]], row),
             "seed": int(row["seed"]), "value": row.get(study.metric)}
            for row in trials.to_dict("records")
            if row["status"] == "TERMINATED" and row["arm"] in spaces]


class _StopOnSignal(tune.Stopper):
    """Stops the Tune run once :attr:`stopped` is set (by the first Ctrl-C or SIGTERM). Tune's
    own SIGINT handler is switched off while a study runs: it is installed anew, and never
    removed, by every Tune run, so between or at the very end of batches a Ctrl-C could be lost
    or be taken for another run's; this one flag covers every batch."""

    def __init__(self) -> None:
        # A plain flag, not a threading.Event: Tune pickles its stopper with the experiment,
        # and the signal handler and Tune's loop both run in the main thread.
        self.stopped = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopped


@contextmanager
def _stop_on_signals(stopper: _StopOnSignal, out: TextIO) -> Iterator[None]:
    """The first Ctrl-C or SIGTERM stops the study: the running trials are stopped, no other
    batch starts, the files are written and the Ray this process started is shut down. A second
    one quits at once (KeyboardInterrupt). Entered after ``ray.init``, whose own SIGTERM
    handler would exit in the middle of Tune's loop."""
    def handler(signum: int, frame: Any) -> None:
        if stopper.stopped:
            raise KeyboardInterrupt
        stopper.stopped = True
        print(f"\n{signal.Signals(signum).name}: stopping the study (running trials stop, "
              f"results are written); press Ctrl-C again to quit at once", file=out, flush=True)

    saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals (and Tune's handling) alone
        yield
        return
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        if saved_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env


class _DropRestoreHint(logging.Filter):
    """Drops Tune's "resume with Tuner.restore(...)" advice: a raycl study resumes with
    ``--resume``, which the summary says."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


@contextmanager
def _quiet_tune_restore_hints() -> Iterator[None]:
    """Hide, while a study runs, Tune's Tuner.restore advice and its warnings about trials that
    never started having no metrics (after an interruption)."""
    tune_logger = logging.getLogger("ray.tune.tune")
    analysis_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    hint, level = _DropRestoreHint(), analysis_logger.level
    tune_logger.addFilter(hint)
    analysis_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tune_logger.removeFilter(hint)
        analysis_logger.setLevel(level)


def _scheduler(study: Study) -> Any:
    """The study's trial scheduler (None: FIFO); one instance serves every batch, so ASHA's
    rungs hold the results of all trials so far."""
    if study.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = ((study.metric, study.mode) if reported_every_experience(study.metric)
                    else ("avg_accuracy", "max"))
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode,
                         max_t=study.benchmark.n_experiences, grace_period=1,
                         reduction_factor=2)


def _searcher(prepared: PreparedRun) -> Any:
    """The Optuna searcher of an Optuna study (one instance for every batch)."""
    from raycl.tune.search import SeededOptunaSearch

    study = prepared.study
    return SeededOptunaSearch({a.name: a.space for a in study.arms}, study.seeds,
                              arm_budget(study), study.metric, study.mode, study.search_seed,
                              previous=_optuna_previous(prepared))


def trial_slots(study: Study, gpus: float) -> int:
    """How many trials the connected Ray cluster can run at once (at least 1)."""
    import ray

    resources = ray.cluster_resources()
    slots = []
    if study.resources.cpus_per_trial > 0:
        slots.append(resources.get("CPU", 0) / study.resources.cpus_per_trial)
    if gpus > 0:
        slots.append(resources.get("GPU", 0) / gpus)
    n = max(1, int(min(slots))) if slots else 1
    return min(n, study.max_concurrent) if study.max_concurrent else n


def default_trials_per_batch(slots: int) -> int:
    """Trials per Tune run when the user does not say: 500, or 20 per slot on a big cluster
    (each batch ends with slots idling while its last trials finish: 20 waves keep that near
    2.5% of the run)."""
    return max(500, 20 * slots)


def _batches(total: int, per_batch: int) -> list[int]:
    """Sizes of the successive Tune runs of ``total`` trials (``per_batch`` 0: one run)."""
    if per_batch <= 0 or total <= per_batch:
        return [total]
    return [min(per_batch, total - start) for start in range(0, total, per_batch)]


def _tuner(prepared: PreparedRun, gpus: float, callbacks: list[Any], *, name: str,
           trials: list[dict[str, Any]] | None, num_samples: int, scheduler: Any,
           searcher: Any, stopper: tune.Stopper | None = None) -> tune.Tuner:
    """One Tune run: the grid of ``trials``, or ``num_samples`` trials from ``searcher``."""
    study = prepared.study
    cpus = float(study.resources.cpus_per_trial)
    source = Path(prepared.path).read_text()
    ref = {"filename": prepared.path, "source": source, "settings": settings_of(study),
           "use_gpu": gpus > 0, "cpus_per_trial": cpus}
    fn = tune.with_resources(tune.with_parameters(trainable, ref=ref),
                             {"cpu": cpus, "gpu": gpus})
    if trials is not None:
        param_space: dict[str, Any] = {"trial": tune.grid_search(trials)}
        search_alg, num_samples = None, 1
    else:
        param_space, search_alg = {}, searcher
    tune_config = tune.TuneConfig(
        num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
        max_concurrent_trials=study.max_concurrent, reuse_actors=True,
        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(
        name=name, storage_path=prepared.store.ray_storage, verbose=0, callbacks=callbacks,
        stop=stopper,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=study.keep_checkpoints))
    return tune.Tuner(fn, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def ray_init_kwargs(address: str | None, dashboard_host: str | None = None) -> dict[str, Any]:
    """Arguments of ``ray.init`` for a run.

    A local Ray starts no dashboard unless ``dashboard_host`` asks for one (``127.0.0.1`` keeps
    it on this machine; ``0.0.0.0`` opens it to the network: the user's explicit choice). Joining
    a cluster (``address``) leaves the cluster's own dashboard as it is.
    """
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if address is None:
        kwargs["include_dashboard"] = dashboard_host is not None
        kwargs["dashboard_host"] = dashboard_host or "127.0.0.1"
    return kwargs


def run_study(path: str | Path, *, address: str | None = None, storage: str = "results",
              num_samples: int | None = None, max_concurrent: int | None = None,
              gpus_per_trial: float | None = None, cpus_per_trial: float | None = None,
              resume: bool = False, smoke: bool = False, out: TextIO | None = None,
              prepared: PreparedRun | None = None, dashboard_host: str | None = None,
              trials_per_batch: int | None = None) -> StudyOutcome:
    """Run the study file at ``path`` and write its Parquet results; see the module docstring.

    ``address`` joins a running cluster ("auto" on a cluster node); without it a local Ray is
    started and shut down at the end, with a dashboard only if ``dashboard_host`` is given.
    ``trials_per_batch`` caps the trials of one Tune run (None:
    :func:`default_trials_per_batch`; 0: all in one run). The remaining options are the CLI's.
    """
    start = time.monotonic()
    out = out or sys.stdout
    if prepared is None:
        prepared = prepare_run(path, storage=storage, num_samples=num_samples,
                               max_concurrent=max_concurrent, gpus_per_trial=gpus_per_trial,
                               cpus_per_trial=cpus_per_trial, resume=resume, smoke=smoke)
    study, store = prepared.study, prepared.store
    if prepared.trials is not None and not prepared.trials:
        print(f"study {study.name}: all {prepared.skipped} trials are done already",
              file=out)
        return _outcome(prepared, [], start, False, out)

    import ray

    # Ray's own trial table is replaced by ProgressCallback (verbose=0 silences it only with
    # the classic output engine).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # No per-trial result.json / progress.csv / TensorBoard files from Tune's default logger
    # callbacks: the Parquet tables hold every report, and the loggers' per-trial writers
    # (a TensorBoard writer thread per trial) cost the driver ~0.1 MB of RSS per trial
    # (bench_load.py). TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 in the environment brings them back.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    connected = fitting = False
    write_error = None
    try:
        if not ray.is_initialized():
            try:
                ray.init(**ray_init_kwargs(address, dashboard_host))
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise RunError(f"cannot start or join {where}: "
                               f"{' '.join(str(err).split())}") from None
            connected = True
        stopper = _StopOnSignal()
        with _stop_on_signals(stopper, out):
            gpus = _gpus_per_trial(study)
            for line in header(study, resources_text(study, gpus)):
                print(line, file=out)
            total = (len(prepared.trials) if prepared.trials is not None else max(
                0, sum(arm_budget(study).values()) * len(study.seeds) - prepared.skipped))
            print(f"running {total} trials" + (f" ({prepared.skipped} done before)"
                                                if prepared.skipped else "")
                  + f"; results in {store.uri}", file=out, flush=True)
            progress = ProgressCallback(total, study.metric, study.mode, prepared.skipped,
                                        best=_best_so_far(prepared), out=out)
            parquet = ParquetCallback(store)
            per_batch = (default_trials_per_batch(trial_slots(study, gpus))
                         if trials_per_batch is None else trials_per_batch)
            sizes = _batches(total, per_batch)
            scheduler = _scheduler(study)
            searcher = _searcher(prepared) if prepared.trials is None else None
            # the pid: two runs started in the same second (quick kill/resume) never share a
            # folder
            name = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"
            fitting = True
            first = 0
            for k, size in enumerate(sizes):
                tuner = _tuner(
                    prepared, gpus, [parquet, progress],
                    name=name if len(sizes) == 1 else f"{name}-b{k:03d}",
                    trials=(None if prepared.trials is None
                            else prepared.trials[first:first + size]),
                    num_samples=size, scheduler=scheduler, searcher=searcher,
                    stopper=stopper)
                first += size
                with _quiet_tune_restore_hints():
                    tuner.fit()
                del tuner  # frees this batch's Trial objects before the next batch
                if stopper.stopped:
                    break  # Ctrl-C / SIGTERM: Tune stopped the batch and returned
            progress.close()
    finally:
        if fitting:  # whatever was recorded before an error or Ctrl-C
            try:
                store.write()
            except OSError as err:
                write_error = f"cannot write the results to {store.uri}: " \
                              f"{' '.join(str(err).split())}"
        if connected:  # stops the local Ray we started; only disconnects from a cluster
            ray.shutdown()
    ended = _ended(progress, prepared)
    if write_error or parquet.write_error:
        print(f"raycl: error: {write_error or parquet.write_error}; the files there hold the "
              f"last complete write", file=sys.stderr)
    interrupted = ended < total or bool(write_error)
    return _outcome(prepared, list(parquet.started), start, interrupted, out)


def _ended(progress: ProgressCallback, prepared: PreparedRun) -> int:
    """Trials of this run that ended (finished, diverged or errored for good). Counted from
    the callbacks, not from fit()'s ResultGrid: after Ctrl-C / SIGTERM fit() returns normally
    and its grid leaves out the trials that never started."""
    return progress.done - prepared.skipped + progress.errored


def _outcome(prepared: PreparedRun, trial_ids: list[str], start: float, interrupted: bool,
             out: TextIO) -> StudyOutcome:
    study, store = prepared.study, prepared.store
    frames = store.frames()
    trials = frames["trials"]
    mine = trials[trials["trial_id"].isin(trial_ids)] if trial_ids else trials.iloc[:0]
    lines = summary_lines(trials, frames["curves"], study.metric, study.mode)
    outcome = StudyOutcome(
        study=study, directory=store.uri, paths={t: store.path(t) for t in frames},
        started=len(trial_ids), finished=int((mine["status"] == "TERMINATED").sum()),
        errored=int((mine["status"] == "ERROR").sum()),
        diverged=int(((mine["status"] == "ERROR")
                      & mine["error"].fillna("").str.startswith("diverged:")).sum()),
        skipped=prepared.skipped,
        interrupted=interrupted, wall_time_s=time.monotonic() - start, summary=lines)
    print("", file=out)
    for line in lines:
        print(line, file=out)
    print("", file=out)
    for table, where in outcome.paths.items():
        print(f"{table:>7}: {where}", file=out)
    if interrupted:
        print("the study was interrupted: run the same command with --resume to finish it",
              file=out)
    print(f"study {study.name}: {outcome.finished} trial(s) finished, {outcome.errored} "
          f"errored ({outcome.diverged} diverged), {outcome.skipped} done before, in "
          f"{outcome.wall_time_s:.1f} s", file=out)
    print(f"report: python -m raycl.report {store.uri}", file=out, flush=True)
    return outcome
