"""Reading a study's Parquet results into pandas.

A study directory (``<storage>/<study name>/``, written by ``python -m raycl.study``) holds three
tables: ``trials.parquet`` (one row per trial), ``matrix.parquet`` (the accuracy matrix in long
form) and ``curves.parquet`` (every reported metric after every experience). Only
``trials.parquet`` is required here: a study killed before any trial reported still has one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import pandas as pd

#: The three table names of a study directory, in the order of :class:`StudyResults`.
TABLES: tuple[str, ...] = ("trials", "matrix", "curves")

#: Columns each table needs for the analysis; anything else is carried along untouched.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "trials": ("trial_id", "arm", "status"),
    "matrix": ("trial_id", "trained_exp", "eval_exp", "accuracy"),
    "curves": ("trial_id", "experience"),
}

# Columns an empty table gets, so code downstream can select them without special cases.
_EMPTY_COLUMNS: dict[str, tuple[str, ...]] = {
    "matrix": ("study", "trial_id", "arm", "seed", "trained_exp", "eval_exp", "accuracy", "loss"),
    "curves": ("study", "trial_id", "arm", "seed", "experience"),
}


class StudyResults(NamedTuple):
    """The tables of one or several studies, as DataFrames (empty when a file is absent)."""

    trials: pd.DataFrame
    """One row per trial: arm, seed, ``param_<name>`` columns, status, metrics, cost."""
    matrix: pd.DataFrame
    """Accuracy matrix in long form: one row per (trial, trained_exp, eval_exp)."""
    curves: pd.DataFrame
    """One row per (trial, experience reported) with every reported metric."""


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


def _load_one(path: str | os.PathLike[str]) -> StudyResults:
    directory = _study_dir(path)
    trials = _read_table(directory, "trials")
    if trials is None:
        raise FileNotFoundError(f"no trials.parquet in {directory!r}: not a study directory")
    _check_columns(trials, "trials", directory)
    tables = {"trials": trials}
    for name in ("matrix", "curves"):
        frame = _read_table(directory, name)
        if frame is None:
            frame = pd.DataFrame({c: pd.Series(dtype="object") for c in _EMPTY_COLUMNS[name]})
        else:
            _check_columns(frame, name, directory)
        tables[name] = frame
    # Older or hand-made files may lack the study or seed column; the analysis groups on both.
    study_name = os.path.basename(directory.rstrip("/")) or directory
    for frame in tables.values():
        if "study" not in frame.columns:
            frame.insert(0, "study", study_name)
        if "seed" not in frame.columns:
            frame["seed"] = 0
    return StudyResults(**tables)


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
        for name in TABLES
    ))


def load_study(path_or_uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
               ) -> StudyResults:
    """Load a study directory's Parquet tables (or several studies' tables, concatenated).

    ``path_or_uri`` is a study directory (``<storage>/<study name>``), one of its
    ``.parquet`` files, a URI pyarrow understands (``s3://bucket/results/ewc_vs_si``), or a list of
    any of these. A local directory without ``trials.parquet`` whose subdirectories are studies
    (a ``--storage`` root) loads all of them. Missing ``matrix``/``curves`` files give empty tables.

    Raises FileNotFoundError when no study is found and ValueError when a table lacks a column
    the analysis needs.
    """
    if isinstance(path_or_uri, (str, os.PathLike)):
        paths: list[str | os.PathLike[str]] = [path_or_uri]
    else:
        paths = list(path_or_uri)
    loaded: list[StudyResults] = []
    for path in paths:
        text = os.fspath(path)
        if not _is_uri(text) and os.path.isdir(text) and not os.path.exists(
                os.path.join(text, "trials.parquet")):
            subdirs = sorted(
                os.path.join(text, d) for d in os.listdir(text)
                if os.path.isfile(os.path.join(text, d, "trials.parquet")))
            if subdirs:
                loaded.extend(_load_one(d) for d in subdirs)
                continue
        loaded.append(_load_one(path))
    return concat_studies(loaded)
