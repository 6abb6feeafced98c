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
  ``reported_std``, ``reported_n``, measured on the runs of ``reported_phase``). A
  ``selection_split`` of ``test`` means the configs were chosen on the test data: those figures
  are optimistic.

Version 1 tables (no phase, no split, unprefixed metrics measured on the test stream) are upgraded
on load: see :func:`upgrade_v1`. A newer version than this raycl knows is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from raycl.study.schema import (
    ACCURACY,
    ARM,
    CHOSEN_CONFIG,
    EVAL_EXP,
    EXPERIENCE,
    LOSS,
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
# StudyResults, whose fields are named after them; the selection table comes last.
_TRIALS, _MATRIX, _CURVES = TABLES
_SELECTION = SELECTION_TABLE

#: The schema versions :func:`load_study` reads (version 1 is upgraded to version 2 on load).
KNOWN_VERSIONS: tuple[int, ...] = (1, SCHEMA_VERSION)

#: Columns each table needs for the analysis; anything else is carried along untouched.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    _TRIALS: (TRIAL_ID, ARM, STATUS),
    _MATRIX: (TRIAL_ID, TRAINED_EXP, EVAL_EXP, ACCURACY),
    _CURVES: (TRIAL_ID, EXPERIENCE),
    _SELECTION: (ARM, SELECTION_SPLIT, CHOSEN_CONFIG),
}

# Columns an empty table gets, so code downstream can select them without special cases.
_EMPTY_COLUMNS: dict[str, tuple[str, ...]] = {
    _MATRIX: (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, SEED, SPLIT, TRAINED_EXP, EVAL_EXP,
              ACCURACY, LOSS),
    _CURVES: (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, ARM, SEED, EXPERIENCE),
    _SELECTION: (*SELECTION_HEAD, *SELECTION_TAIL),
}


class StudyResults(NamedTuple):
    """The tables of one or several studies, as DataFrames (empty when a file is absent)."""

    trials: pd.DataFrame
    """One row per trial: phase, arm, seed, ``param_<name>`` columns, status, metrics, cost."""
    matrix: pd.DataFrame
    """Accuracy matrix in long form: one row per (trial, split, trained_exp, eval_exp)."""
    curves: pd.DataFrame
    """One row per (trial, experience reported) with every reported metric."""
    selection: pd.DataFrame
    """One row per arm: the chosen config and the figures to report (``selection.parquet``);
    empty, with the schema's columns, when the study has none (a version-1 study, or a study
    that has not chosen yet)."""


def _empty(name: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in _EMPTY_COLUMNS[name]})


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _read_table(directory: str, name: str) -> pd.DataFrame | None:
    """Read ``<directory>/<name>.parquet`` from a local path or a pyarrow URI; None if absent."""
    import pyarrow.fs
    import pyarrow.parquet as pq

    if _is_uri(directory):
        fs, base = pyarrow.fs.FileSystem.from_uri(directory)
    else:
        fs = pyarrow.fs.LocalFileSystem()
        base = os.path.abspath(directory.removeprefix("file://"))
    file_path = f"{base.rstrip('/')}/{name}.parquet"
    if fs.get_file_info(file_path).type != pyarrow.fs.FileType.File:
        return None
    return pq.read_table(file_path, filesystem=fs).to_pandas()


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
    trials = _read_table(directory, _TRIALS)
    if trials is None:
        raise FileNotFoundError(f"no {_TRIALS}.parquet in {directory!r}: not a study directory")
    _check_columns(trials, _TRIALS, directory)
    tables = {_TRIALS: _to_current(trials, _TRIALS, directory)}
    for name in (_MATRIX, _CURVES, _SELECTION):
        frame = _read_table(directory, name)
        if frame is None:
            frame = _empty(name)
        else:
            _check_columns(frame, name, directory)
            frame = _to_current(frame, name, directory)
        tables[name] = frame
    selection = tables[_SELECTION]
    for column in _EMPTY_COLUMNS[_SELECTION]:  # a partial selection table still has every column
        if column not in selection.columns:
            selection[column] = pd.Series(dtype="object", index=selection.index)
    # Older or hand-made files may lack the study or seed column; the analysis groups on both.
    study_name = os.path.basename(directory.rstrip("/")) or directory
    for name, frame in tables.items():
        if STUDY not in frame.columns:
            frame.insert(0, STUDY, study_name)
        elif name == _SELECTION and frame[STUDY].isna().any():
            frame[STUDY] = frame[STUDY].fillna(study_name)
        if SEED not in frame.columns and name != _SELECTION:
            frame[SEED] = 0
    return StudyResults(**{name: tables[name] for name in StudyResults._fields})


def concat_studies(results: Iterable[StudyResults]) -> StudyResults:
    """Concatenate several studies' tables row-wise (columns one lacks become missing values)."""
    parts = list(results)
    if not parts:
        raise ValueError("concat_studies needs at least one study")
    if len(parts) == 1:
        return parts[0]
    return StudyResults(*(
        pd.concat([getattr(p, name) for p in parts if len(getattr(p, name))] or
                  [getattr(parts[0], name)], ignore_index=True)
        for name in StudyResults._fields
    ))


def load_study(path_or_uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
               ) -> StudyResults:
    """Load a study directory's Parquet tables (or several studies' tables, concatenated).

    ``path_or_uri`` is a study directory (``<storage>/<study name>``), one of its
    ``.parquet`` files, a URI pyarrow understands (``s3://bucket/results/ewc_vs_si``), or a list of
    any of these. A local directory without ``trials.parquet`` whose subdirectories are studies
    (a ``--storage`` root) loads all of them. Missing ``matrix``/``curves``/``selection`` files
    give empty tables.

    Tables of schema version 2 are returned as they are; version 1 tables are upgraded to
    version 2 names (:func:`upgrade_v1`). Raises FileNotFoundError when no study is found, and
    ValueError when a table lacks a column the analysis needs or has a schema version this raycl
    does not know.
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
