"""Running a planned study on Ray Tune: from a :class:`~raycl.study.plan.PreparedRun` to Parquet.

:func:`run_study` is what ``python -m raycl.study`` calls once :func:`raycl.study.plan.prepare_run`
has validated the study, decided its trials, checked its storage and taken its lock (no Ray
yet). It starts or joins Ray, runs the trials as Tune runs with the Parquet and progress
callbacks, prints the per-arm table, shuts down the Ray it started and releases the lock.

Which Ray: the cluster at ``--address``; else the one in ``RAY_ADDRESS`` (Ray jobs set it);
else a new local Ray of the study's own, started with ``ray.init(address="local")``, which in
Ray 2.60 never connects to an instance already running on the machine (``ray.init()`` without
an address would join the last one ``ray start`` started there, e.g. another user's job).
The header says which.

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
from typing import Any, TextIO

from ray import tune

from raycl.study.plan import PreparedRun, RunError, TrialSpec, arm_budget
from raycl.study.protocol import keep_final_checkpoint, rank_column, search_phase, trial_where
from raycl.study.results import retry_storage, scrub
from raycl.study.schema import (
    AVG_ACCURACY,
    DIVERGED,
    ERROR,
    ERRORED,
    SELECTION_TABLE,
    STATUS,
    TERMINATED,
    TEST,
    TRIAL_ID,
    VALID,
    metric_column,
    reported_every_experience,
    split_column,
)
from raycl.study.spec import Study
from raycl.study.summary import header, resources_text, summary_lines
from raycl.tune.callbacks import ParquetCallback, PlacementWatch, StudyStopper
from raycl.tune.compat import (
    TRIAL_CONFIG,
    quiet_ray_console,
    set_run_environment,
    signal_handling_off,
    trial_spec,
    tune_config,
)
from raycl.tune.progress import ProgressCallback
from raycl.tune.trackers import tracker_callbacks
from raycl.tune.trainable import trainable

__all__ = ["StudyOutcome", "default_trials_per_batch", "local_ray", "ray_init_kwargs",
           "run_study", "trial_slots"]

#: How long a study on a cluster waits for a node that can run a trial (an autoscaler adding
#: one) before it stops with one line (``--pending-timeout``).
DEFAULT_PENDING_TIMEOUT_S = 900.0


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
    failure: str | None = None
    """Why the study was stopped early because every trial would fail the same way (its study
    file does not import in a trial process, the storage is full, no node can place a trial);
    None otherwise."""


def _gpus_per_trial(study: Study) -> float:
    import ray

    if study.resources.gpus_per_trial is not None:
        return float(study.resources.gpus_per_trial)
    # An autoscaling cluster may have no GPU node up yet: pass --gpus-per-trial there.
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _trial_name(trial: Any) -> str:
    return trial_spec(trial).name


@contextmanager
def _stop_on_signals(stopper: StudyStopper, out: TextIO) -> Iterator[None]:
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

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals (and Tune's handling) alone
        yield
        return
    try:
        with signal_handling_off():
            yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _scheduler(study: Study) -> Any:
    """The search phase's trial scheduler (None: FIFO); one instance serves every batch, so
    ASHA's rungs hold the results of all trials so far. It ranks on the split configs are
    chosen on (validation unless the study selects on 'test')."""
    if study.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    split = VALID if study.selection != "test" else TEST
    metric, mode = ((metric_column(study.metric, split), study.mode)
                    if reported_every_experience(study.metric)
                    else (metric_column(AVG_ACCURACY, split), "max"))
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode,
                         max_t=study.benchmark.n_experiences, grace_period=1,
                         reduction_factor=2)


def _searcher(prepared: PreparedRun) -> Any:
    """The Optuna searcher of an Optuna study (one instance for every batch); it is told the
    column configs are ranked on (validation unless the study selects on 'test')."""
    from raycl.tune.search import SeededOptunaSearch

    study = prepared.study
    return SeededOptunaSearch({a.name: a.space for a in study.arms}, study.seeds,
                              arm_budget(study), rank_column(study), study.mode,
                              study.search_seed, previous=prepared.finished_configs(),
                              where=trial_where(study))


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
           trials: list[TrialSpec] | None, num_samples: int, scheduler: Any,
           searcher: Any, stopper: tune.Stopper | None = None) -> tune.Tuner:
    """One Tune run: the grid of ``trials``, or ``num_samples`` trials from ``searcher``."""
    study = prepared.study
    cpus = float(study.resources.cpus_per_trial)
    fn = tune.with_resources(
        tune.with_parameters(trainable, source=prepared.source, use_gpu=gpus > 0,
                             cpus_per_trial=cpus, storage=prepared.store.uri,
                             storage_fs=prepared.store.fs if prepared.store.remote else None),
        {"cpu": cpus, "gpu": gpus})
    if trials is not None:
        param_space: dict[str, Any] = {
            TRIAL_CONFIG: tune.grid_search([tune_config(t) for t in trials])}
        search_alg, num_samples = None, 1
    else:
        param_space, search_alg = {}, searcher
    settings = tune.TuneConfig(
        num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
        max_concurrent_trials=study.max_concurrent, reuse_actors=True,
        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    store = prepared.store
    # A remote storage's file system goes to Tune as it is: the endpoint in its URI's query
    # (or in AWS_ENDPOINT_URL) reaches every trial, the paths Tune prints have no query.
    where: dict[str, Any] = ({"storage_path": store.ray_fs_path, "storage_filesystem": store.fs}
                             if store.remote else {"storage_path": store.ray_storage})
    run_config = tune.RunConfig(
        name=name, **where, verbose=0, callbacks=callbacks,
        stop=stopper,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None))  # pruned by raycl
    return tune.Tuner(fn, param_space=param_space, tune_config=settings,
                      run_config=run_config)


def local_ray(address: str | None) -> bool:
    """Whether a run with ``--address`` ``address`` starts a local Ray of its own: no address
    given and none in ``RAY_ADDRESS``."""
    return address is None and not os.environ.get("RAY_ADDRESS")


def ray_init_kwargs(address: str | None, dashboard_host: str | None = None) -> dict[str, Any]:
    """Arguments of ``ray.init`` for a run.

    Without ``address`` and ``RAY_ADDRESS``: ``address="local"``, a new local Ray (Ray 2.60:
    "start a new local Ray instance, even if there is already an existing local Ray
    instance"). It starts no dashboard unless ``dashboard_host`` asks for one (``127.0.0.1``
    keeps it on this machine; ``0.0.0.0`` opens it to the network: the user's explicit
    choice). With ``RAY_ADDRESS`` set and no ``address``: ``address=None``, which ``ray.init``
    resolves from ``RAY_ADDRESS``. Joining a cluster leaves the cluster's own dashboard as it
    is.
    """
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
    if local_ray(address):
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = dashboard_host is not None
        kwargs["dashboard_host"] = dashboard_host or "127.0.0.1"
    return kwargs


def run_study(prepared: PreparedRun, *, address: str | None = None,
              dashboard_host: str | None = None, trials_per_batch: int | None = None,
              out: TextIO | None = None,
              pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S,
              shared_storage: bool = False, trackers: list[str] | None = None
              ) -> StudyOutcome:
    """Run a prepared study (:func:`raycl.study.plan.prepare_run`) on Ray Tune and write its
    Parquet results; see the module docstring. Releases the prepared run's lock when it ends,
    whatever the outcome (an error or Ctrl-C included).

    ``address`` joins a running cluster ("auto" on a cluster node); without it, the cluster in
    ``RAY_ADDRESS``, else a new local Ray, started and shut down at the end, with a dashboard
    only if ``dashboard_host`` is given. In a process already connected to Ray, that Ray is
    used. ``trials_per_batch`` caps the trials of one Tune run (None:
    :func:`default_trials_per_batch`; 0: all in one run). On a cluster where no node can run a
    trial (an autoscaler may add one), the study stops with one line when no trial has
    started after ``pending_timeout_s``. On a cluster of more than one node, a local storage
    path is refused unless ``shared_storage`` declares it a file system every node mounts.
    ``trackers`` adds experiment trackers (:mod:`raycl.tune.trackers`). Raises
    :class:`~raycl.study.plan.RunError` when Ray cannot be started or joined, or when no node
    of raycl's own local Ray can run a trial.
    """
    try:
        with quiet_ray_console(), _scrubbed_output():
            return _run_study(prepared, address, dashboard_host, trials_per_batch, out,
                              pending_timeout_s, shared_storage, list(trackers or []))
    finally:
        prepared.release()


class _Scrubbed:
    """A text stream that writes through :func:`~raycl.study.results.scrub`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(scrub(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _scrubbed_output() -> Iterator[None]:
    """While a study runs, ``sys.stdout`` and ``sys.stderr`` write through ``scrub``: Ray
    prints the trial processes' output through them, and Arrow's C++ errors there (an S3
    upload cut short by an outage) name the storage's endpoint."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Scrubbed(saved[0]), _Scrubbed(saved[1])  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _run_study(prepared: PreparedRun, address: str | None, dashboard_host: str | None,
               trials_per_batch: int | None, out: TextIO | None,
               pending_timeout_s: float, shared_storage: bool,
               trackers: list[str]) -> StudyOutcome:
    start = time.monotonic()
    out = out or sys.stdout
    if prepared.next_batch(set()) is None:
        done = len(prepared.store.done_keys())
        print(f"study {prepared.study.name}: all {done} trials are done already", file=out)
        prepared.store.set_derived(prepared.derived())
        # Rewritten from the rows held (trials and curves): a matrix or derived table that
        # was damaged, or written by an interrupted run, is rebuilt.
        try:
            prepared.store.write()
        except OSError as err:
            raise RunError(f"cannot write the results to {prepared.store.uri}: "
                           f"{' '.join(str(err).split())}") from None
        return _outcome(prepared, [], start, False, out)

    import ray

    set_run_environment()
    connected = False
    try:
        if ray.is_initialized():
            which = f"Ray cluster at {_gcs_address(address)} (connected before the study)"
        else:
            which = _connect(address, dashboard_host)
            connected = True
        run, parquet, write_error, stopper = _fit_batches(prepared, trials_per_batch, out,
                                                          which, pending_timeout_s,
                                                          shared_storage, trackers)
    finally:
        if connected:  # stops the local Ray we started; only disconnects from a cluster
            ray.shutdown()
    if write_error or parquet.write_error:
        print(f"raycl: error: {write_error or parquet.write_error}; the files there hold the "
              f"last complete write", file=sys.stderr)
    interrupted = stopper.stopped or run.ended < run.expected or bool(write_error)
    return _outcome(prepared, list(parquet.started), start, interrupted, out,
                    failure=stopper.failure)


def _unshared_storage(prepared: PreparedRun, shared: bool) -> str | None:
    """Why the study's storage will not do on the connected cluster (None: it will): a path
    on this machine's file system, on a cluster of more than one node, unless declared
    shared (an NFS mount every node has at the same path, say). Trials on the other nodes
    would write their checkpoints where the driver never looks, and fail to resume."""
    import pyarrow.fs as pafs
    import ray

    if shared or not isinstance(prepared.store.fs, pafs.LocalFileSystem):
        return None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return None
    return (f"--storage {prepared.store.uri.rpartition('/')[0]}: a path on this machine, and "
            f"the Ray cluster has {len(nodes)} nodes: use storage every node reaches "
            f"(--storage s3://bucket/prefix), or add --shared-storage if this path is a "
            f"file system every node mounts at the same place")


def _unplaceable(study: Study, gpus: float) -> str | None:
    """What one trial asks for that no alive node of the connected Ray has (None: some node
    can run it)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = float(study.resources.cpus_per_trial)
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return None
    most_cpu = max((r.get("CPU", 0) for r in nodes), default=0)
    most_gpu = max((r.get("GPU", 0) for r in nodes), default=0)
    return (f"{cpus:g} CPU and {gpus:g} GPU, and the largest node has {most_cpu:g} CPU and "
            f"{most_gpu:g} GPU")


def _gcs_address(fallback: str | None) -> str:
    """The address of the Ray this process is connected to."""
    import ray

    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # a Ray Client connection ("ray://") has no GCS address of its own
        return fallback or os.environ.get("RAY_ADDRESS") or "?"


def _connect(address: str | None, dashboard_host: str | None) -> str:
    """Start a local Ray, or join the cluster at ``address`` (or ``RAY_ADDRESS``); says which
    (the header's line). :class:`RunError` if neither works."""
    import ray

    local = local_ray(address)
    try:
        ray.init(**ray_init_kwargs(address, dashboard_host))
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = ("a local Ray" if local else
                 f"the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}")
        raise RunError(f"cannot start or join {where}: {' '.join(str(err).split())}") from None
    gcs = _gcs_address(address)
    return f"local Ray started for this study ({gcs})" if local else f"Ray cluster at {gcs}"


class _Run:
    """What the callbacks of every Tune run of one study run counted."""

    def __init__(self) -> None:
        self.expected = 0
        self.ended = 0


def _fit_batches(prepared: PreparedRun, trials_per_batch: int | None, out: TextIO, which: str,
                 pending_timeout_s: float, shared_storage: bool, trackers: list[str]
                 ) -> tuple[_Run, ParquetCallback, str | None, StudyStopper]:
    """Every phase of the study's protocol, each as Tune runs of at most ``trials_per_batch``
    trials, under one signal handler. Returns what ran, the Parquet callback (what it
    recorded), why the final write failed (if it did) and the stopper (whether a signal or a
    trial that could not load the study stopped the run). ``which``: the Ray used, for the
    header."""
    study, store = prepared.study, prepared.store
    stopper = StudyStopper()
    parquet = ParquetCallback(store, stopper=stopper, keep_checkpoints=study.keep_checkpoints,
                              keep_final_checkpoint=keep_final_checkpoint(study))
    run = _Run()
    write_error = None
    fitting = False
    try:
        with _stop_on_signals(stopper, out):
            gpus = _gpus_per_trial(study)
            unshared = _unshared_storage(prepared, shared_storage)
            if unshared:
                raise RunError(unshared)
            missing = _unplaceable(study, gpus)
            if missing and which.startswith("local Ray started"):  # a fixed size: never
                raise RunError(f"no node of this machine's Ray can run a trial: it asks for "
                               f"{missing}; lower --cpus-per-trial / --gpus-per-trial")
            callbacks: list[tune.Callback] = [
                parquet, *study.callbacks, *tracker_callbacks(trackers, study.name, store)]
            if missing:  # a cluster may grow (autoscaler): say so and wait, for so long
                print(f"raycl: warning: no node of the Ray cluster can run a trial now: it "
                      f"asks for {missing}; trials wait up to {pending_timeout_s:g} s for the "
                      f"autoscaler to add such a node", file=sys.stderr)
                callbacks.append(PlacementWatch(stopper, missing, pending_timeout_s))
            for line in header(study, resources_text(study, gpus)):
                print(line, file=out)
            print(f"Ray: {which}", file=out)
            print(f"results in {store.uri}", file=out, flush=True)
            per_batch = (default_trials_per_batch(trial_slots(study, gpus))
                         if trials_per_batch is None else trials_per_batch)
            scheduler = _scheduler(study)
            # the pid: two runs started in the same second (quick kill/resume) never share a
            # folder
            name = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"
            tried: set[str] = set()
            fitting, first_phase, k = True, True, 0
            while not stopper.stopped and (batch := prepared.next_batch(tried)) is not None:
                searching = batch.phase == search_phase(study)
                already = prepared.skipped if first_phase else 0
                total = (len(batch.trials) if batch.trials is not None
                         else prepared.total)
                print(f"phase {batch.note}" + (f" ({already} done before)" if already else ""),
                      file=out, flush=True)
                progress = ProgressCallback(total, rank_column(study), study.mode, already,
                                            best=prepared.best_done() if searching else None,
                                            out=out, error_files=parquet.error_files,
                                            n_experiences=study.benchmark.n_experiences,
                                            accuracy=split_column(
                                                TEST if study.selection == "test" else VALID,
                                                AVG_ACCURACY))
                searcher = _searcher(prepared) if batch.trials is None else None
                first = 0
                for size in _batches(total, per_batch):
                    trials = (None if batch.trials is None
                              else batch.trials[first:first + size])
                    first += size
                    tuner = _tuner(prepared, gpus, [*callbacks, progress],
                                   name=f"{name}-b{k:03d}", trials=trials, num_samples=size,
                                   scheduler=scheduler if searching else None,
                                   searcher=searcher, stopper=stopper)
                    k += 1
                    tuner.fit()
                    del tuner  # frees this batch's Trial objects before the next batch
                    tried.update(t.trial_key for t in trials or [])
                    if stopper.stopped:
                        break  # Ctrl-C / SIGTERM: Tune stopped the batch and returned
                progress.close()
                tried.add(f"optuna:{batch.phase}")
                run.expected += total
                run.ended += progress.done - already + progress.errored
                first_phase = False
                store.set_derived(prepared.derived())
    finally:
        if fitting:  # whatever was recorded before an error or Ctrl-C
            try:
                store.set_derived(prepared.derived())
                # a storage that does not answer now may in a moment: the rows are in memory
                retry_storage(store.write, store.fs, on_retry=parquet.storage_trouble)
            except OSError as err:
                write_error = f"cannot write the results to {store.uri}: " \
                              f"{scrub(' '.join(str(err).split()))}"
    return run, parquet, write_error, stopper


def _outcome(prepared: PreparedRun, trial_ids: list[str], start: float, interrupted: bool,
             out: TextIO, failure: str | None = None) -> StudyOutcome:
    study, store = prepared.study, prepared.store
    frames = store.frames()
    trials = frames["trials"]
    mine = trials[trials[TRIAL_ID].isin(trial_ids)] if trial_ids else trials.iloc[:0]
    errored = mine[STATUS] == ERRORED
    # set with the last write of this run (or of the all-done path)
    selection = frames.get(SELECTION_TABLE)
    if selection is None:
        selection = prepared.derived()[SELECTION_TABLE]
    lines = summary_lines(selection, trials)
    outcome = StudyOutcome(
        study=study, directory=store.uri, paths={t: store.path(t) for t in frames},
        started=len(trial_ids), finished=int((mine[STATUS] == TERMINATED).sum()),
        errored=int(errored.sum()),
        diverged=int((errored & mine[ERROR].fillna("").str.startswith(f"{DIVERGED}:")).sum()),
        skipped=prepared.skipped,
        interrupted=interrupted, wall_time_s=time.monotonic() - start, summary=lines,
        failure=failure)
    print("", file=out)
    for line in lines:
        print(line, file=out)
    print("", file=out)
    for table, where in outcome.paths.items():
        print(f"{table:>7}: {where}", file=out)
    if failure:
        print("the study was stopped, since every trial would fail the same way: fix the "
              "cause, then run the same command with --resume", file=out)
    elif interrupted:
        print("the study was interrupted: run the same command with --resume to finish it",
              file=out)
    print(f"study {study.name}: {outcome.finished} trial(s) finished, {outcome.errored} "
          f"errored ({outcome.diverged} diverged), {outcome.skipped} done before, in "
          f"{outcome.wall_time_s:.1f} s", file=out)
    print(f"report: python -m raycl.report {store.uri}", file=out, flush=True)
    return outcome
