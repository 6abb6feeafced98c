"""The Ray Tune function trainable: :func:`raycl.study.trial.run_trial` inside a trial process.

What it adds to ``run_trial``: it loads the study in the trial process (from its
:class:`~raycl.study.plan.StudySource`, which travels with the trial, so worker nodes need no
copy of the file), picks the device,
turns every ``report(metrics, state)`` into ``tune.report(metrics, checkpoint=...)`` with the
state saved by ``torch.save`` next to its SHA-256, and restarts from ``tune.get_checkpoint()``
after a failure. A checkpoint whose digest does not match (a trial killed while it was written, a
truncated upload, bit rot) or that does not load is skipped for the one before it, and the skip
is reported (``checkpoint_note`` in every later report, and on stderr). Checkpoints load with
``torch.load(weights_only=True)``: nothing in storage can run code in a trial.
Trial processes are reused between trials (``reuse_actors``); ``run_trial`` reseeds every
generator at the start of each trial, and the loaded study and benchmark are cached.

Two failures would repeat on every attempt of every trial: a study file that does not import
in the trial process (it reads a file relative to the driver's working directory, say), and a
storage that cannot take a checkpoint because it is full, over quota or read-only
(:data:`STORAGE_FULL_ERRNOS`). Ray 2.60 has no public way to exempt one exception from
``FailureConfig(max_failures)``, so the trainable does not raise then: its last report says why
under :data:`SETUP_FAILED` (the root cause; for a study file, with its line), and the driver
records the trial as ERROR, never retried, and stops the study (``raycl.tune.runner``), as it
does for a diverged trial's last report.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from raycl.study.loader import StudyError
from raycl.study.plan import StudySource
from raycl.study.results import (
    process_alive,
    resolve_storage,
    retry_storage,
    scrub,
)
from raycl.study.schema import (
    AVG_ACCURACY,
    DEVICE,
    GPU_IDS,
    NODE_ID,
    NODE_IP,
    SPLITS,
    metric_column,
    split_column,
)
from raycl.study.spec import Study
from raycl.tune.compat import quiet_checkpoint_logs, spec_of_config

__all__ = ["DIGEST_FILE", "SETUP_FAILED", "STATE_FILE", "TEMP_PREFIX", "CorruptCheckpoint",
           "read_checkpoint", "remove_stale_temporaries", "restore_state", "setup_failure",
           "setup_failure_report", "stop_report", "trial_device", "trainable",
           "write_checkpoint", "STORAGE_FULL_ERRNOS", "STORAGE_RETRIED"]

# Before Ray restores a trial from a checkpoint in this (trial) process, which imports this
# module to unpickle the trainable: the driver already says that a trial restarted.
quiet_checkpoint_logs()

#: Key of the last report of a trial that failed as every trial would (its study file does
#: not import in its process; the storage is full): why.
SETUP_FAILED = "raycl_setup_failed"
#: Key of a report whose checkpoint upload was retried because the (remote) storage did not
#: answer: the error and how long it took (the driver says it once per outage).
STORAGE_RETRIED = "raycl_storage_retried"
#: ``OSError.errno`` values of a storage that would fail every checkpoint again at once.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

#: File name of the state inside each Tune checkpoint directory.
STATE_FILE = "state.pt"
#: File holding the hex SHA-256 of :data:`STATE_FILE`, written after it.
DIGEST_FILE = "state.pt.sha256"
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


class CorruptCheckpoint(Exception):
    """A checkpoint folder whose state is missing, does not match its digest or does not load."""


def setup_failure_report(source: StudySource, err: StudyError) -> dict[str, Any]:
    """The one report of a trial whose study file raised ``err`` on import in the trial
    process: the root cause and where (:data:`SETUP_FAILED`), and NaN for the metrics the
    scheduler and searcher read (Tune refuses a result without them)."""
    where = (f"{err.field} of {err.path}" if err.field.startswith("line ")
             else f"{err.path}: {err.field}")
    return stop_report(source, f"the study file does not import in a trial process: "
                               f"{err.what} ({where}; working directory there: {os.getcwd()})")


def stop_report(source: StudySource, reason: str) -> dict[str, Any]:
    """The last report of a trial that failed as every trial would: ``reason`` under
    :data:`SETUP_FAILED`, and NaN for the metrics the scheduler and searcher read (Tune
    refuses a result without them)."""
    metric = str(source.settings.get("metric", AVG_ACCURACY))
    nan = float("nan")
    report: dict[str, Any] = {SETUP_FAILED: reason}
    for split in SPLITS:
        report[split_column(split, AVG_ACCURACY)] = nan
        try:
            report[metric_column(metric, split)] = nan
        except ValueError:
            pass
    return report


def setup_failure(trial: Any) -> str | None:
    """Why a Tune trial's study file did not import in its process (its last report says
    so), or None."""
    reason = (getattr(trial, "last_result", None) or {}).get(SETUP_FAILED)
    return str(reason) if reason else None


def write_checkpoint(folder: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` into ``folder`` as :data:`STATE_FILE` plus its :data:`DIGEST_FILE`."""
    from raycl.study.trial import serialize_state

    data = serialize_state(state)
    Path(folder, STATE_FILE).write_bytes(data)
    # Written last: a folder cut short while being written has no digest, or a wrong one.
    Path(folder, DIGEST_FILE).write_text(hashlib.sha256(data).hexdigest())


def read_checkpoint(fs: pafs.FileSystem, folder: str) -> dict[str, Any]:
    """The state in checkpoint ``folder`` of ``fs``, checked against its digest and loaded with
    ``weights_only=True``; :class:`CorruptCheckpoint` says what is wrong otherwise."""
    from raycl.study.trial import deserialize_state

    try:
        with fs.open_input_stream(f"{folder}/{STATE_FILE}") as f:
            data = f.read()
        with fs.open_input_stream(f"{folder}/{DIGEST_FILE}") as f:
            expected = f.read().decode().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"unreadable: {' '.join(str(err).split())}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorruptCheckpoint(f"sha256 mismatch ({len(data)} bytes, digest "
                                f"{actual[:12]}..., expected {expected[:12]}...)")
    try:
        return deserialize_state(data)
    except Exception as err:  # a digest match that does not load: say so, try the previous
        raise CorruptCheckpoint(f"does not load: {type(err).__name__}: {err}") from None


def _older_siblings(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Checkpoint folders of the same trial older than ``folder``, newest first."""
    parent, _, name = folder.rstrip("/").rpartition("/")
    match = _CHECKPOINT_DIR.match(name)
    if not parent or not match:
        return []
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return []
    older = []
    for info in infos:
        m = _CHECKPOINT_DIR.match(info.base_name)
        if m and info.type == pafs.FileType.Directory and int(m[1]) < int(match[1]):
            older.append((int(m[1]), info.path))
    return [path for _, path in sorted(older, reverse=True)]


def restore_state(fs: pafs.FileSystem, folder: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest intact state among checkpoint ``folder`` and the older checkpoints beside it.

    Returns (state or None when none is intact, notes saying which checkpoints were skipped
    and why).
    """
    notes = []
    for candidate in [folder, *_older_siblings(fs, folder)]:
        try:
            state = read_checkpoint(fs, candidate)
        except CorruptCheckpoint as err:
            notes.append(f"skipped corrupt checkpoint {candidate.rstrip('/').rpartition('/')[2]}"
                         f": {err}")
            continue
        return state, notes
    notes.append("no intact checkpoint: the trial starts over")
    return None, notes


#: Prefix of the temporary folder a checkpoint is written to before Ray copies it to storage;
#: the writing process's pid follows, so a later trial can tell a folder whose writer was killed.
TEMP_PREFIX = "raycl-ckpt-"


def remove_stale_temporaries(folder: str | os.PathLike[str] | None = None,
                             min_age_s: float = 600.0) -> list[str]:
    """Delete checkpoint temporaries that a killed trial process left in ``folder`` (default:
    the temporary directory): ``raycl-ckpt-<pid>-*`` folders whose process is gone and that
    were last changed more than ``min_age_s`` ago (a process of another PID namespace sharing
    the folder may be writing one now). Returns the folders removed."""
    import shutil
    import time

    root = Path(folder or tempfile.gettempdir())
    removed = []
    try:
        candidates = list(root.glob(f"{TEMP_PREFIX}*-*"))
    except OSError:
        return removed
    for path in candidates:
        pid = path.name[len(TEMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


_STUDIES: dict[str, Study] = {}


def _study(source: StudySource) -> Study:
    """The study of ``source``, loaded once per process (trial processes are reused)."""
    if source.digest not in _STUDIES:
        _STUDIES[source.digest] = source.load()
    return _STUDIES[source.digest]


def trial_device(use_gpu: bool) -> tuple[str, dict[str, Any]]:
    """The device a trial trains on, and what it records about it.

    A CPU trial hides every GPU from itself first (Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES``
    alone for trials that ask for no GPU). A GPU trial uses ``cuda`` (Ray made the granted GPUs
    the only visible ones) unless torch sees no CUDA device, in which case it falls back to the
    CPU and says so in ``device_note``, still recording the GPU ids Ray granted: so it is with
    the fake GPUs of a test cluster (``Cluster.add_node(num_gpus=1)``), and on a node whose
    driver or torch build cannot use its GPU (the note then shows in every report). Every trial
    records the node it ran on: its IP and Ray's node id (the IP alone does not tell apart nodes
    of one machine).
    """
    import ray

    info: dict[str, Any] = {NODE_IP: ray.util.get_node_ip_address(),
                            NODE_ID: ray.get_runtime_context().get_node_id()}
    if not use_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything initialises CUDA
        info.update({DEVICE: "cpu", GPU_IDS: None})  # no GPU: null, not ""
        return "cpu", info
    import torch

    ids = ",".join(str(i) for i in ray.get_gpu_ids())
    info[GPU_IDS] = ids
    if torch.cuda.is_available():
        info[DEVICE] = "cuda"
        return "cuda", info
    note = f"granted GPU(s) {ids or '?'} but torch sees no CUDA device: trained on the CPU"
    print(f"raycl: warning: {note}", file=sys.stderr)
    info.update({DEVICE: "cpu", "device_note": note})
    return "cpu", info


def trainable(config: dict[str, Any], source: StudySource, use_gpu: bool,
              cpus_per_trial: float, storage: str,
              storage_fs: pafs.FileSystem | None = None) -> None:
    """Run the trial of ``config`` (see ``raycl.tune.compat.tune_config``) of the study that
    ``source`` describes; ``storage`` is the study's folder (a trial that continues another
    trial's learner reads its checkpoint there), ``storage_fs`` its file system when remote
    (it holds what the URI's query said, which ``storage`` does not). On a remote storage,
    a checkpoint upload that fails as an unreachable storage does is retried (for up to
    ``RAYCL_STORAGE_RETRY_S``) and the report says so (:data:`STORAGE_RETRIED`)."""
    quiet_checkpoint_logs()
    device, info = trial_device(use_gpu)
    import torch

    from raycl.study.trial import run_trial

    torch.set_num_threads(max(1, int(cpus_per_trial or 1)))
    try:
        study = _study(source)
    except StudyError as err:  # every attempt would fail the same way: report, do not raise
        tune.report(setup_failure_report(source, err))
        return
    spec = spec_of_config(config)
    remove_stale_temporaries()
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # an unreachable storage is not a corrupt checkpoint: wait for it first
        retry_storage(lambda: checkpoint.filesystem.get_file_info(checkpoint.path),
                      checkpoint.filesystem)
        state, notes = restore_state(checkpoint.filesystem, checkpoint.path)
        if notes:
            note = "; ".join(notes)
            print(f"raycl: warning: trial {spec.trial_key}: {note}", file=sys.stderr)
            info["checkpoint_note"] = note

    def report(metrics: dict[str, Any], state_out: dict[str, Any] | None) -> None:
        if state_out is None:  # the last report of a diverged trial: nothing to resume
            tune.report(metrics)
            return
        # A process killed while writing leaves this folder: a later trial removes it.
        with tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}{os.getpid()}-") as folder:
            write_checkpoint(folder, state_out)
            # Copied to the trial's storage before report returns: the temp dir may go.
            _report_retrying(metrics, folder, storage_fs, storage)

    init = None
    if spec.init is not None:  # per-experience selection: continue the chosen learner
        fs = storage_fs or resolve_storage(storage)[0]
        init = read_checkpoint(fs, spec.init)
    try:
        run_trial(study, spec, report, state, init_state=init, device=device, info=info)
    except OSError as err:
        if err.errno not in STORAGE_FULL_ERRNOS:
            raise
        # a retry would fail the same way (and every other trial with it): say so, stop
        tune.report(stop_report(source, f"cannot save a checkpoint: {os.strerror(err.errno)} "
                                        f"({' '.join(str(err).split())}); free space under "
                                        f"{storage}"))


def _report_retrying(metrics: dict[str, Any], folder: str, fs: pafs.FileSystem | None,
                     storage: str) -> None:
    """``tune.report(metrics)`` with the checkpoint in ``folder``; on a remote storage ``fs``
    (the study's folder: URI ``storage``), tried again while the upload fails as an
    unreachable storage does (Ray copies the checkpoint before it queues the result, so a
    failed attempt reported nothing; it may leave a partial ``checkpoint_*`` folder, which is
    never registered and is pruned later). Each attempt first checks that the storage
    answers: an upload cut short makes Arrow print its error (endpoint included) on stderr."""
    if fs is None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        return
    start, failure = time.monotonic(), []
    probe = storage.partition("://")[2].split("?")[0]  # bucket/key: the path in ``fs``

    def attempt() -> None:
        fs.get_file_info(probe)
        if failure:  # the report that finally goes says what happened
            metrics[STORAGE_RETRIED] = (f"{failure[0]}; the checkpoint upload was retried "
                                        f"for {time.monotonic() - start:.1f} s")
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(folder))

    def note(err: OSError) -> None:
        failure.append(scrub(" ".join(str(err).split()))[:200])

    retry_storage(attempt, fs, on_retry=note)
