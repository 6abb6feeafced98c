"""Reading a study's Parquet results into pandas.

A study directory (``<storage>/<study name>/``, written by ``python -m raycl.study``) holds
``trials.parquet`` (one row per trial), ``matrix.parquet`` (the accuracy matrix in long form),
``curves.parquet`` (every reported metric after every experience) and, once the study has chosen
its configs, ``selection.parquet`` (one row per arm). Only ``trials.parquet`` is required here: a
study killed before any trial reported still has one. :mod:`raycl.study.schema` spells every
column.

Schema version 2 (what :func:`load_study` returns), for readers of the files with
``pd.read_parquet``:

* Every table starts with ``study, trial_id, trial_key, phase, arm, seed``. ``phase`` says which
  step of the selection protocol ran the trial: ``search`` (configs searched), ``confirm`` (each
  arm's chosen config rerun on fresh seeds), ``tune``/``final`` (two-phase protocols),
  ``plasticity``/``stability`` (per-experience candidates).
* Accuracy metrics exist once per split: ``valid_final_avg_accuracy`` (validation data, held out
  of each training experience: what configs are chosen on) and ``test_final_avg_accuracy`` (the
  test stream: what is reported); likewise ``*_avg_forgetting``, ``*_bwt``, ``*_fwt``,
  ``*_avg_accuracy``, ``*_stream_accuracy``, ``*_stream_loss`` and the per-experience
  ``test_acc_exp_003``/``valid_loss_exp_003``. Cost columns (``train_time_s``, ``eval_time_s``,
  ``peak_memory_mb``) have no split.
* ``matrix.parquet`` has a ``split`` column (``valid``/``test``) before ``trained_exp``: filter
  on it before pivoting. ``trials.parquet`` has a ``checkpoint`` column.
* ``selection.parquet``: per arm, the chosen config (``chosen_config`` JSON and ``param_<name>``
  columns), what it was chosen on (``selection_split``, ``selection_metric``,
  ``selection_value``) and the figures to report (``reported_metric``, ``reported_mean``,
  ``reported_std``, ``reported_n``, measured on the runs of ``reported_phase``), with its
  confidence interval (``reported_low``, ``reported_high``, computed as ``interval`` says, e.g.
  ``95% t``) and its ``verdict`` against the best arm and the baseline. A ``selection_split`` of
  ``test`` means the configs were chosen on the test data: those figures are optimistic.
* ``comparisons.parquet``: the paired comparisons behind the verdicts: every arm's reported runs
  against the best arm's and the baseline's over their shared seeds, Holm-corrected (columns
  ``study`` and :data:`raycl.study.stats.COMPARISON_COLUMNS`).
* ``study.json``: the resolved study (benchmark, model, optimizer, protocol, seeds, each arm's
  search space as text and the parameters it searches on a log scale, versions, the study file's
  hash); the same JSON is in each Parquet file's schema metadata (key ``raycl.study``), which is
  read when ``study.json`` is absent.

Version 1 tables (no phase, no split, unprefixed metrics measured on the test stream) are upgraded
on load: see :func:`upgrade_v1`. A newer version than this raycl knows is refused. A trials
table written before the ``node_id`` column existed (it has ``node_ip``) gets it, null, after
``node_ip``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from raycl.study.schema import (
    ACCURACY,
    ARM,
    CHOSEN_CONFIG,
    COMPARISONS_TABLE,
    EVAL_EXP,
    EXPERIENCE,
    LOSS,
    NODE_ID,
    NODE_IP,
    PHASE,
    SCHEMA_VERSION,
    SCHEMA_VERSION_COLUMN,
    SEARCH,
    SEED,
    SELECTION_HEAD,
    SELECTION_SPLIT,
    SELECTION_TABLE,
    SELECTION_TAIL,
    SPLIT,
    SPLIT_METRICS,
    SPLITS,
    STATUS,
    STUDY,
    TABLES,
    TEST,
    TRAINED_EXP,
    TRIAL_HEAD,
    TRIAL_ID,
    TRIAL_KEY,
    experience_column,
    split_column,
)

__all__ = ["KNOWN_VERSIONS", "REQUIRED_COLUMNS", "StudyResults", "concat_studies", "load_study",
           "table_version", "upgrade_v1"]

# TABLES (from the schema): the three trial tables of a study directory, in the order of
# StudyResults, whose fields are named after them; the selection table comes next, then the
# comparisons table.
_TRIALS, _MATRIX, _CURVES = TABLES
_SELECTION = SELECTION_TABLE
_COMPARISONS = COMPARISONS_TABLE
#: The DataFrame fields of :class:`StudyResults`, in order.
_FRAMES: tuple[str, ...] = (_TRIALS, _MATRIX, _CURVES, _SELECTION, _COMPARISONS)
# What StudyResults unpacks to (the four tables it held before comparisons and settings).
_UNPACKED: tuple[str, ...] = (_TRIALS, _MATRIX, _CURVES, _SELECTION)

#: The schema versions :func:`load_study` reads (version 1 is upgraded to version 2 on load).
KNOWN_VERSIONS: tuple[int, ...] = (1, SCHEMA_VERSION)

#: Columns each table needs for the analysis; anything else is carried along untouched.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    _TRIALS: (TRIAL_ID, ARM, STATUS),
    _MATRIX: (TRIAL_ID, TRAINED_EXP, EVAL_EXP, ACCURACY),
    _CURVES: (TRIAL_ID, EXPERIENCE),
    _SELECTION: (ARM, SELECTION_SPLIT, CHOSEN_CONFIG),
    _COMPARISONS: (ARM, "reference", "reference_kind"),
}

# Columns an empty table gets, so code downstream can select them without special cases.
_EMPTY_COLUMNS: dict[str, tuple[str, ...]] = {
    _MATRIX: (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, SEED, SPLIT, TRAINED_EXP, EVAL_EXP,
              ACCURACY, LOSS),
    _CURVES: (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, SEED, EXPERIENCE),
    _SELECTION: (*SELECTION_HEAD, *SELECTION_TAIL),
}


def _comparison_columns() -> tuple[str, ...]:
    # raycl.study.stats imports scipy: only when a comparisons table is needed.
    from raycl.study.stats import COMPARISON_COLUMNS

    return (STUDY, *COMPARISON_COLUMNS)


def _empty_comparisons() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in _comparison_columns()})


@dataclass(frozen=True, eq=False)
class StudyResults:
    """The tables of one or several studies, as DataFrames (empty when a file is absent), and
    their settings (``study.json``).

    Unpacks, indexes and iterates as the four tables ``(trials, matrix, curves, selection)``
    (what it held before ``comparisons`` and the settings were added), so code written as
    ``trials, matrix, curves, selection = load_study(path)`` keeps working; read the other
    fields by name.
    """

    trials: pd.DataFrame
    """One row per trial: phase, arm, seed, ``param_<name>`` columns, status, metrics, cost."""
    matrix: pd.DataFrame
    """Accuracy matrix in long form: one row per (trial, split, trained_exp, eval_exp)."""
    curves: pd.DataFrame
    """One row per (trial, experience reported) with every reported metric."""
    selection: pd.DataFrame
    """One row per arm: the chosen config and the figures to report (``selection.parquet``),
    with their confidence interval and verdict; empty, with the schema's columns, when the
    study has none (a version-1 study, or a study that has not chosen yet)."""
    comparisons: pd.DataFrame = field(default_factory=_empty_comparisons)
    """``comparisons.parquet``: every arm against the best arm and the baseline, paired over
    shared seeds and Holm-corrected (columns ``study`` + ``raycl.study.stats.
    COMPARISON_COLUMNS``); empty, with those columns, when the study has none."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The resolved study (``study.json``, or the Parquet files' ``raycl.study`` metadata):
    benchmark, model, optimizer, ``selection``, ``seeds``, ``confirm_seeds``, ``arms`` (each
    with ``space`` as text and ``log_scale``), ``versions``, ``study_file_sha256``... ``{}``
    when the study has none. With several studies loaded: the first study's; see
    :attr:`study_settings` for every study's."""
    study_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Every loaded study's settings by study name (the ``study`` column); a study without
    ``study.json`` is left out."""

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter(tuple(getattr(self, name) for name in _UNPACKED))

    def __len__(self) -> int:
        return len(_UNPACKED)

    def __getitem__(self, index: int | slice) -> Any:
        return tuple(self)[index]


def _empty(name: str) -> pd.DataFrame:
    if name == _COMPARISONS:
        return _empty_comparisons()
    return pd.DataFrame({c: pd.Series(dtype="object") for c in _EMPTY_COLUMNS[name]})


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _filesystem(directory: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a local path or URI, and the directory's path in it."""
    import pyarrow.fs

    if _is_uri(directory):
        fs, base = pyarrow.fs.FileSystem.from_uri(directory)
    else:
        fs = pyarrow.fs.LocalFileSystem()
        base = os.path.abspath(directory.removeprefix("file://"))
    return fs, base.rstrip("/")


def _read_arrow(directory: str, name: str) -> Any:
    """``<directory>/<name>.parquet`` as a pyarrow Table (local path or URI); None if absent."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    fs, base = _filesystem(directory)
    file_path = f"{base}/{name}.parquet"
    if fs.get_file_info(file_path).type != pyarrow.fs.FileType.File:
        return None
    return pq.read_table(file_path, filesystem=fs)


def _read_table(directory: str, name: str) -> pd.DataFrame | None:
    """Read ``<directory>/<name>.parquet`` from a local path or a pyarrow URI; None if absent."""
    table = _read_arrow(directory, name)
    return None if table is None else table.to_pandas()


# raycl.study.settings's SETTINGS_FILE and METADATA_KEY, spelled here because that module imports
# ray.tune's domain classes: ~10 s on a 2-core machine, in every notebook kernel and report, to
# read one JSON file. A test pins them to raycl.study.settings's.
SETTINGS_FILE = "study.json"
METADATA_KEY = b"raycl.study"


def _read_settings(directory: str, trials_metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The study's settings: ``study.json``, else the trials file's ``raycl.study`` metadata,
    else ``{}``. Raises ValueError when the JSON found is not an object."""
    import pyarrow.fs

    fs, base = _filesystem(directory)
    path = f"{base}/{SETTINGS_FILE}"
    source = f"{directory}/{SETTINGS_FILE}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as stream:
            text = stream.read().decode("utf-8")
    elif trials_metadata and METADATA_KEY in trials_metadata:
        text = trials_metadata[METADATA_KEY].decode("utf-8")
        source = f"{directory}/{_TRIALS}.parquet metadata {METADATA_KEY.decode()!r}"
    else:
        return {}
    try:
        settings = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{source} is not valid JSON ({error})") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(settings).__name__}")
    return settings


def _study_dir(path: str | os.PathLike[str]) -> str:
    text = os.fspath(path)
    # A path to one of the tables stands for its directory.
    if text.endswith(".parquet"):
        text = text.rsplit("/", 1)[0] if "/" in text else "."
    return text


def _check_columns(frame: pd.DataFrame, name: str, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS[name] if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}/{name}.parquet lacks required column(s) {missing}")


def _v1_metric_columns(frame: pd.DataFrame) -> list[str]:
    """The version-1 (unprefixed) split metric columns of a table."""
    return [c for c in frame.columns
            if c in SPLIT_METRICS or ((e := experience_column(c)) is not None and e[0] is None)]


def table_version(frame: pd.DataFrame) -> int:
    """The schema version a table was written with (the largest in its ``schema_version``
    column).

    A table without the column (written by hand) is version 1 when it has an unprefixed split
    metric (``final_avg_accuracy``) and no split-prefixed one, version 2 otherwise.
    """
    if SCHEMA_VERSION_COLUMN in frame.columns:
        versions = pd.to_numeric(frame[SCHEMA_VERSION_COLUMN], errors="coerce").dropna()
        if len(versions):
            return int(versions.max())
    prefixed = any(c.startswith(tuple(f"{s}_" for s in SPLITS)) for c in frame.columns)
    return 1 if _v1_metric_columns(frame) and not prefixed else SCHEMA_VERSION


def _insert_head_column(frame: pd.DataFrame, column: str, value: object,
                        after: Sequence[str]) -> None:
    """Insert ``column`` (filled with ``value``) right after the last of ``after`` it has."""
    present = [frame.columns.get_loc(c) for c in after if c in frame.columns]
    position = max(present) + 1 if present else 0
    frame.insert(int(position), column, value)


def upgrade_v1(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """A version-1 table in version-2 layout (a new frame; ``frame`` is left as it is).

    Version 1 measured every metric on the test stream and had one phase. The upgrade:

    * every split metric column named without a split (``final_avg_accuracy``, ``avg_accuracy``,
      ``stream_accuracy``, ``stream_loss``, ``avg_forgetting``, ``bwt``, ``fwt``,
      ``acc_exp_NNN``, ``loss_exp_NNN``) is renamed to its test column
      (``test_final_avg_accuracy``, ``test_acc_exp_003``, ...);
    * a ``phase`` column, ``search`` for every row, is added after ``trial_key`` (the head of
      every version-2 table);
    * the matrix gets ``split`` = ``test`` before ``trained_exp``;
    * ``schema_version`` becomes 2 (the layout the frame now has); ``frame.attrs`` records
      ``upgraded_from`` = 1.
    """
    upgraded = frame.rename(columns={c: split_column(TEST, c) for c in _v1_metric_columns(frame)})
    if PHASE not in upgraded.columns:
        _insert_head_column(upgraded, PHASE, SEARCH, TRIAL_HEAD[:TRIAL_HEAD.index(PHASE)])
    if table == _MATRIX and SPLIT not in upgraded.columns:
        _insert_head_column(upgraded, SPLIT, TEST, TRIAL_HEAD)
    if SCHEMA_VERSION_COLUMN in upgraded.columns:
        upgraded[SCHEMA_VERSION_COLUMN] = np.int64(SCHEMA_VERSION)
    upgraded.attrs["upgraded_from"] = 1
    return upgraded


def _to_current(frame: pd.DataFrame, name: str, source: str) -> pd.DataFrame:
    """``frame`` in the current layout: version 2 as is, version 1 upgraded, others refused."""
    version = table_version(frame)
    if version not in KNOWN_VERSIONS:
        known = " and ".join(map(str, KNOWN_VERSIONS))
        raise ValueError(f"{source}/{name}.parquet has schema_version {version}, which this "
                         f"raycl does not know (it reads versions {known}): update raycl")
    if version == 1:
        return upgrade_v1(frame, name)
    # Hand-made version-2 frames may lack the phase or split; the analysis filters on both.
    if PHASE not in frame.columns and name != _SELECTION:
        _insert_head_column(frame, PHASE, SEARCH, TRIAL_HEAD[:TRIAL_HEAD.index(PHASE)])
    if name == _MATRIX and SPLIT not in frame.columns:
        _insert_head_column(frame, SPLIT, TEST, TRIAL_HEAD)
    return frame


def _load_one(path: str | os.PathLike[str]) -> StudyResults:
    directory = _study_dir(path)
    arrow = _read_arrow(directory, _TRIALS)
    if arrow is None:
        raise FileNotFoundError(f"no {_TRIALS}.parquet in {directory!r}: not a study directory")
    trials = arrow.to_pandas()
    _check_columns(trials, _TRIALS, directory)
    tables = {_TRIALS: _to_current(trials, _TRIALS, directory)}
    if NODE_IP in tables[_TRIALS].columns and NODE_ID not in tables[_TRIALS].columns:
        # written before node_id was added (version 2 still): null, where it now goes
        _insert_head_column(tables[_TRIALS], NODE_ID, None, [NODE_IP])
    for name in (_MATRIX, _CURVES, _SELECTION, _COMPARISONS):
        frame = _read_table(directory, name)
        if frame is None:
            frame = _empty(name)
        else:
            _check_columns(frame, name, directory)
            if name != _COMPARISONS:  # derived from the selection's runs: no schema_version
                frame = _to_current(frame, name, directory)
        tables[name] = frame
    for name in (_SELECTION, _COMPARISONS):  # a partial table still has every column
        frame = tables[name]
        columns = _EMPTY_COLUMNS[name] if name == _SELECTION else _comparison_columns()
        for column in columns:
            if column not in frame.columns:
                frame[column] = pd.Series(dtype="object", index=frame.index)
    # Older or hand-made files may lack the study or seed column; the analysis groups on both.
    # (a URI's query, e.g. ?endpoint_override=..., configures its file system: not a name)
    study_name = os.path.basename(directory.split("?")[0].rstrip("/")) or directory
    for name, frame in tables.items():
        if STUDY not in frame.columns:
            frame.insert(0, STUDY, study_name)
        elif name in (_SELECTION, _COMPARISONS) and frame[STUDY].isna().any():
            frame[STUDY] = frame[STUDY].fillna(study_name)
        if SEED not in frame.columns and name in (_TRIALS, _MATRIX, _CURVES):
            frame[SEED] = 0
    settings = _read_settings(directory, arrow.schema.metadata)
    names = tables[_TRIALS][STUDY].dropna().astype(str).unique()
    # The tables' study name (what arm labels and the other tables use) keys the settings.
    key = str(names[0]) if len(names) == 1 else str(settings.get("name", study_name))
    return StudyResults(**tables, settings=settings,
                        study_settings={key: settings} if settings else {})


def concat_studies(results: Iterable[StudyResults]) -> StudyResults:
    """Concatenate several studies' tables row-wise (columns one lacks become missing values).

    ``settings`` is the first study's; ``study_settings`` holds every study's by name.
    """
    parts = list(results)
    if not parts:
        raise ValueError("concat_studies needs at least one study")
    if len(parts) == 1:
        return parts[0]
    frames = {
        name: pd.concat([getattr(p, name) for p in parts if len(getattr(p, name))] or
                        [getattr(parts[0], name)], ignore_index=True)
        for name in _FRAMES
    }
    by_study: dict[str, dict[str, Any]] = {}
    for part in parts:
        by_study.update(part.study_settings)
    return StudyResults(**frames, settings=parts[0].settings, study_settings=by_study)


def load_study(path_or_uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
               ) -> StudyResults:
    """Load a study directory's Parquet tables (or several studies' tables, concatenated).

    ``path_or_uri`` is a study directory (``<storage>/<study name>``), one of its
    ``.parquet`` files, a URI pyarrow understands (``s3://bucket/results/ewc_vs_si``), or a list of
    any of these. A local directory without ``trials.parquet`` whose subdirectories are studies
    (a ``--storage`` root) loads all of them. Missing ``matrix``/``curves``/``selection``/
    ``comparisons`` files give empty tables; a study without ``study.json`` (nor the Parquet
    metadata copy) gives ``settings == {}``. With several studies, ``settings`` is the first
    study's and ``study_settings`` maps each study's name to its settings.

    Tables of schema version 2 are returned as they are; version 1 tables are upgraded to
    version 2 names (:func:`upgrade_v1`). Raises FileNotFoundError when no study is found, and
    ValueError when a table lacks a column the analysis needs or has a schema version this raycl
    does not know, or when ``study.json`` is not a JSON object.
    """
    if isinstance(path_or_uri, (str, os.PathLike)):
        paths: list[str | os.PathLike[str]] = [path_or_uri]
    else:
        paths = list(path_or_uri)
    loaded: list[StudyResults] = []
    for path in paths:
        text = os.fspath(path)
        if not _is_uri(text) and os.path.isdir(text) and not os.path.exists(
                os.path.join(text, f"{_TRIALS}.parquet")):
            subdirs = sorted(
                os.path.join(text, d) for d in os.listdir(text)
                if os.path.isfile(os.path.join(text, d, f"{_TRIALS}.parquet")))
            if subdirs:
                loaded.extend(_load_one(d) for d in subdirs)
                continue
        loaded.append(_load_one(path))
    return concat_studies(loaded)
