"""A study's results as three Parquet tables under ``<storage>/<study name>/``.

* ``trials.parquet``: one row per trial (:data:`TRIAL_COLUMNS`, one ``param_<name>`` column per
  searched parameter between ``seed`` and ``status``).
* ``matrix.parquet``: the accuracy matrix in long form, one row per (trial, trained_exp,
  eval_exp) (:data:`MATRIX_COLUMNS`).
* ``curves.parquet``: one row per (trial, experience reported) with every reported metric
  (:data:`CURVE_ID_COLUMNS`, then the metrics).

The driver holds the trials and curves rows in memory keyed by ``trial_key`` (stable across
runs, unlike Ray's ``trial_id``), so a trial that is rerun replaces its rows instead of adding new
ones, and rewrites the files as trials finish. The matrix rows are built from the curves rows
(each holds its row of the matrix as ``acc_exp_*`` / ``loss_exp_*``) when the files are written,
and the memory Arrow used for a write is handed back after it: the driver holds about 2 KB per
reported experience and nothing per write (``benchmarks/bench_load.py``).

Each file is written to a temporary name in the same directory and renamed over the old one, so
a reader (or a driver killed mid-write) never sees a torn file; on object stores (``s3://``) the
single PUT of an object is atomic already. ``storage`` is a local path or any URI pyarrow
understands.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "CURVE_ID_COLUMNS",
    "MATRIX_COLUMNS",
    "SCHEMA_VERSION",
    "TRIAL_COLUMNS",
    "ResultStore",
    "resolve_storage",
]

#: Version of the three tables' layout; bumped when a column changes meaning or type.
SCHEMA_VERSION = 1

_TRIAL_HEAD = ("study", "trial_id", "trial_key", "arm", "seed")
_TRIAL_TAIL = ("status", "error", "experiences_done", "final_avg_accuracy", "avg_forgetting",
               "bwt", "fwt", "train_time_s", "peak_memory_mb", "device", "gpu_ids", "node_ip",
               "started_at", "finished_at", "schema_version")
#: trials.parquet columns, with ``param_<name>`` columns between the head and the tail.
TRIAL_COLUMNS: tuple[str, ...] = _TRIAL_HEAD + _TRIAL_TAIL
#: matrix.parquet columns.
MATRIX_COLUMNS: tuple[str, ...] = ("study", "trial_id", "trial_key", "arm", "seed",
                                   "trained_exp", "eval_exp", "accuracy", "loss",
                                   "schema_version")
#: curves.parquet leading columns; every reported metric follows, then schema_version.
CURVE_ID_COLUMNS: tuple[str, ...] = ("study", "trial_id", "trial_key", "arm", "seed",
                                     "experience", "training_iteration")
# Reported metrics in the order curves.parquet shows them (acc/loss per experience last).
_CURVE_METRICS = ("avg_accuracy", "stream_accuracy", "stream_loss", "final_avg_accuracy",
                  "avg_forgetting", "bwt", "fwt", "train_time_s", "eval_time_s",
                  "peak_memory_mb", "resumed_from", "device", "gpu_ids", "node_ip",
                  "device_note", "checkpoint_note")
_INT_COLUMNS = {"seed", "experiences_done", "trained_exp", "eval_exp", "experience",
                "training_iteration", "resumed_from", "schema_version"}
_STR_COLUMNS = {"study", "trial_id", "trial_key", "arm", "status", "error", "device",
                "gpu_ids", "node_ip", "device_note", "checkpoint_note"}
_TIME_COLUMNS = {"started_at", "finished_at"}
_TABLES = ("trials", "matrix", "curves")


def resolve_storage(storage: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, URI for Ray) of a storage location.

    A plain path is made absolute on the local filesystem; ``s3://``, ``gs://``, ``file://`` ...
    go through ``pyarrow.fs.FileSystem.from_uri``.
    """
    text = os.fspath(storage)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        if isinstance(fs, pafs.LocalFileSystem):
            return fs, path, path
        return fs, path.rstrip("/"), text.split("?")[0].rstrip("/")
    path = os.path.abspath(os.path.expanduser(text))
    return pafs.LocalFileSystem(), path, path


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


class ResultStore:
    """The Parquet tables of one study, held in memory and rewritten atomically.

    Args:
        storage: the ``--storage`` root (local path or URI).
        study: the study name; files go to ``<storage>/<study>/``.
    """

    def __init__(self, storage: str | os.PathLike[str], study: str) -> None:
        if not study or "/" in study or "\\" in study or study in (".", "..") or \
                study.startswith("."):
            # The study folder must be a child of the storage root, never the root or above it.
            raise ValueError(f"study name {study!r} would leave the storage directory")
        self.study = study
        fs, root, root_uri = resolve_storage(storage)
        self.fs = fs
        self.dir = f"{root}/{study}"
        #: Where this study lives, as a path or URI (what ``raycl.report`` takes).
        self.uri = f"{root_uri}/{study}"
        self._trials: dict[str, dict[str, Any]] = {}
        #: trial_key -> experience -> curves row
        self._curves: dict[str, dict[int, dict[str, Any]]] = {}

    # ---- locations --------------------------------------------------------------------------
    @property
    def ray_storage(self) -> str:
        """Ray Tune's ``storage_path`` for this study: ``<storage>/<study>/_ray``."""
        return f"{self.uri}/_ray"

    def path(self, table: str) -> str:
        """Where ``<table>.parquet`` lives (path or URI)."""
        return f"{self.uri}/{table}.parquet"

    def _fs_path(self, table: str) -> str:
        return f"{self.dir}/{table}.parquet"

    def _exists(self, fs_path: str) -> bool:
        return self.fs.get_file_info(fs_path).type != pafs.FileType.NotFound

    def has_results(self) -> bool:
        """True when a run of this study started here (results or Ray's experiment folder)."""
        return self._exists(self._fs_path("trials")) or self._exists(f"{self.dir}/_ray")

    def clear(self) -> None:
        """Delete this study's folder (used for ``--smoke`` reruns only)."""
        if self._exists(self.dir):
            self.fs.delete_dir(self.dir)

    # ---- rows -------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the existing tables (if any) into memory, so a resumed run keeps their rows."""
        self.remove_stale_temporaries()
        frames = {}
        for table in ("trials", "curves"):  # the matrix is rebuilt from the curves
            path = self._fs_path(table)
            frames[table] = (pq.read_table(path, filesystem=self.fs).to_pandas()
                             if self._exists(path) else None)
        for row in _records(frames["trials"]):
            self._trials[row["trial_key"]] = row
        for row in _records(frames["curves"]):
            self._curves.setdefault(row["trial_key"], {})[int(row["experience"])] = row

    def done_keys(self) -> set[str]:
        """Keys of the trials that finished (status TERMINATED)."""
        return {k for k, r in self._trials.items() if r.get("status") == "TERMINATED"}

    def trial_rows(self) -> list[dict[str, Any]]:
        """The trials rows held now."""
        return list(self._trials.values())

    def forget_reports(self, trial_key: str) -> None:
        """Drop a trial's curves and matrix rows (it is starting over: rows of an interrupted
        earlier run must not outlive the new run, which may stop sooner)."""
        self._curves.pop(trial_key, None)

    def add_report(self, trial: Mapping[str, Any], trial_id: str,
                   metrics: Mapping[str, Any]) -> None:
        """Record one report of a trial: its curves row, which holds its row of the accuracy
        matrix too."""
        ident = self._ident(trial, trial_id)
        exp = int(metrics["experience"])
        curve = {**ident, "experience": exp,
                 "training_iteration": int(metrics.get("training_iteration", exp + 1))}
        curve.update({k: _plain(v) for k, v in metrics.items()
                      if k in _CURVE_METRICS or k.startswith(("acc_exp_", "loss_exp_"))})
        self._curves.setdefault(ident["trial_key"], {})[exp] = curve

    def set_trial(self, trial: Mapping[str, Any], trial_id: str, status: str,
                  metrics: Mapping[str, Any], *, error: str | None = None,
                  started_at: pd.Timestamp | None = None,
                  finished_at: pd.Timestamp | None = None) -> None:
        """Record (or replace) the trials row of a trial from its last reported metrics."""
        row = self._ident(trial, trial_id)
        row.update({f"param_{k}": _plain(v) for k, v in trial["params"].items()})
        done = metrics.get("experience")
        row.update({
            "status": status,
            "error": error,
            "experiences_done": 0 if done is None else int(done) + 1,
            **{k: _plain(metrics.get(k, math.nan)) for k in
               ("final_avg_accuracy", "avg_forgetting", "bwt", "fwt", "train_time_s",
                "peak_memory_mb")},
            **{k: metrics.get(k) for k in ("device", "gpu_ids", "node_ip")},
            "started_at": started_at,
            "finished_at": finished_at,
        })
        self._trials[row["trial_key"]] = row

    def _ident(self, trial: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
        return {"study": self.study, "trial_id": str(trial_id), "trial_key": trial["trial_key"],
                "arm": trial["arm"], "seed": int(trial["seed"])}

    # ---- tables -----------------------------------------------------------------------------
    def frames(self) -> dict[str, pd.DataFrame]:
        """The three tables as DataFrames, columns in their documented order."""
        trials = list(self._trials.values())
        params = sorted({k for r in trials for k in r if k.startswith("param_")})
        curve_rows = [r for rows in self._curves.values() for r in rows.values()]
        present = {k for r in curve_rows for k in r}
        per_exp = sorted(k for k in present if k.startswith(("acc_exp_", "loss_exp_")))
        curve_cols = (list(CURVE_ID_COLUMNS) + [k for k in _CURVE_METRICS if k in present]
                      + per_exp + ["schema_version"])
        return {
            "trials": _frame(trials, [*_TRIAL_HEAD, *params, *_TRIAL_TAIL]),
            "matrix": _frame(sorted(_matrix_rows(curve_rows), key=_matrix_order),
                             list(MATRIX_COLUMNS)),
            "curves": _frame(sorted(curve_rows, key=_curve_order), curve_cols),
        }

    def write(self) -> dict[str, str]:
        """Rewrite the three files atomically; returns their paths.

        A write that fails (disk full, storage gone) raises ``OSError`` and leaves every file
        as the last complete write left it (the partial temporary file is removed); the rows
        stay in memory, so a later write can still save them.
        """
        self.fs.create_dir(self.dir, recursive=True)
        for table, frame in self.frames().items():
            data = pa.Table.from_pandas(frame, preserve_index=False)
            final = self._fs_path(table)
            if isinstance(self.fs, pafs.LocalFileSystem):
                tmp = f"{self.dir}/.{table}.parquet.tmp-{os.getpid()}"
                try:
                    pq.write_table(data, tmp, filesystem=self.fs)
                    self.fs.move(tmp, final)  # rename(2): atomic on one filesystem
                except BaseException:
                    self._remove(tmp)
                    raise
            else:
                pq.write_table(data, final, filesystem=self.fs)
            del data
        # Arrow's allocator keeps freed pages for reuse; tables grow as trials finish, so
        # without this the driver's memory would grow with each write's high-water mark.
        pa.default_memory_pool().release_unused()
        return {t: self.path(t) for t in _TABLES}

    def _remove(self, fs_path: str) -> None:
        try:
            self.fs.delete_file(fs_path)
        except (OSError, FileNotFoundError):
            pass

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files a killed driver left half-written (never the tables)."""
        if not isinstance(self.fs, pafs.LocalFileSystem) or not self._exists(self.dir):
            return
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            if info.base_name.startswith(".") and ".parquet.tmp-" in info.base_name:
                self._remove(info.path)

    def check_writable(self) -> None:
        """Raise ``OSError`` unless a file can be created (and removed) in the storage root.

        Creates the storage root if needed, never the study's folder."""
        root = self.dir.rpartition("/")[0] or "/"
        probe = f"{root}/.raycl-write-probe-{os.getpid()}"
        self.fs.create_dir(root, recursive=True)
        with self.fs.open_output_stream(probe) as f:
            f.write(b"raycl")
        self.fs.delete_file(probe)


def _records(frame: pd.DataFrame | None) -> Iterable[dict[str, Any]]:
    if frame is None:
        return []
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def _matrix_rows(curve_rows: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """The accuracy-matrix rows held in curves rows (one per ``acc_exp_<j>`` present)."""
    for curve in curve_rows:
        ident = {k: curve[k] for k in _TRIAL_HEAD}  # what _ident put in every row
        j = 0
        while curve.get(f"acc_exp_{j:03d}") is not None:
            yield {**ident, "trained_exp": curve["experience"], "eval_exp": j,
                   "accuracy": curve[f"acc_exp_{j:03d}"],
                   "loss": curve.get(f"loss_exp_{j:03d}", math.nan)}
            j += 1


def _matrix_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["arm"], row["trial_key"], row["trained_exp"], row["eval_exp"])


def _curve_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row["arm"], row["trial_key"], row["experience"])


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with ``columns`` in order and stable dtypes."""
    data = {}
    for col in columns:
        values = [SCHEMA_VERSION if col == "schema_version" else _missing_to_none(r.get(col))
                  for r in rows]
        data[col] = _column(col, values)
    return pd.DataFrame(data, columns=columns)


def _missing_to_none(value: Any) -> Any:
    value = _plain(value)
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _column(col: str, values: list[Any]) -> pd.Series:
    """One column with the dtype its name calls for (param columns: from their values)."""
    present = [v for v in values if v is not None]
    if col in _TIME_COLUMNS:
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True))
    if col in _STR_COLUMNS:
        return pd.Series([None if v is None else str(v) for v in values], dtype=object)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    if col in _INT_COLUMNS or (col.startswith("param_") and present and ints):
        # Int64 keeps integer parameters integers where other arms leave the column empty.
        return pd.Series(values, dtype="Int64" if None in values else "int64")
    if col.startswith("param_") and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype=object)  # strings and booleans
    return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
