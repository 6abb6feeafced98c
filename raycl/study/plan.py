"""Planning a run: the command line's overrides, the deterministic trial list, the resume plan.

For 'random' and 'grid' search the whole trial list is known before Ray starts: each arm's
configs (sampled with a generator seeded from ``study.search_seed`` and the arm name) crossed with
every seed. The list is the same on every run of the same study file and options, which is what
lets ``--resume`` skip the trials already done and ``--dry-run`` print exactly what would run.
Optuna studies choose configs as results arrive; only their budget is known up front.

:func:`prepare_run` turns a study file and the command line's options into a
:class:`PreparedRun`: the validated study, its :class:`TrialSpec` list, its
:class:`StudySource` (what every trial process loads the study from) and its result store.
Nothing here starts Ray; :mod:`raycl.tune` executes a prepared run.

A prepared run (unless ``check_storage=False``, as for ``--dry-run``) holds its study folder's
lock (:class:`raycl.study.results.StudyLock`), taken before anything is written there: a second
run of the same study is refused until :meth:`PreparedRun.release` (``run_study`` releases it
when it ends, also on an error or Ctrl-C). ``--resume`` compares the study with the one that
wrote the results (``raycl.study.settings.study_changes``) and refuses a changed study.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from raycl.study.loader import load_study_source, read_study_file, validate_study
from raycl.study.protocol import (
    Batch,
    comparisons_frame,
    first_trials,
    next_batch,
    rank_column,
    search_phase,
    selection_frame,
)
from raycl.study.protocol import (
    confirm_seeds as confirm_seeds_of,
)
from raycl.study.results import (
    SMOKE_FOLDER,
    ResultStore,
    StorageError,
    StudyLock,
    StudyLocked,
    storage_error_text,
    storage_label,
)
from raycl.study.schema import (
    ARM,
    COMPARISONS_TABLE,
    CONFIG,
    PHASE,
    SEED,
    SELECTION_TABLE,
    STATUS,
    TERMINATED,
)
from raycl.study.settings import resolved_settings, study_changes
from raycl.study.spec import (
    Benchmark,
    Model,
    Optimizer,
    PerExperience,
    Resources,
    Study,
    TrialSpec,
    make_trial,
    trial_key,
)

__all__ = ["PreparedRun", "RunError", "StudySource", "TrialSpec", "apply_overrides",
           "apply_settings", "arm_budget", "make_trial", "plan_trials", "prepare_run",
           "settings_of", "trial_key"]

_SPECS = {"benchmark": Benchmark, "model": Model, "optimizer": Optimizer, "resources": Resources,
          "per_experience": PerExperience}


class RunError(Exception):
    """A run that must not start (one line): results already there, nothing to resume, ..."""


def apply_overrides(study: Study, *, num_samples: int | None = None,
                    max_concurrent: int | None = None, gpus_per_trial: float | None = None,
                    cpus_per_trial: float | None = None, smoke: bool = False,
                    selection: str | None = None,
                    confirm_seeds: list[int] | None = None) -> Study:
    """A copy of ``study`` with the CLI's options applied.

    ``smoke`` gives one sample per arm, the first seed only, one epoch per experience and no
    confirmation runs, under the name ``<name>-smoke`` (its rows say it is a check);
    :func:`prepare_run` puts its results in ``<storage>/smoke/<name>/``, a folder no study can
    have, so a check never mixes with or replaces a study's results.
    """
    changes: dict[str, Any] = {}
    if selection is not None:
        changes["selection"] = selection
    if confirm_seeds is not None:
        changes["confirm_seeds"] = list(confirm_seeds)
    if num_samples is not None:
        changes["num_samples"] = num_samples
    if max_concurrent is not None:
        changes["max_concurrent"] = max_concurrent
    if gpus_per_trial is not None or cpus_per_trial is not None:
        r = study.resources
        changes["resources"] = Resources(
            gpus_per_trial=r.gpus_per_trial if gpus_per_trial is None else gpus_per_trial,
            cpus_per_trial=r.cpus_per_trial if cpus_per_trial is None else cpus_per_trial)
    if smoke:
        changes.update(name=f"{study.name}-smoke", num_samples=1, seeds=list(study.seeds[:1]),
                       train_epochs=1, confirm_seeds=[])
    return dataclasses.replace(study, **changes)


def plan_trials(study: Study, smoke: bool = False) -> list[TrialSpec]:
    """Every trial of the first phase of a 'random' or 'grid' study, in run order: arm by arm,
    config by config, seed by seed (see ``raycl.study.protocol.first_trials``)."""
    trials = first_trials(study, smoke=smoke)
    if trials is None:
        raise ValueError("search='optuna' chooses its configs while the study runs")
    return trials


def arm_budget(study: Study) -> dict[str, int]:
    """Configs each arm runs under 'optuna' (a baseline with an empty space runs one)."""
    return {arm.name: (1 if not arm.space else study.num_samples) for arm in study.arms}


def settings_of(study: Study) -> dict[str, Any]:
    """The study's plain settings (every field but the arms and the driver's Tune callbacks),
    to send to the trials."""
    return {f.name: (dataclasses.asdict(getattr(study, f.name))
                     if f.name in _SPECS else getattr(study, f.name))
            for f in dataclasses.fields(study) if f.name not in ("arms", "callbacks")}


def apply_settings(study: Study, settings: Mapping[str, Any]) -> Study:
    """``study`` (as loaded from its file in a trial) with the driver's settings, so overrides
    and anything the file computed on the driver (environment variables) hold in every trial."""
    changes = {k: (_SPECS[k](**v) if k in _SPECS else v) for k, v in settings.items()}
    return dataclasses.replace(study, **changes)


@dataclass(frozen=True)
class StudySource:
    """What a trial process rebuilds the driver's study from: the study file's text (so worker
    nodes need no copy of the file) and the driver's resolved settings (overrides included).
    The arms' plugin factories are code, so they come from the text, never pickled."""

    filename: str
    """The study file's absolute path on the driver (its ``__file__`` in trial processes;
    named in errors and tracebacks)."""
    text: str
    """The study file's content, as validated on the driver."""
    settings: dict[str, Any] = field(default_factory=dict)
    """:func:`settings_of` the driver's study."""

    @property
    def digest(self) -> str:
        """A hash of all three: equal digests load equal studies."""
        blob = json.dumps([self.filename, self.text, self.settings], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()

    def load(self) -> Study:
        """The study, as the driver has it (not validated again)."""
        study = load_study_source(self.filename, self.text, validate=False)
        return apply_settings(study, self.settings)


@dataclass
class PreparedRun:
    """A validated study, its trials and where its results go (nothing started yet)."""

    study: Study
    """The study with the command-line overrides applied."""
    source: StudySource
    """What the trials load the study from."""
    store: ResultStore
    """Its results tables (loaded when resuming)."""
    trials: list[TrialSpec] | None
    """The first phase's trials still to run (None for Optuna, which picks configs as it
    goes); later phases depend on its results (:meth:`next_batch`)."""
    skipped: int
    """First-phase trials already finished by an earlier run (``--resume``)."""
    planned: list[TrialSpec] | None = None
    """The first phase's whole trial list (None for Optuna)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The resolved study (``raycl.study.settings``), saved with the results."""
    lock: StudyLock | None = None
    """The study folder's lock, held from :func:`prepare_run` until :meth:`release` (None:
    prepared without checking the storage, e.g. ``--dry-run``)."""

    def release(self) -> None:
        """Release the study folder's lock (idempotent; also done at interpreter exit)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> PreparedRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def path(self) -> str:
        """The study file."""
        return self.source.filename

    @property
    def total(self) -> int:
        """First-phase trials this run is to run (Optuna: its budget less those done)."""
        if self.trials is not None:
            return len(self.trials)
        study = self.study
        return max(0, sum(arm_budget(study).values()) * len(study.seeds) - self.skipped)

    def next_batch(self, tried: set[str]) -> Batch | None:
        """The trials to run next given the results so far (see ``protocol.next_batch``)."""
        frames = self.store.frames()
        return next_batch(self.study, frames["trials"], frames["curves"], tried, self.planned)

    def derived(self) -> dict[str, pd.DataFrame]:
        """selection.parquet and comparisons.parquet as the results stand."""
        frames = self.store.frames()
        trials, curves = frames["trials"], frames["curves"]
        comparisons = comparisons_frame(self.study, trials, curves)
        return {SELECTION_TABLE: selection_frame(self.study, trials, curves, comparisons),
                COMPARISONS_TABLE: comparisons}

    def _finished(self) -> list[dict[str, Any]]:
        """Search-phase rows of earlier runs that finished (``--resume``)."""
        trials = self.store.frames()["trials"]
        if trials.empty:
            return []
        rows = trials[(trials[STATUS] == TERMINATED)
                      & (trials[PHASE] == search_phase(self.study))]
        return rows.to_dict("records")

    def best_done(self) -> tuple[float, str] | None:
        """(value, arm) of the best finished search trial of earlier runs (``--resume``), by
        the column configs are ranked on."""
        column, sign = rank_column(self.study), (1.0 if self.study.mode == "max" else -1.0)
        scored = [(float(row[column]), str(row[ARM])) for row in self._finished()
                  if _is_number(row.get(column))]
        return max(scored, key=lambda pair: sign * pair[0], default=None)

    def finished_configs(self) -> list[dict[str, Any]]:
        """Finished search trials of earlier runs as the Optuna searcher takes them: dicts of
        ``arm``, ``params`` (exact, from the config column), ``seed`` and the ranked
        ``value``."""
        arms = {a.name for a in self.study.arms}
        column = rank_column(self.study)
        return [{"arm": row[ARM], "params": json.loads(row[CONFIG]), "seed": int(row[SEED]),
                 "value": row.get(column)}
                for row in self._finished() if row[ARM] in arms]


def prepare_run(path: str | Path, *, storage: str = "results", num_samples: int | None = None,
                max_concurrent: int | None = None, gpus_per_trial: float | None = None,
                cpus_per_trial: float | None = None, resume: bool = False,
                smoke: bool = False, check_storage: bool = True,
                selection: str | None = None,
                confirm_seeds: list[int] | None = None,
                allow_changed: bool = False) -> PreparedRun:
    """Validate the study file and decide the trials, without starting Ray.

    With ``check_storage`` (the default; ``--dry-run`` skips it) it takes the study folder's
    lock before writing anything there and holds it in the returned run (release it with
    :meth:`PreparedRun.release`, or let ``run_study`` do it), then checks the storage.

    Raises ``StudyError`` for a bad study file and :class:`RunError` when another live run
    holds the lock, when the storage holds results of this study but ``resume`` is False, or
    holds none and ``resume`` is True, and when ``resume`` finds results of a changed study
    (with ``allow_changed``: of a study that the new one does not only widen).
    """
    text = read_study_file(path)
    loaded = load_study_source(str(path), text, validate=False)
    study = apply_overrides(loaded, num_samples=num_samples, max_concurrent=max_concurrent,
                            gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                            smoke=smoke, selection=selection, confirm_seeds=confirm_seeds)
    validate_study(study, path)  # with the overrides: they are study settings too
    r = study.resources
    if r.cpus_per_trial == 0 and not r.gpus_per_trial:
        raise RunError("a trial that asks for 0 CPUs must ask for GPUs (--gpus-per-trial)")
    try:
        store = ResultStore(storage, study.name,
                            folder=(SMOKE_FOLDER, loaded.name) if smoke else None)
    except StorageError as err:
        raise RunError(f"--storage {err}") from None
    except ValueError as err:
        raise RunError(f"{path}: name: {err}") from None
    # The absolute path: trial processes run in folders of their own, where a study file's
    # ``Path(__file__).parent`` must still name the file's folder (on this machine's nodes).
    source = StudySource(os.path.abspath(path), text, settings_of(study))
    planned = first_trials(study, smoke=smoke)
    trials, skipped = planned, 0
    settings = resolved_settings(study, str(path), text, confirm_seeds_of(study))
    store.set_settings(settings)
    lock = None
    if check_storage:
        lock = _take_lock(store, storage)
        try:
            _check_storage(store, study.name, storage, resume=resume, smoke=smoke)
            if resume:
                try:
                    store.load()
                except ValueError as err:
                    raise RunError(str(err)) from None
                _check_same_study(store, study.name, settings, allow_changed)
                done = store.done_keys()
                if planned is not None:
                    skipped = sum(t.trial_key in done for t in planned)
                    trials = [t for t in planned if t.trial_key not in done]
                else:
                    skipped = len(done)
        except BaseException:
            lock.release()
            raise
    return PreparedRun(study, source, store, trials, skipped, planned, settings, lock)


def _take_lock(store: ResultStore, storage: str) -> StudyLock:
    """The study folder's lock, or :class:`RunError` saying who holds it."""
    try:
        return store.lock()
    except StudyLocked as err:
        raise RunError(str(err)) from None
    except OSError as err:
        raise RunError(f"--storage {storage_label(storage)}: cannot write there: "
                       f"{storage_error_text(err)}") from None


def _check_same_study(store: ResultStore, name: str, settings: Mapping[str, Any],
                      allow_changed: bool) -> None:
    """Refuse to resume results written by another study (see ``study_changes``); with
    ``allow_changed``, accept a study that only widens the search
    (``raycl.study.settings.WIDENING``)."""
    stored = store.stored_settings()
    if stored is None:
        if not store.trial_rows():  # nothing finished before (e.g. killed as Tune started)
            return
        if not allow_changed:
            raise RunError(f"--resume: {store.uri} does not record which study wrote its "
                           f"results (no {store.uri}/study.json): add --allow-changed to "
                           f"resume them as study '{name}' anyway")
        print(f"raycl: warning: resuming {store.uri} as study '{name}' without a record of "
              f"the study that wrote it (--allow-changed)", file=sys.stderr, flush=True)
        return
    changes = study_changes(stored, settings)
    if not changes:
        if stored.get("study_file_sha256") not in (None, settings.get("study_file_sha256")):
            print(f"raycl: note: the study file changed since {store.uri} was written; its "
                  f"settings did not", file=sys.stderr, flush=True)
        return
    what = "; ".join(map(str, changes))
    narrowing = [c for c in changes if not c.widening]
    if narrowing and allow_changed:
        raise RunError(f"--resume --allow-changed: {store.uri} holds trials of another study "
                       f"'{name}': {'; '.join(map(str, narrowing))} (--allow-changed accepts "
                       f"only a wider search: a larger num_samples, added seeds, confirm_seeds "
                       f"or arms, and nothing else changed)")
    if narrowing:
        raise RunError(f"--resume: {store.uri} holds results of another version of study "
                       f"'{name}': {what} (restore the study file, or run it into another "
                       f"--storage)")
    if not allow_changed:
        raise RunError(f"--resume: study '{name}' changed since {store.uri} was written: "
                       f"{what} (a wider search: add --allow-changed to run the new trials "
                       f"beside the old ones)")
    print(f"raycl: resuming study '{name}' with a wider search: {what}", file=sys.stderr,
          flush=True)


def _check_storage(store: ResultStore, name: str, storage: str, *, resume: bool,
                   smoke: bool) -> None:
    """Refuse to mix a new run with old results or to resume nothing; probe that the storage
    takes writes (before any trial: a study must not train for hours and fail to save)."""
    exists = store.has_results()
    if resume and not exists:
        raise RunError(f"--resume: no results of study '{name}' in {store.uri} "
                       f"to resume (run it without --resume first)")
    if exists and not resume:
        if not smoke:
            raise RunError(f"{store.uri} already holds results of study '{name}': "
                           f"add --resume to continue it, or pass another --storage")
        store.clear()  # a smoke check replaces the previous smoke check (in <storage>/smoke/)
    try:
        store.check_writable()
    except OSError as err:
        raise RunError(f"--storage {storage_label(storage)}: cannot write there: "
                       f"{storage_error_text(err)}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
