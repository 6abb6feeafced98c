"""A study's results as three Parquet tables under ``<storage>/<study name>/``.

* ``trials.parquet``: one row per trial, one ``param_<name>`` column per searched parameter
  between ``seed`` and ``status``.
* ``matrix.parquet``: the accuracy matrix in long form, one row per (trial, trained_exp,
  eval_exp).
* ``curves.parquet``: one row per (trial, experience reported) with every reported metric.

Their columns are declared in :mod:`raycl.study.schema`.

The driver holds the trials and curves rows in memory keyed by ``trial_key`` (stable across
runs, unlike Ray's ``trial_id``), so a trial that is rerun replaces its rows instead of adding new
ones, and rewrites the files as trials finish. The matrix rows are built from the curves rows
(each holds its row of the matrix as ``acc_exp_*`` / ``loss_exp_*``) when the files are written,
and the memory Arrow used for a write is handed back after it: the driver holds about 2 KB per
reported experience and nothing per write (``bench/bench_load.py``).

Each file is written to a temporary name in the same directory and renamed over the old one, so
a reader (or a driver killed mid-write) never sees a torn file; on object stores (``s3://``) the
single PUT of an object is atomic already. ``storage`` is a local path or any URI pyarrow
understands.

A run holds the study folder's :class:`StudyLock` (``<study dir>/.lock``) from
``raycl.study.plan.prepare_run`` to its end, so two runs never write one study's files at once.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raycl.study.schema import (
    ACCURACY,
    ARM,
    CHECKPOINT,
    CONFIG,
    CURVE_ID_COLUMNS,
    CURVE_METRICS,
    ERROR,
    EVAL_EXP,
    EXPERIENCE,
    EXPERIENCES_DONE,
    FINISHED_AT,
    INFO_FIELDS,
    INT_COLUMNS,
    LOSS,
    MATRIX_COLUMNS,
    SCHEMA_VERSION,
    SCHEMA_VERSION_COLUMN,
    SPLIT,
    STARTED_AT,
    STATUS,
    STR_COLUMNS,
    TERMINATED,
    TIME_COLUMNS,
    TRAINED_EXP,
    TRAINING_ITERATION,
    TRIAL_HEAD,
    TRIAL_KEY,
    TRIAL_METRICS,
    TRIAL_TAIL,
    experience_column,
    is_param_column,
    loss_column,
    param_column,
)
from raycl.study.settings import METADATA_KEY, SETTINGS_FILE
from raycl.study.spec import TrialSpec

__all__ = ["ERRORS_FOLDER", "LOCK_FILE", "LOCK_REFRESH_S", "LOCK_SETTLE_S", "LOCK_STALE_AFTER_S",
           "SMOKE_FOLDER", "STORAGE_RETRY_S", "ResultStore", "StorageError", "StudyLock",
           "StudyLocked", "process_alive", "resolve_storage", "retry_storage", "scrub",
           "storage_error_text", "storage_label", "storage_retry_s", "transient_storage_error"]

#: The folder under the storage root that holds ``--smoke`` checks (``<storage>/smoke/<name>/``);
#: no study may be named so (the loader refuses it), so a check never replaces a study's files.
SMOKE_FOLDER = "smoke"
#: Ray Tune's checkpoint folders inside a trial's folder.
_CHECKPOINT_FOLDER = re.compile(r"^checkpoint_(\d+)$")
#: Subfolder of a study's folder holding the full error text of each failed trial.
ERRORS_FOLDER = "errors"
#: The lock file of a study folder, held by the run writing it.
LOCK_FILE = ".lock"
#: A lock written on another host is stale once it has not been refreshed for this long (its
#: holder refreshes it every :data:`LOCK_REFRESH_S`); on this host, once its process is gone.
LOCK_STALE_AFTER_S = 600.0
#: How often a run refreshes its lock (the lock file's modification time).
LOCK_REFRESH_S = 60.0
#: Object stores: how long a run waits after writing its lock before reading it back.
LOCK_SETTLE_S = 1.0


#: URI schemes a storage location may use (what ``pyarrow.fs.FileSystem.from_uri`` opens).
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
#: Schemes that name a bucket (or container) right after ``://``.
_BUCKET_SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss")


class StorageError(ValueError):
    """A storage location that cannot be used, in one line that names it."""


def storage_label(storage: str | os.PathLike[str]) -> str:
    """``storage`` as raycl prints and stores it: a URI without its query
    (``?endpoint_override=...&scheme=http``) or user info (``key:secret@``); a path as it
    is. The query configures the file system (endpoint, scheme); it may name a private
    endpoint, so no line raycl prints and no file it writes holds it."""
    text = os.fspath(storage)
    if "://" not in text:
        return text
    scheme, _, rest = text.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    head, sep, tail = rest.partition("/")
    return f"{scheme}://{head.rpartition('@')[2] if scheme.lower() == 's3' else head}{sep}{tail}"


#: Endpoints named in the queries of the storage URIs this process opened (``scrub`` hides them).
_ENDPOINTS: set[str] = set()
#: Environment variables whose values never appear in what raycl prints or stores.
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                     "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
_URI_QUERY = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s'\"?]*)\?[^\s'\"]*", re.IGNORECASE)


def scrub(text: str) -> str:
    """``text`` without the storage's endpoint and credentials: URI queries go, and the values
    of the AWS credential and endpoint variables and of the endpoints named in storage URIs
    become ``***`` (for the lines raycl prints from storage errors, and the error texts it
    stores)."""
    text = _URI_QUERY.sub(r"\1", text)
    secrets = set(_ENDPOINTS)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name, "")
        secrets.add(value)
        if "://" in value:  # an endpoint URL: its host:port alone too
            secrets.add(value.partition("://")[2].rstrip("/"))
    for endpoint in [s for s in secrets if ":" in s and "://" not in s]:
        host, _, port = endpoint.rpartition(":")
        secrets.add(f"{host} port {port}")  # as curl says it
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


#: Words of S3 errors that mean refused credentials (pyarrow's and the service's).
_DENIED = ("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
           "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken")


def storage_error_text(err: BaseException) -> str:
    """One line for a storage error: scrubbed (:func:`scrub`), with what to do for the usual
    causes (a missing bucket, refused credentials)."""
    text = scrub(" ".join(str(err).split()))
    missing = re.search(r"Bucket '([^']+)' not found", text)
    if missing:
        return (f"bucket '{missing[1]}' does not exist (raycl never creates buckets: create it, "
                f"or check the bucket name and the endpoint)")
    if any(word in text for word in _DENIED):
        return (f"{text.rstrip('. ')}: the storage refused the credentials (they come from "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance "
                f"profile)")
    return text


def resolve_storage(storage: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, URI for Ray) of a storage location.

    A plain path is made absolute on the local filesystem; ``s3://``, ``gs://``, ``file://`` ...
    go through ``pyarrow.fs.FileSystem.from_uri``, query included (for S3:
    ``?endpoint_override=host:port&scheme=http``; pyarrow also reads ``AWS_ENDPOINT_URL``).
    The URI returned has no query (:func:`storage_label`). Raises :class:`StorageError` (one
    line, starting with the location without its query) for an unknown scheme, a URI without
    a bucket, credentials in an S3 URI (they come from the environment: ``AWS_ACCESS_KEY_ID``
    ... or ``AWS_PROFILE``), HDFS without a Java runtime, or a file system that does not open
    (an S3 bucket whose region cannot be resolved, say).
    """
    text = os.fspath(storage)
    if "://" not in text:
        path = os.path.abspath(os.path.expanduser(text))
        return pafs.LocalFileSystem(), path, path
    label = storage_label(text)
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme not in STORAGE_SCHEMES:
        raise StorageError(f"{label}: unknown scheme {scheme + '://'!r} (use a local path or "
                           f"one of {', '.join(s + '://' for s in STORAGE_SCHEMES)})")
    if scheme in _BUCKET_SCHEMES and not rest.split("?")[0].split("/")[0]:
        raise StorageError(f"{label}: names no bucket (e.g. {scheme}://my-bucket/studies)")
    if scheme == "s3" and "@" in rest.split("?")[0].split("/")[0]:
        raise StorageError(f"{label}: credentials in the URI are refused (they would show in "
                           f"commands and logs): set AWS_ACCESS_KEY_ID and "
                           f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    if scheme in ("hdfs", "viewfs") and not os.environ.get("JAVA_HOME"):
        # pyarrow would print dlopen failures for libjvm before raising
        raise StorageError(f"{label}: HDFS needs a Java runtime and Hadoop's libhdfs "
                           f"(JAVA_HOME, HADOOP_HOME and CLASSPATH are not set here)")
    query = rest.partition("?")[2]
    for pair in query.split("&") if query else ():
        key, _, value = pair.partition("=")
        if key == "endpoint_override" and value:
            _ENDPOINTS.add(value)
    try:
        fs, path = pafs.FileSystem.from_uri(f"{scheme}://{rest}")  # (from_uri: lower case)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise StorageError(f"{label}: {scrub(' '.join(str(err).split()))}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return fs, path, path
    return fs, path.rstrip("/"), label.rstrip("/")


#: How long raycl retries a storage operation that fails as an unreachable storage does
#: (``RAYCL_STORAGE_RETRY_S`` in the environment overrides it).
STORAGE_RETRY_S = 300.0
#: pyarrow's words for S3 errors that pass: no connection, a timeout, the service busy.
_TRANSIENT = ("NETWORK_CONNECTION", "curlCode", "REQUEST_TIMEOUT", "SERVICE_UNAVAILABLE",
              "SLOW_DOWN", "THROTTLING", "INTERNAL_FAILURE", "Connection refused",
              "Couldn't connect", "timed out", "Timeout was reached")


def storage_retry_s() -> float:
    """:data:`STORAGE_RETRY_S`, or ``RAYCL_STORAGE_RETRY_S`` when set."""
    try:
        return float(os.environ.get("RAYCL_STORAGE_RETRY_S", STORAGE_RETRY_S))
    except ValueError:
        return STORAGE_RETRY_S


def transient_storage_error(err: BaseException, fs: pafs.FileSystem) -> bool:
    """Whether ``err`` (raised by ``fs``) may pass if tried again: a remote storage that did not
    answer. A missing file or bucket, refused credentials, a full or read-only disk: no."""
    if isinstance(fs, pafs.LocalFileSystem) or not isinstance(err, OSError) \
            or isinstance(err, (FileNotFoundError, PermissionError)):
        return False
    text = str(err)
    return any(word in text for word in _TRANSIENT)


def retry_storage(action: Any, fs: pafs.FileSystem, *, timeout_s: float | None = None,
                  on_retry: Any = None) -> Any:
    """``action()``, tried again while it fails as an unreachable storage does
    (:func:`transient_storage_error`), for up to ``timeout_s`` (default
    :func:`storage_retry_s`), waiting 0.5 s, then twice as long each time up to 2 s.
    ``on_retry(err)`` is called at the first failure only. Other errors, and the last one
    when the time is up, are raised."""
    deadline = time.monotonic() + (storage_retry_s() if timeout_s is None else timeout_s)
    delay, failed = 0.5, False
    while True:
        try:
            return action()
        except OSError as err:
            if not transient_storage_error(err, fs) or time.monotonic() + delay > deadline:
                raise
            if not failed and on_retry is not None:
                on_retry(err)
            failed = True
        time.sleep(delay)
        delay = min(2 * delay, 2.0)


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def _check_folder_name(name: str) -> None:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        # The study folder must be a child of the storage root, never the root or above it.
        raise ValueError(f"study name {name!r} would leave the storage directory")


class ResultStore:
    """The Parquet tables of one study, held in memory and rewritten atomically.

    Args:
        storage: the ``--storage`` root (local path or URI).
        study: the study name (the ``study`` column); files go to ``<storage>/<study>/``.
        folder: where the files go instead, relative to the storage root, e.g.
            ``("smoke", "<name>")`` for a ``--smoke`` check.
    """

    def __init__(self, storage: str | os.PathLike[str], study: str,
                 folder: tuple[str, ...] | None = None) -> None:
        _check_folder_name(study)
        parts = (study,) if folder is None else tuple(folder)
        if not parts:
            raise ValueError("a study's folder cannot be the storage root")
        for part in parts:
            _check_folder_name(part)
        self.study = study
        fs, root, root_uri = resolve_storage(storage)
        self.fs = fs
        self._root = root
        self.dir = "/".join((root, *parts))
        #: Where this study lives, as a path or URI (what ``raycl.report`` takes).
        self.uri = "/".join((root_uri, *parts))
        self._trials: dict[str, dict[str, Any]] = {}
        #: trial_key -> experience -> curves row
        self._curves: dict[str, dict[int, dict[str, Any]]] = {}
        #: tables derived from the rows (selection, comparisons), as last set
        self._derived: dict[str, pd.DataFrame] = {}
        #: the resolved study (``raycl.study.settings``), written as study.json and into
        #: every table's metadata once set
        self._settings: str | None = None

    # ---- locations --------------------------------------------------------------------------
    @property
    def ray_storage(self) -> str:
        """Ray Tune's ``storage_path`` for this study: ``<storage>/<study>/_ray``."""
        return f"{self.uri}/_ray"

    @property
    def remote(self) -> bool:
        """Whether the storage is not this machine's file system (``s3://`` ...)."""
        return not isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def ray_fs_path(self) -> str:
        """:attr:`ray_storage` as a path in :attr:`fs` (what Tune gets with ``fs`` as its
        ``storage_filesystem``: so the URI's query, e.g. its endpoint, reaches Ray's trials
        without being in any path Ray prints or stores)."""
        return f"{self.dir}/_ray"

    def path(self, table: str) -> str:
        """Where ``<table>.parquet`` lives (path or URI)."""
        return f"{self.uri}/{table}.parquet"

    def _fs_path(self, table: str) -> str:
        return f"{self.dir}/{table}.parquet"

    def _exists(self, fs_path: str) -> bool:
        return self.fs.get_file_info(fs_path).type != pafs.FileType.NotFound

    def has_results(self) -> bool:
        """True when a run of this study started here (its settings, results or Ray's
        experiment folder)."""
        return any(self._exists(p) for p in (f"{self.dir}/{SETTINGS_FILE}",
                                             self._fs_path("trials"), f"{self.dir}/_ray"))

    def clear(self) -> None:
        """Delete everything in this study's folder but its lock (``--smoke`` reruns only)."""
        if not self._exists(self.dir):
            return
        for info in self.fs.get_file_info(pafs.FileSelector(self.dir)):
            if info.base_name == LOCK_FILE:
                continue
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(info.path)
            else:
                self.fs.delete_file(info.path)

    def lock(self) -> StudyLock:
        """Take this study folder's lock (see :class:`StudyLock`); :class:`StudyLocked` when a
        live run holds it, ``OSError`` when it cannot be written."""
        return StudyLock.acquire(self.fs, self.dir, self.uri, self.study)

    def stored_settings(self) -> dict[str, Any] | None:
        """The resolved study that wrote the results here: study.json, else the trials table's
        Parquet metadata; None when neither holds it."""
        path = f"{self.dir}/{SETTINGS_FILE}"
        text = None
        if self._exists(path):
            with self.fs.open_input_stream(path) as f:
                text = f.read().decode()
        elif self._exists(self._fs_path("trials")):
            meta = pq.read_schema(self._fs_path("trials"), filesystem=self.fs).metadata or {}
            raw = meta.get(METADATA_KEY)
            text = raw.decode() if raw else None
        if not text:
            return None
        try:
            settings = json.loads(text)
        except ValueError:
            return None
        return settings if isinstance(settings, dict) else None

    def write_settings(self) -> None:
        """Write study.json now (before any trial: the folder records which study it holds
        from the start of a run)."""
        if self._settings is None:
            return
        self.fs.create_dir(self.dir, recursive=True)
        self._atomic(SETTINGS_FILE, self._write_settings)

    # ---- rows -------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the existing tables (if any) into memory, so a resumed run keeps their rows."""
        self.remove_stale_temporaries()
        frames = {}
        for table in ("trials", "curves"):  # the matrix and selection are rebuilt from them
            path = self._fs_path(table)
            try:
                frames[table] = (pq.read_table(path, filesystem=self.fs).to_pandas()
                                 if self._exists(path) else None)
            except (OSError, pa.ArrowException) as err:
                # the matrix, selection and comparisons are rebuilt from these two; neither
                # can be rebuilt from the others (the curves hold every report, the trials
                # each trial's outcome)
                raise ValueError(
                    f"{self.path(table)} is unreadable ({' '.join(str(err).split())[:200]}): "
                    f"it cannot be rebuilt from the other tables; restore it from a copy, or "
                    f"run the study again into another --storage") from None
        versions = ({int(v) for v in frames["trials"][SCHEMA_VERSION_COLUMN].dropna()}
                    if frames["trials"] is not None
                    and SCHEMA_VERSION_COLUMN in frames["trials"] else set())
        if versions - {SCHEMA_VERSION}:
            raise ValueError(f"{self.uri} holds results of schema version "
                             f"{', '.join(map(str, sorted(versions)))}; this raycl writes "
                             f"version {SCHEMA_VERSION} and cannot add to them: run the study "
                             f"again into another --storage")
        for row in _records(frames["trials"]):
            self._trials[row[TRIAL_KEY]] = row
        for row in _records(frames["curves"]):
            self._curves.setdefault(row[TRIAL_KEY], {})[int(row[EXPERIENCE])] = row

    def done_keys(self) -> set[str]:
        """Keys of the trials that finished (status TERMINATED)."""
        return {k for k, r in self._trials.items() if r.get(STATUS) == TERMINATED}

    def trial_rows(self) -> list[dict[str, Any]]:
        """The trials rows held now."""
        return list(self._trials.values())

    def forget_reports(self, trial_key: str) -> None:
        """Drop a trial's curves and matrix rows (it is starting over: rows of an interrupted
        earlier run must not outlive the new run, which may stop sooner)."""
        self._curves.pop(trial_key, None)

    def add_report(self, trial: TrialSpec, trial_id: str, metrics: Mapping[str, Any]) -> None:
        """Record one report of a trial: its curves row, which holds its row of the accuracy
        matrix too."""
        ident = self._ident(trial, trial_id)
        exp = int(metrics[EXPERIENCE])
        curve = {**ident, EXPERIENCE: exp,
                 TRAINING_ITERATION: int(metrics.get(TRAINING_ITERATION, exp + 1))}
        curve.update({k: _plain(v) for k, v in metrics.items()
                      if k in CURVE_METRICS or experience_column(k) is not None})
        self._curves.setdefault(trial.trial_key, {})[exp] = curve

    def set_trial(self, trial: TrialSpec, trial_id: str, status: str,
                  metrics: Mapping[str, Any], *, error: str | None = None,
                  started_at: pd.Timestamp | None = None,
                  finished_at: pd.Timestamp | None = None,
                  checkpoint: str | None = None) -> None:
        """Record (or replace) the trials row of a trial from its last reported metrics."""
        row = self._ident(trial, trial_id)
        row.update({param_column(k): _plain(v) for k, v in trial.params.items()})
        row[CONFIG] = json.dumps(trial.params, sort_keys=True)
        done = metrics.get(EXPERIENCE)
        row.update({
            STATUS: status,
            ERROR: None if error is None else scrub(error),
            EXPERIENCES_DONE: 0 if done is None else int(done) + 1,
            **{k: _plain(metrics.get(k, math.nan)) for k in TRIAL_METRICS},
            **{k: metrics.get(k) for k in TRIAL_TAIL if k in INFO_FIELDS},
            STARTED_AT: started_at,
            FINISHED_AT: finished_at,
            CHECKPOINT: checkpoint,
        })
        self._trials[trial.trial_key] = row

    def set_settings(self, settings: Mapping[str, Any]) -> None:
        """The resolved study: written as study.json beside the tables and into each table's
        Parquet metadata with every write."""
        self._settings = json.dumps(settings, indent=1, sort_keys=True, default=str)

    def set_derived(self, tables: Mapping[str, pd.DataFrame]) -> None:
        """Tables derived from the rows (selection.parquet, comparisons.parquet), written with
        the others from now on."""
        self._derived = dict(tables)

    def _ident(self, trial: TrialSpec, trial_id: str) -> dict[str, Any]:
        return dict(zip(TRIAL_HEAD, (self.study, str(trial_id), trial.trial_key, trial.phase,
                                     trial.arm, trial.config_key, int(trial.seed)), strict=True))

    # ---- tables -----------------------------------------------------------------------------
    def frames(self) -> dict[str, pd.DataFrame]:
        """The three tables (and the derived ones once set) as DataFrames, columns in their
        documented order."""
        trials = list(self._trials.values())
        params = sorted({k for r in trials for k in r if is_param_column(k)})
        curve_rows = [r for rows in self._curves.values() for r in rows.values()]
        present = {k for r in curve_rows for k in r}
        per_exp = sorted(k for k in present if experience_column(k) is not None)
        curve_cols = (list(CURVE_ID_COLUMNS) + [k for k in CURVE_METRICS if k in present]
                      + per_exp + [SCHEMA_VERSION_COLUMN])
        return {
            "trials": _frame(trials, [*TRIAL_HEAD, *params, *TRIAL_TAIL]),
            "matrix": _frame(sorted(_matrix_rows(curve_rows), key=_matrix_order),
                             list(MATRIX_COLUMNS)),
            "curves": _frame(sorted(curve_rows, key=_curve_order), curve_cols),
            **self._derived,
        }

    def write(self) -> dict[str, str]:
        """Rewrite the files atomically (the derived tables too once set); returns their
        paths.

        A write that fails (disk full, storage gone) raises ``OSError`` and leaves every file
        as the last complete write left it (the partial temporary file is removed); the rows
        stay in memory, so a later write can still save them.
        """
        self.fs.create_dir(self.dir, recursive=True)
        frames = self.frames()
        # The trials table last: it records which trials finished (a resumed run skips them),
        # so a driver killed between two files never leaves a finished trial without its
        # curves (a trial with curves but no trials row reruns, and its rows are replaced).
        for table in sorted(frames, key=lambda t: t == "trials"):
            frame = frames[table]
            data = pa.Table.from_pandas(frame, preserve_index=False)
            if self._settings is not None:
                data = data.replace_schema_metadata(
                    {**(data.schema.metadata or {}), METADATA_KEY: self._settings.encode()})
            self._atomic(f"{table}.parquet",
                         lambda where, data=data: pq.write_table(data, where,
                                                                 filesystem=self.fs))
            del data
        if self._settings is not None:
            self._atomic(SETTINGS_FILE, self._write_settings)
        # Arrow's allocator keeps freed pages for reuse; tables grow as trials finish, so
        # without this the driver's memory would grow with each write's high-water mark.
        pa.default_memory_pool().release_unused()
        return {t: self.path(t) for t in frames}

    def _atomic(self, name: str, write: Any) -> None:
        """``write(path)`` to a temporary name, then renamed over ``name`` (object stores: one
        PUT, atomic already)."""
        final = f"{self.dir}/{name}"
        if not isinstance(self.fs, pafs.LocalFileSystem):
            write(final)
            return
        head, _, base = name.rpartition("/")
        tmp = f"{self.dir}/{head + '/' if head else ''}.{base}.tmp-{os.getpid()}"
        try:
            write(tmp)
            self.fs.move(tmp, final)  # rename(2): atomic on one filesystem
        except BaseException:
            self._remove(tmp)
            raise

    def error_file(self, trial_key: str) -> str:
        """Where the full error text of a failed trial goes (path or URI)."""
        return f"{self.uri}/{ERRORS_FOLDER}/{trial_key}.txt"

    def write_error_file(self, trial_key: str, text: str) -> str:
        """Write a failed trial's full error text (every failed attempt's traceback) to
        :meth:`error_file`, atomically; returns where. Raises ``OSError`` when the storage
        cannot take it."""
        folder = f"{self.dir}/{ERRORS_FOLDER}"
        self.fs.create_dir(folder, recursive=True)

        def write(where: str) -> None:
            with self.fs.open_output_stream(where) as f:
                f.write(scrub(text).encode())

        self._atomic(f"{ERRORS_FOLDER}/{trial_key}.txt", write)
        return self.error_file(trial_key)

    def prune_checkpoints(self, trial_folder: str, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest ``checkpoint_<k>`` folders in a trial's folder
        (``keep`` 0: all of them); returns the folders deleted. A folder that cannot be listed
        or deleted is left as it is (pruning only saves space)."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(trial_folder))
        except (OSError, pa.ArrowException):
            return []
        numbered = sorted((int(m[1]), info.path) for info in infos
                          if info.type == pafs.FileType.Directory
                          and (m := _CHECKPOINT_FOLDER.match(info.base_name)))
        doomed = [path for _, path in (numbered[:-keep] if keep else numbered)]
        for path in doomed:
            try:
                self.fs.delete_dir(path)
            except (OSError, pa.ArrowException):
                pass
        return doomed

    def _write_settings(self, where: str) -> None:
        with self.fs.open_output_stream(where) as f:
            f.write((self._settings or "").encode())

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
            if info.base_name.startswith(".") and ".tmp-" in info.base_name:
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


class StudyLocked(Exception):
    """Another run holds the study folder's lock (the message says which, on one line)."""


#: Tokens of the locks this process holds (a lock naming this pid but none of these tokens was
#: left by an earlier process that had the same pid, e.g. a restarted container).
_HELD: set[str] = set()


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _when(info: Mapping[str, Any]) -> str:
    return str(info.get("started_at") or "an unknown time")


class StudyLock:
    """The lock of one study folder, ``<study dir>/.lock``: JSON naming the run that holds it
    (pid, host, start time, command and a random token).

    * Local file system: created with ``O_CREAT | O_EXCL``, so of two runs exactly one creates
      it. A stale lock is replaced under a second exclusive file (``.lock.takeover``), so two
      runs cannot both take it over.
    * Object stores (``s3://`` ...): pyarrow has no atomic create-if-absent, so the lock is
      read, written (one PUT), and read back :data:`LOCK_SETTLE_S` later; the run whose token
      is there holds it, the other is refused. The race window: two runs whose check for a lock
      both come before either PUT, and whose PUTs land more than :data:`LOCK_SETTLE_S` apart
      (a PUT of a few hundred bytes normally takes milliseconds) both go on.

    Stale: a lock of this host (same host name) whose process is gone, or a lock of another
    host not refreshed for :data:`LOCK_STALE_AFTER_S` (the holder refreshes it every
    :data:`LOCK_REFRESH_S` from a background thread, so a long study keeps it; hosts' clocks
    must agree to within minutes). A stale lock is taken over with one line on stderr.

    :meth:`release` (idempotent; also run at interpreter exit) removes the lock if it is still
    this run's, and the study folder if the lock was all there was in it.
    """

    def __init__(self, fs: pafs.FileSystem, folder: str, uri: str, study: str) -> None:
        self.fs, self.folder, self.study = fs, folder, study
        self.path = f"{folder}/{LOCK_FILE}"
        self.folder_uri = uri
        self.uri = f"{uri}/{LOCK_FILE}"
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "command": " ".join(map(storage_label, sys.argv)), "study": study,
                     "token": uuid.uuid4().hex}
        self.content = json.dumps(self.info, indent=1).encode()
        self.taken_over: str | None = None
        """The line said when a stale lock was taken over (None otherwise)."""
        self._created_folder = False
        self._released = threading.Event()
        self._refresher: threading.Thread | None = None

    # ---- taking it --------------------------------------------------------------------------
    @classmethod
    def acquire(cls, fs: pafs.FileSystem, folder: str, uri: str, study: str) -> StudyLock:
        """Take the lock of ``folder``; :class:`StudyLocked` when a live run holds it."""
        lock = cls(fs, folder, uri, study)
        lock._created_folder = fs.get_file_info(folder).type == pafs.FileType.NotFound
        fs.create_dir(folder, recursive=True)
        try:
            if lock.local:
                lock._acquire_local()
            else:
                lock._acquire_remote()
        except BaseException:
            lock._remove_folder_if_empty()
            raise
        _HELD.add(lock.info["token"])
        atexit.register(lock.release)
        lock._refresher = threading.Thread(target=lock._refresh, name="raycl-study-lock",
                                           daemon=True)
        lock._refresher.start()
        return lock

    def _acquire_local(self) -> None:
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read()
                if held is None:  # released meanwhile: try again
                    continue
                info, mtime = held
                reason = self._stale(info, mtime)
                if reason is None:
                    raise StudyLocked(self._held_message(info)) from None
                if self._take_over_local(info, reason):
                    return
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self.content)
                f.flush()
                os.fsync(f.fileno())
            return
        raise StudyLocked(f"study '{self.study}' in {self.folder_uri}: its lock {self.uri} keeps "
                          f"changing hands; another run is starting on it")

    def _take_over_local(self, stale: Mapping[str, Any], reason: str) -> bool:
        """Replace the stale lock ``stale`` under the takeover guard; False when the lock
        changed meanwhile (the caller looks again)."""
        guard = f"{self.path}.takeover"
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                age = time.time() - os.stat(guard).st_mtime
            except FileNotFoundError:
                return False
            if age > 60:  # left by a run killed in the middle of a takeover
                self._remove_quietly(guard)
                return False
            raise StudyLocked(f"study '{self.study}' in {self.folder_uri}: another run is taking "
                              f"over its stale lock {self.uri} right now") from None
        try:
            os.close(fd)
            held = self._read()
            if held is None or held[0].get("token") != stale.get("token"):
                return False
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(self.content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            self._remove_quietly(guard)
        self._said_taken_over(stale, reason)
        return True

    def _acquire_remote(self) -> None:
        held, reason = self._read(), None
        if held is not None:
            info, mtime = held
            reason = self._stale(info, mtime)
            if reason is None:
                raise StudyLocked(self._held_message(info))
        self._put()
        time.sleep(LOCK_SETTLE_S)
        back = self._read()
        if back is None or back[0].get("token") != self.info["token"]:
            raise StudyLocked(self._held_message(back[0] if back else {}))
        if held is not None:
            self._said_taken_over(held[0], reason or "")

    def _put(self) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(self.content)

    def _said_taken_over(self, stale: Mapping[str, Any], reason: str) -> None:
        self.taken_over = (f"raycl: taking over the stale lock of study '{self.study}' "
                           f"({self._holder(stale)}): {reason}")
        print(self.taken_over, file=sys.stderr, flush=True)

    # ---- reading it -------------------------------------------------------------------------
    def _read(self) -> tuple[dict[str, Any], float] | None:
        """(content, modification time) of the lock, None when there is none. Content that
        does not parse (a lock being written) is ``{}``."""
        try:
            info_ = self.fs.get_file_info(self.path)
            if info_.type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(self.path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        mtime = info_.mtime.timestamp() if info_.mtime is not None else time.time()
        try:
            info = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError):
            info = {}
        return (info if isinstance(info, dict) else {}), mtime

    def _stale(self, info: Mapping[str, Any], mtime: float) -> str | None:
        """Why the lock ``info`` (last written at ``mtime``) is stale, or None while its run
        may be alive."""
        pid, host = info.get("pid"), info.get("host")
        if host == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid() and info.get("token") not in _HELD:
                return f"process {pid} is this one, so the run that wrote it is gone"
            return None if process_alive(pid) else f"its process {pid} is gone"
        age = time.time() - mtime
        if age > LOCK_STALE_AFTER_S:
            return (f"not refreshed for {age / 60:.0f} min (a running study refreshes it "
                    f"every {LOCK_REFRESH_S:.0f} s; stale after {LOCK_STALE_AFTER_S:.0f} s)")
        return None

    @staticmethod
    def _holder(info: Mapping[str, Any]) -> str:
        if not info:
            return "a run whose lock is still being written"
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {_when(info)}"

    def _held_message(self, info: Mapping[str, Any]) -> str:
        return (f"study '{self.study}' in {self.folder_uri} is being run by "
                f"{self._holder(info)}; wait for it to end, or remove {self.uri} if that run "
                f"is gone")

    # ---- holding and releasing it -------------------------------------------------------------
    def _refresh(self) -> None:
        """Refresh the lock's modification time until released (runs on other hosts judge a
        lock by it); warns once if another run took it over meanwhile."""
        while not self._released.wait(LOCK_REFRESH_S):
            try:
                held = self._read()
                if held is None or held[0].get("token") != self.info["token"]:
                    who = self._holder(held[0]) if held else "nobody"
                    print(f"raycl: warning: the lock of study '{self.study}' ({self.uri}) is "
                          f"no longer this run's (now: {who})", file=sys.stderr, flush=True)
                    return
                if self.local:
                    os.utime(self.path)
                else:
                    self._put()
            except OSError:
                continue  # storage hiccup: try again at the next refresh

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock (not released)."""
        return not self._released.is_set()

    def release(self) -> None:
        """Remove the lock if it is still this run's (idempotent)."""
        if self._released.is_set():
            return
        self._released.set()
        atexit.unregister(self.release)
        _HELD.discard(self.info["token"])
        try:
            held = self._read()
            if held is not None and held[0].get("token") == self.info["token"]:
                self.fs.delete_file(self.path)
        except OSError:
            pass
        self._remove_folder_if_empty()

    def _remove_folder_if_empty(self) -> None:
        """The folder this lock created goes if nothing else was written in it."""
        if not (self._created_folder and self.local):
            return
        try:
            os.rmdir(self.folder)
        except OSError:
            pass

    def _remove_quietly(self, path: str) -> None:
        try:
            os.remove(path)
        except OSError:
            pass


def _records(frame: pd.DataFrame | None) -> Iterable[dict[str, Any]]:
    if frame is None:
        return []
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def _matrix_rows(curve_rows: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """The accuracy-matrix rows held in curves rows (one per split and accuracy column)."""
    for curve in curve_rows:
        ident = {k: curve[k] for k in TRIAL_HEAD}  # what _ident put in every row
        for column, value in curve.items():
            found = experience_column(column)
            if found is None or found[1] != ACCURACY or value is None:
                continue
            split, _, j = found
            yield {**ident, SPLIT: split, TRAINED_EXP: curve[EXPERIENCE], EVAL_EXP: j,
                   ACCURACY: value, LOSS: _or_nan(curve.get(loss_column(j, split)))}


def _or_nan(value: Any) -> Any:
    return math.nan if value is None else value


def _matrix_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row[ARM], row[TRIAL_KEY], row[SPLIT], row[TRAINED_EXP], row[EVAL_EXP])


def _curve_order(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (row[ARM], row[TRIAL_KEY], row[EXPERIENCE])


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with ``columns`` in order and stable dtypes."""
    data = {}
    for col in columns:
        values = [SCHEMA_VERSION if col == SCHEMA_VERSION_COLUMN else _missing_to_none(r.get(col))
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
    if col in TIME_COLUMNS:
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True))
    if col in STR_COLUMNS:
        return pd.Series([None if v is None else str(v) for v in values], dtype=object)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    if col in INT_COLUMNS or (is_param_column(col) and present and ints):
        # Int64 keeps integer parameters integers where other arms leave the column empty.
        return pd.Series(values, dtype="Int64" if None in values else "int64")
    if is_param_column(col) and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype=object)  # strings and booleans
    return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
