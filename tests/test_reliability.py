"""Faults and bad input without Ray: refused runs, divergence, corrupt checkpoints, full disks.

Everything here runs in-process in a few seconds; the Ray-side fault tests (trial and driver
killed) are in test_tune.py.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch
from study_files import TINY, write_study

from raycl.study import load_study, make_trial, run_trial
from raycl.study.__main__ import main, parser
from raycl.study.divergence import DivergenceGuard, TrialDiverged
from raycl.study.results import ResultStore
from raycl.study.schema import DIVERGED

# ---- bad input: one line, exit status 2, nothing started, nothing written ----------------------
_RWALK = '''
from ray import tune

from raycl.plugins import RWalkPlugin
from raycl.study import Arm, Study

study = Study(name="rw", arms=[Arm("rwalk", lambda c: [RWalkPlugin(ewc_alpha=c["ewc_alpha"])],
                                   {"ewc_alpha": tune.uniform(0.5, 1.5)})])
'''
_REPLAY = '''
from ray import tune

from raycl.plugins import ReplayPlugin
from raycl.study import Arm, Study

study = Study(name="rp", arms=[Arm("replay", lambda c: [ReplayPlugin(c["mem_size"])],
                                   {"mem_size": tune.choice([0, 100])})])
'''

_BAD = {
    # name: (study text, replacements, expected "<field>: <what>" start)
    "raises": (TINY + "\nraise RuntimeError('no GPU quota')\n", {},
               "line {raise_line}: RuntimeError: no GPU quota"),
    "unknown_arm_field": (TINY, {'Arm("naive", baseline=True)': 'Arm("naive", basline=True)'},
                          "Arm.basline: unknown field of Arm (did you mean 'baseline'?)"),
    "unknown_plugin_parameter": (TINY, {'EWCPlugin(c["ewc_lambda"])':
                                        'EWCPlugin(c["ewc_lambda"], lamda=1)'},
                                 "arms[ewc].plugins: "),
    "ewc_alpha_above_1": (_RWALK, {},
                          "arms[rwalk].space.ewc_alpha: ewc_alpha must be a number in [0, 1]"),
    "mem_size_0": (_REPLAY, {}, "arms[replay].space.mem_size: mem_size"),
    "negative_lambda": (TINY, {"tune.loguniform(1.0, 100.0)": "tune.uniform(-1.0, 1.0)"},
                        "arms[ewc].space.ewc_lambda: ewc_lambda"),
    "name_escapes_storage": (TINY, {'name="tiny"': 'name="../../etc"'}, "name: must be"),
    "name_is_hidden": (TINY, {'name="tiny"': 'name=".hidden"'}, "name: must be"),
    # --smoke checks live in <storage>/smoke/<name>/: no study may own that folder
    "name_is_smoke": (TINY, {'name="tiny"': 'name="smoke"'}, "name: 'smoke' is reserved"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_input_is_one_line_exit_2_and_starts_nothing(case, tmp_path, capsys):
    import ray

    text, replace, expected = _BAD[case]
    path = write_study(tmp_path, text, replace=replace)
    lines = path.read_text().splitlines()
    raise_line = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("raise ")), 0)
    assert main([str(path), "--storage", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"raycl: error: {path}: {expected.format(raise_line=raise_line)}"), err
    assert not ray.is_initialized()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.py"]  # nothing written


def test_result_store_refuses_a_name_outside_the_storage(tmp_path):
    for name in ("../up", "a/b", "..", ".", "", ".hidden"):
        with pytest.raises(ValueError, match="would leave the storage directory"):
            ResultStore(tmp_path, name)


def test_a_new_run_never_overwrites_existing_results(tmp_path, capsys):
    path = write_study(tmp_path, TINY)
    storage = tmp_path / "results"
    store = ResultStore(storage, "tiny")
    store.set_trial(make_trial("naive", {}, 0), "x", "TERMINATED", {"experience": 4})
    store.write()
    before = {p.name: p.read_bytes() for p in (storage / "tiny").iterdir()}
    assert main([str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "add --resume to continue it, or pass another --storage" in err
    assert err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in (storage / "tiny").iterdir()} == before


def test_storage_that_cannot_be_written_is_refused_before_anything_starts(tmp_path, capsys):
    import ray

    path = write_study(tmp_path, TINY)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the storage folder should be")
    assert main([str(path), "--storage", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raycl: error: --storage {blocker / 'results'}: cannot write there: ")
    assert err.count("\n") == 1 and not ray.is_initialized()
    # --dry-run writes nothing, so it does not need writable storage
    assert main([str(path), "--storage", str(blocker / "results"), "--dry-run"]) == 0
    # a writable storage root is probed without leaving the probe or the study folder behind
    store = ResultStore(tmp_path / "fine", "tiny")
    store.check_writable()
    assert list((tmp_path / "fine").iterdir()) == []


def test_a_full_disk_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    import ray

    from raycl.study import results

    path = write_study(tmp_path, TINY)

    class FullDisk(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(results.pafs, "LocalFileSystem", FullDisk)
    assert main([str(path), "--storage", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raycl: error: --storage {tmp_path / 'results'}: cannot write there: ")
    assert "No space left on device" in err and err.count("\n") == 1
    assert not ray.is_initialized() and not (tmp_path / "results" / "tiny").exists()


# ---- storage faults mid-study ------------------------------------------------------------------
def _report(exp: int, n: int = 2) -> dict:
    m = {"experience": exp, "avg_accuracy": 0.5, "device": "cpu"}
    m.update({f"test_acc_exp_{j:03d}": 0.5 for j in range(n)})
    m.update({f"test_loss_exp_{j:03d}": 1.0 for j in range(n)})
    return m


def test_disk_full_mid_write_keeps_the_last_complete_files(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import raycl.study.results as results

    store = ResultStore(tmp_path, "demo")
    first = make_trial("naive", {}, 0)
    store.add_report(first, "t1", _report(0))
    store.set_trial(first, "t1", "TERMINATED", _report(0))
    store.write()
    folder = tmp_path / "demo"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_write = pq.write_table

    def write_then_fill_the_disk(table, where, filesystem=None, **kwargs):
        with filesystem.open_output_stream(where) as f:  # half a file, then ENOSPC
            f.write(b"PAR1" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    second = make_trial("naive", {}, 1)
    store.add_report(second, "t2", _report(0))
    store.set_trial(second, "t2", "TERMINATED", _report(0))
    monkeypatch.setattr(results.pq, "write_table", write_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        store.write()
    # the previous files are intact and readable; no partial temporary file is left
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert len(pd.read_parquet(folder / "trials.parquet")) == 1

    # the Tune callback reports the failure once and lets the study go on ...
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config

    callback = ParquetCallback(store)
    trial = SimpleNamespace(trial_id="t3", last_result=_report(0),
                            config={"trial": tune_config(make_trial("naive", {}, 2))})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, _report(0))
    callback.on_trial_complete(0, [], trial)
    assert "No space left" in callback.write_error
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # ... and once space is back the next write saves every row held in memory
    monkeypatch.setattr(results.pq, "write_table", real_write)
    callback.on_experiment_end([])
    assert callback.write_error is None
    assert sorted(pd.read_parquet(folder / "trials.parquet")["trial_id"]) == ["t1", "t2", "t3"]


def test_rewrites_wait_in_proportion_to_the_last_write_and_lose_nothing(tmp_path):
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config

    store = ResultStore(tmp_path, "demo")
    callback = ParquetCallback(store, write_factor=1e6)  # the wait after a write: "forever"
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result=_report(1),
                              config={"trial": tune_config(make_trial("naive", {}, i))})
              for i in range(3)]
    for trial in trials:
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, _report(0))
        callback.on_trial_result(0, [], trial, _report(1))
        callback.on_trial_complete(0, [], trial)

    def written() -> list[str]:
        return sorted(pd.read_parquet(tmp_path / "demo" / "trials.parquet")["trial_id"])

    assert written() == ["t0"]  # the first trial's end wrote; the next two wait
    callback.on_step_end(0, [])
    assert written() == ["t0"]
    callback._next_write = 0.0  # the wait is over: the next controller step writes both
    callback.on_step_end(0, [])
    assert written() == ["t0", "t1", "t2"]
    assert len(pd.read_parquet(tmp_path / "demo" / "matrix.parquet")) == 3 * 2 * 2
    callback.on_trial_complete(0, [], trials[0])  # and the end of the run writes in any case
    callback._next_write = float("inf")
    callback.on_experiment_end([])
    assert written() == ["t0", "t1", "t2"] and not callback._dirty


def test_a_finished_trials_tune_records_are_trimmed(tmp_path):
    """On the Ray version installed: if Tune renames these records, this fails (the trim would
    silently stop freeing memory on long studies)."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    from raycl.tune.compat import trim_finished_trial

    meta = _TrainingRunMetadata()
    meta.checkpoint_manager = _CheckpointManager(CheckpointConfig())
    for exp in range(3):
        for name, value in _report(exp).items():
            if isinstance(value, float):
                meta.update_metric(name, value, step=exp + 1)
        folder = tmp_path / f"checkpoint_{exp:06d}"
        folder.mkdir()
        meta.checkpoint_manager.register_checkpoint(
            _TrainingResult(Checkpoint.from_directory(str(folder)), _report(exp)))
    meta.last_result = _report(2)
    latest = meta.checkpoint_manager.latest_checkpoint_result
    before = len(meta.get_json_state())
    trim_finished_trial(SimpleNamespace(run_metadata=meta))
    assert meta.metric_analysis == {} and meta.metric_n_steps == {}
    assert meta.checkpoint_manager.best_checkpoint_results == [latest]
    assert meta.last_result == _report(2)  # what the progress line and the tables read stays
    assert len(meta.get_json_state()) < before / 2
    assert all((tmp_path / f"checkpoint_{e:06d}").exists() for e in range(3))  # files stay


def test_every_ray_internal_raycl_uses_exists_on_the_installed_ray(monkeypatch):
    """raycl.tune.compat is the one place raycl reaches into Ray's non-public API; after a Ray
    upgrade this fails if one of those names is gone (each use degrades silently otherwise)."""
    from ray.tune.experiment import Trial

    from raycl.tune.compat import missing_internals

    assert missing_internals() == []
    monkeypatch.delattr(Trial, "get_error")  # a rename is reported, by name
    assert missing_internals() == ["Trial.get_error"]


def test_stale_temporaries_of_a_killed_driver_are_removed_on_resume(tmp_path):
    store = ResultStore(tmp_path, "demo")
    store.set_trial(make_trial("naive", {}, 0), "t1", "TERMINATED", _report(0))
    store.write()
    stale = tmp_path / "demo" / ".trials.parquet.tmp-99999"
    stale.write_bytes(b"PAR1 cut short")
    again = ResultStore(tmp_path, "demo")
    again.load()
    assert not stale.exists() and len(again.trial_rows()) == 1


def test_checkpoint_temporaries_of_killed_trial_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from raycl.tune.trainable import TEMP_PREFIX, remove_stale_temporaries

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)  # a pid whose process has ended
    folders = {name: tmp_path / f"{TEMP_PREFIX}{pid}-abc" for name, pid in
               (("dead_old", dead), ("alive_old", os.getpid()))}
    folders["dead_new"] = tmp_path / f"{TEMP_PREFIX}{dead}-new"
    folders["other"] = tmp_path / "raycl-ckpt-notapid-x"
    for folder in folders.values():
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"half a checkpoint")
    for name in ("dead_old", "alive_old", "other"):
        os.utime(folders[name], (0, 0))  # changed long ago
    removed = remove_stale_temporaries(tmp_path, min_age_s=600)
    assert removed == [str(folders["dead_old"])]
    # a live process's folder, a fresh one (maybe another PID namespace) and others stay
    assert {n for n, f in folders.items() if f.exists()} == {"alive_old", "dead_new", "other"}


def test_trials_per_batch_splits_every_trial_once_and_validates():
    from raycl.tune.runner import _batches, default_trials_per_batch

    assert _batches(250, 100) == [100, 100, 50]
    assert _batches(100, 100) == [100] and _batches(7, 0) == [7] and _batches(0, 100) == [0]
    assert default_trials_per_batch(2) == 500 and default_trials_per_batch(32) == 640
    assert parser().parse_args(["s.py", "--trials-per-batch", "0"]).trials_per_batch == 0
    with pytest.raises(SystemExit):
        parser().parse_args(["s.py", "--trials-per-batch", "-1"])


# ---- divergence --------------------------------------------------------------------------------
_NAN = '''
from raycl.plugins import StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study


class PoisonLoss(StrategyPlugin):
    """Makes the loss NaN (or inf) at the 4th iteration of experience 1."""

    def __init__(self, value):
        self.value = value

    def before_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1 and strategy.clock.train_exp_iterations == 3:
            strategy.loss = strategy.loss * self.value


study = Study(
    name="nan",
    benchmark=Benchmark("split_digits", n_experiences=2),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("nan", lambda c: [PoisonLoss(float("nan"))], baseline=True),
          Arm("inf", lambda c: [PoisonLoss(float("inf"))], baseline=True)],
    seeds=[0],
)
'''


def test_a_diverging_trial_stops_at_once_and_keeps_its_reports(tmp_path):
    study = load_study(write_study(tmp_path, _NAN))
    for arm, word in (("nan", "NaN"), ("inf", "inf")):
        reports: list = []
        run_trial(study, make_trial(arm, {}, 0), lambda m, s, out=reports: out.append((m, s)))
        assert [m.get("experience") for m, _ in reports] == [0, None]
        (good, state), (last, last_state) = reports
        assert state is not None and last_state is None  # no checkpoint of a diverged model
        assert math.isfinite(good["test_avg_accuracy"])
        assert last[DIVERGED] == (f"training loss became {word} in experience 1, epoch 0, by "
                                  f"iteration 4 of the epoch")
        assert math.isnan(last["test_avg_accuracy"]) and last["device"] == "cpu"


def test_divergence_guard_checks_every_n_iterations_and_at_epoch_end():
    strategy = SimpleNamespace(loss=torch.tensor(1.0), clock=SimpleNamespace(
        train_exp_counter=0, train_exp_epochs=0, train_epoch_iterations=0))
    guard = DivergenceGuard(check_every=4)
    guard.before_training_epoch(strategy)
    for i, value in enumerate([1.0, float("nan"), 2.0]):  # NaN held, not yet checked
        strategy.loss, strategy.clock.train_epoch_iterations = torch.tensor(value), i + 1
        guard.after_training_iteration(strategy)
    with pytest.raises(TrialDiverged, match="became NaN"):  # the epoch's end checks the rest
        guard.after_training_epoch(strategy)
    guard.before_training_epoch(strategy)
    for value in (1e38, 3e38, -3e38, 2.0):  # huge but finite: never a false alarm
        strategy.loss = torch.tensor(value)
        guard.after_training_iteration(strategy)
    guard.after_training_epoch(strategy)
    with pytest.raises(ValueError, match="check_every"):
        DivergenceGuard(0)


def test_a_diverged_trial_is_recorded_as_error_with_its_rows_so_far():
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config

    store = ResultStore("/nonexistent-never-written", "demo")
    store.write = lambda: {}  # type: ignore[method-assign]  # rows only, no files here
    callback = ParquetCallback(store)
    spec = make_trial("ewc", {"ewc_lambda": 1e9}, 0)
    trial = SimpleNamespace(trial_id="t1", config={"trial": tune_config(spec)}, last_result=None)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, _report(0))
    diverged = {"avg_accuracy": math.nan, DIVERGED: "training loss became NaN in experience 1"}
    callback.on_trial_result(0, [], trial, diverged)
    trial.last_result = diverged
    callback.on_trial_complete(0, [], trial)
    frames = store.frames()
    row = frames["trials"].iloc[0]
    assert row["status"] == "ERROR"
    assert row["error"] == "diverged: training loss became NaN in experience 1"
    assert row["experiences_done"] == 1
    assert len(frames["curves"]) == 1 and len(frames["matrix"]) == 2


# ---- checkpoint integrity ----------------------------------------------------------------------
class _NotATensor:
    """A custom class: ``torch.load(weights_only=True)`` must refuse to unpickle it."""


def test_corrupt_checkpoints_are_detected_and_skipped_for_the_previous_one(tmp_path):
    from raycl.tune.trainable import (
        DIGEST_FILE,
        STATE_FILE,
        CorruptCheckpoint,
        read_checkpoint,
        restore_state,
        write_checkpoint,
    )

    fs = pafs.LocalFileSystem()
    folders = []
    for i in range(4):
        folder = tmp_path / "trial" / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        write_checkpoint(folder, {"next_experience": i + 1, "w": torch.full((3,), float(i))})
        folders.append(folder)
    assert read_checkpoint(fs, str(folders[3]))["next_experience"] == 4

    state_3 = folders[3] / STATE_FILE  # killed while written: cut short
    state_3.write_bytes(state_3.read_bytes()[:40])
    state_2 = folders[2] / STATE_FILE  # a flipped byte, same length
    data = bytearray(state_2.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state_2.write_bytes(bytes(data))
    state, notes = restore_state(fs, str(folders[3]))
    assert state["next_experience"] == 2 and torch.equal(state["w"], torch.ones(3))
    assert len(notes) == 2
    assert notes[0].startswith("skipped corrupt checkpoint checkpoint_000003: sha256 mismatch")
    assert notes[1].startswith("skipped corrupt checkpoint checkpoint_000002: sha256 mismatch")

    (folders[1] / DIGEST_FILE).unlink()  # never finished: no digest
    # a pickle that is not weights-only (digest right): refused, never executed
    torch.save({"evil": _NotATensor()}, folders[0] / STATE_FILE)
    (folders[0] / DIGEST_FILE).write_text(
        hashlib.sha256((folders[0] / STATE_FILE).read_bytes()).hexdigest())
    with pytest.raises(CorruptCheckpoint, match="does not load"):
        read_checkpoint(fs, str(folders[0]))
    state, notes = restore_state(fs, str(folders[3]))
    assert state is None and len(notes) == 5
    assert "unreadable" in notes[2] and notes[-1] == "no intact checkpoint: the trial starts over"


# ---- safety ------------------------------------------------------------------------------------
def test_dashboard_is_off_or_local_unless_asked(tmp_path):
    from raycl.tune.runner import ray_init_kwargs

    local = ray_init_kwargs(None)
    assert local["include_dashboard"] is False and local["dashboard_host"] == "127.0.0.1"
    asked = ray_init_kwargs(None, "127.0.0.1")
    assert asked["include_dashboard"] is True and asked["dashboard_host"] == "127.0.0.1"
    assert ray_init_kwargs(None, "0.0.0.0")["dashboard_host"] == "0.0.0.0"
    cluster = ray_init_kwargs("auto")  # a cluster's dashboard is the cluster's business
    assert "include_dashboard" not in cluster and "dashboard_host" not in cluster
    args = parser().parse_args(["s.py", "--dashboard-host", "127.0.0.1"])
    assert args.dashboard_host == "127.0.0.1"
    assert parser().parse_args(["s.py"]).dashboard_host is None


def test_checkpoints_never_unpickle_arbitrary_objects():
    from raycl.study.trial import deserialize_state, serialize_state

    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"raycl-pwned-{os.getpid()}"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import io
    import pickle

    buffer = io.BytesIO()
    torch.save({"x": Exploit()}, buffer)  # would run a shell command if unpickled
    with pytest.raises(pickle.UnpicklingError):
        deserialize_state(buffer.getvalue())
    assert not marker.exists()
    assert deserialize_state(serialize_state({"w": torch.ones(2)}))["w"].sum() == 2


# ---- one study, one run at a time; results belong to one study -------------------------------
_HOLD = """
import sys
from raycl.study import make_trial
from raycl.study.plan import prepare_run

prepared = prepare_run(sys.argv[1], storage=sys.argv[2])
prepared.store.set_trial(make_trial("naive", {}, 0), "first", "TERMINATED", {"experience": 4})
prepared.store.write()
print("holding", flush=True)
sys.stdin.read()  # until the test closes stdin
prepared.release()
"""


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_second_run_of_a_study_is_refused_while_the_first_runs(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    import ray

    first_file = write_study(tmp_path, TINY, name="first.py")
    # another study file with the same name: it must not add its rows to the first's
    second_file = write_study(tmp_path, TINY, name="second.py",
                              replace={"train_epochs=1": "train_epochs=2"})
    storage = tmp_path / "results"
    first = subprocess.Popen([sys.executable, "-c", _HOLD, str(first_file), str(storage)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[1])
    try:
        assert first.stdout.readline() == "holding\n"
        before = _tree(storage)
        lock = storage / "tiny" / ".lock"
        assert lock.exists() and f'"pid": {first.pid}' in lock.read_text()
        for argv in ([str(second_file)], [str(first_file)], [str(first_file), "--resume"],
                     [str(second_file), "--smoke"]):
            expected = 0 if "--smoke" in argv else 2  # a smoke check has a folder of its own
            if expected:
                assert main([*argv, "--storage", str(storage)]) == 2
                err = capsys.readouterr().err
                assert err.count("\n") == 1, err
                assert err.startswith(f"raycl: error: study 'tiny' in {storage / 'tiny'} is "
                                      f"being run by pid {first.pid} on host "
                                      f"{socket.gethostname()}, started "), err
                assert f"remove {lock} if that run is gone" in err
            assert not ray.is_initialized()
            assert _tree(storage) == before  # nothing written, the first's rows intact
        # --dry-run takes no lock: it writes nothing, so it may look while a run goes on
        assert main([str(second_file), "--storage", str(storage), "--dry-run"]) == 0
        capsys.readouterr()
    finally:
        first.stdin.close()
        first.wait(timeout=60)
    assert first.returncode == 0 and not (storage / "tiny" / ".lock").exists()
    # released: the next run of the study goes on (here, a resume of the same study file)
    from raycl.study.plan import prepare_run

    with prepare_run(first_file, storage=str(storage), resume=True) as prepared:
        assert prepared.lock.held and prepared.skipped == 1  # the first run's trial
    assert not (storage / "tiny" / ".lock").exists()


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, capsys):
    import json
    import socket
    import subprocess
    import sys
    import time

    from raycl.study.plan import RunError, prepare_run
    from raycl.study.results import LOCK_STALE_AFTER_S

    path = write_study(tmp_path, TINY)
    storage = tmp_path / "results"
    lock = storage / "tiny" / ".lock"
    lock.parent.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that was a process of this host and is not any more
    here, other = socket.gethostname(), "elsewhere.example"
    old = time.time() - LOCK_STALE_AFTER_S - 60
    cases = [
        # (lock content, modification time or None, stale?, what the takeover line says)
        ({"pid": gone.pid, "host": here, "started_at": "then", "token": "a"}, None, True,
         f"its process {gone.pid} is gone"),
        ({"pid": os.getpid(), "host": here, "started_at": "then", "token": "b"}, None, True,
         "is this one, so the run that wrote it is gone"),  # e.g. a restarted container
        ({"pid": 1, "host": other, "started_at": "then", "token": "c"}, old, True,
         "not refreshed for 11 min"),
        ({"pid": 1, "host": other, "started_at": "then", "token": "d"}, None, False, ""),
        ({"pid": os.getppid(), "host": here, "started_at": "then", "token": "e"}, old, False,
         ""),  # a live process of this host: held, however old
        (None, None, False, ""),  # being written (empty): held until it is old
        (None, old, True, "not refreshed"),
    ]
    for content, mtime, stale, said in cases:
        lock.write_text("" if content is None else json.dumps(content))
        if mtime is not None:
            os.utime(lock, (mtime, mtime))
        if not stale:
            with pytest.raises(RunError, match="is being run by"):
                prepare_run(path, storage=str(storage))
            assert lock.read_text() == ("" if content is None else json.dumps(content))
            continue
        with prepare_run(path, storage=str(storage)) as prepared:
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith(
                "raycl: taking over the stale lock of study 'tiny' ("), err
            assert said in err, err
            mine = json.loads(lock.read_text())
            assert (mine["pid"], mine["host"]) == (os.getpid(), here)
            assert mine["token"] == prepared.lock.info["token"]
            assert not (storage / "tiny" / ".lock.takeover").exists()
        assert not lock.exists()
        lock.parent.mkdir(parents=True, exist_ok=True)


def test_resume_refuses_a_changed_study_and_allow_changed_only_a_wider_one(tmp_path, capsys):
    from raycl.study.plan import prepare_run

    storage = str(tmp_path / "results")
    path = write_study(tmp_path, TINY)
    with prepare_run(path, storage=storage) as prepared:
        done = prepared.planned[:3]
        for trial in done:
            prepared.store.set_trial(trial, trial.trial_key, "TERMINATED", {"experience": 4})
        prepared.store.write()
    # the study that wrote them is recorded with them: study.json and every file's metadata
    import json

    import pyarrow.parquet as pq

    recorded = json.loads((tmp_path / "results" / "tiny" / "study.json").read_text())
    assert recorded["train_epochs"] == 1
    meta = pq.read_schema(tmp_path / "results" / "tiny" / "trials.parquet").metadata
    assert json.loads(meta[b"raycl.study"]) == recorded
    before = _tree(tmp_path / "results")

    def refused(argv, *expected):
        assert main([str(path), "--storage", storage, "--resume", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        for text in expected:
            assert text in err, err
        assert _tree(tmp_path / "results") == before
        return err

    narrowed = {"train_epochs=1,": "train_epochs=2,",
                "tune.loguniform(1.0, 100.0)": "tune.loguniform(1.0, 10.0)"}
    write_study(tmp_path, TINY, replace=narrowed)
    for argv in ([], ["--allow-changed"]):
        refused(argv, "train_epochs: 1 -> 2",
                "arms[ewc].space.ewc_lambda: loguniform(1, 100) -> loguniform(1, 10)")
    # a changed plugin factory (same space) is another study too
    write_study(tmp_path, TINY, replace={'EWCPlugin(c["ewc_lambda"])':
                                         'EWCPlugin(c["ewc_lambda"], fisher="empirical")'})
    refused(["--allow-changed"], "arms[ewc].plugins: [EWCPlugin(", "fisher='empirical')]")
    # an arm removed, fewer samples: narrower, never accepted
    write_study(tmp_path, TINY, replace={"num_samples=2,": "num_samples=1,"})
    refused(["--allow-changed"], "num_samples: 2 -> 1")
    # wider: more samples, another seed, an added arm: refused without --allow-changed ...
    wider = {"num_samples=2,": "num_samples=3,", "seeds=[0, 1],": "seeds=[0, 1, 2],",
             'Arm("naive", baseline=True),':
                 'Arm("naive", baseline=True),\n        Arm("ewc2", lambda c: '
                 '[EWCPlugin(c["ewc_lambda"])], {"ewc_lambda": tune.uniform(1.0, 2.0)}),'}
    write_study(tmp_path, TINY, replace=wider)
    err = refused([], "num_samples: 2 -> 3", "seeds: [0, 1] -> [0, 1, 2]", "arms: + ewc2",
                  "add --allow-changed")
    assert err.startswith("raycl: error: --resume: study 'tiny' changed since ")
    # ... and accepted with it: the old trials are trials of the wider study, kept, not rerun
    with prepare_run(path, storage=storage, resume=True, allow_changed=True) as prepared:
        assert "resuming study 'tiny' with a wider search: num_samples: 2 -> 3" in \
            capsys.readouterr().err
        planned = {t.trial_key for t in prepared.planned}
        assert {t.trial_key for t in done} <= planned
        assert prepared.skipped == 3 and len(prepared.trials) == len(planned) - 3
    # --allow-changed without --resume means nothing: refused
    assert main([str(path), "--storage", storage, "--allow-changed"]) == 2
    assert capsys.readouterr().err == "raycl: error: --allow-changed: only with --resume\n"
    # settings that change no trial (description, resources, statistics) need nothing
    write_study(tmp_path, TINY, replace={"num_samples=2,": "num_samples=2, interval='bootstrap',"
                                                         " description='again',"})
    with prepare_run(path, storage=storage, resume=True, cpus_per_trial=2) as prepared:
        assert prepared.skipped == 3


def test_smoke_checks_have_a_folder_no_study_can_have(tmp_path):
    from raycl.study.plan import prepare_run

    storage = tmp_path / "results"
    path = write_study(tmp_path, TINY)
    # a real study that happens to be named like the old smoke folder
    real = ResultStore(storage, "tiny-smoke")
    real.set_trial(make_trial("naive", {}, 0), "r", "TERMINATED", {"experience": 4})
    real.write()
    before = _tree(storage / "tiny-smoke")
    for _ in range(2):  # a second check replaces the first check, nothing else
        with prepare_run(path, storage=str(storage), smoke=True) as prepared:
            assert prepared.store.uri == str(storage / "smoke" / "tiny")
            assert prepared.study.name == "tiny-smoke"  # its rows say it is a check
            prepared.store.set_trial(prepared.planned[0], "s", "TERMINATED", {"experience": 4})
            prepared.store.write()
        assert _tree(storage / "tiny-smoke") == before
    smoke = pd.read_parquet(storage / "smoke" / "tiny" / "trials.parquet")
    assert list(smoke["study"]) == ["tiny-smoke"]
    assert not (storage / "tiny").exists()


def test_exceptions_that_cross_from_a_trial_to_the_driver_pickle():
    import pickle

    from raycl.study.loader import StudyError
    from raycl.study.plan import RunError
    from raycl.study.results import StudyLocked
    from raycl.tune.trainable import CorruptCheckpoint

    errors = [StudyError("/s/study.py", "line 5", "FileNotFoundError: [Errno 2] No such file"),
              RunError("x"), StudyLocked("y"), CorruptCheckpoint("z"), TrialDiverged("w")]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    back = pickle.loads(pickle.dumps(errors[0]))
    assert (back.path, back.field, back.what) == ("/s/study.py", "line 5",
                                                  "FileNotFoundError: [Errno 2] No such file")


def test_a_study_file_failing_in_a_trial_process_is_reported_once_with_its_cause(tmp_path):
    import math

    from raycl.study.loader import StudyError
    from raycl.study.plan import StudySource
    from raycl.tune.trainable import SETUP_FAILED, setup_failure, setup_failure_report

    source = StudySource(str(tmp_path / "study.py"), TINY, {"metric": "final_avg_accuracy"})
    err = StudyError(source.filename, "line 5", "FileNotFoundError: [Errno 2] No such file or "
                                                "directory: 'classes.txt'")
    report = setup_failure_report(source, err)
    reason = report[SETUP_FAILED]
    assert reason.startswith("the study file does not import in a trial process: "
                             "FileNotFoundError: [Errno 2] No such file or directory: "
                             f"'classes.txt' (line 5 of {source.filename}; working directory")
    assert "\n" not in reason
    # the metrics Tune's scheduler and searcher read are there (NaN), so Tune takes the report
    for column in ("valid_final_avg_accuracy", "test_final_avg_accuracy",
                   "valid_avg_accuracy", "test_avg_accuracy"):
        assert math.isnan(report[column])
    assert setup_failure(SimpleNamespace(last_result=report)) == reason
    assert setup_failure(SimpleNamespace(last_result={"experience": 1})) is None


def test_no_address_means_a_local_ray_of_our_own_and_ray_address_is_honoured(monkeypatch):
    from raycl.tune.runner import local_ray, ray_init_kwargs

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert local_ray(None) and ray_init_kwargs(None)["address"] == "local"
    assert ray_init_kwargs("auto")["address"] == "auto" and not local_ray("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what a Ray job sets
    assert not local_ray(None)
    kwargs = ray_init_kwargs(None)
    assert kwargs["address"] is None  # ray.init reads RAY_ADDRESS itself
    assert "include_dashboard" not in kwargs


def test_object_store_locks_are_written_then_read_back_and_refreshed(tmp_path, monkeypatch,
                                                                      capsys):
    import json
    import time

    import raycl.study.results as results
    from raycl.study.results import StudyLock, StudyLocked

    # a pyarrow file system that is not the local one takes the object-store path (no
    # exclusive create: write, wait, read back)
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    lock_file = tmp_path / "tiny" / ".lock"
    monkeypatch.setattr(results, "LOCK_SETTLE_S", 0.01)
    lock = StudyLock.acquire(fs, "tiny", "s3://bucket/tiny", "tiny")
    assert json.loads(lock_file.read_text())["token"] == lock.info["token"]
    with pytest.raises(StudyLocked, match=r"in s3://bucket/tiny is being run by pid \d+"):
        StudyLock.acquire(fs, "tiny", "s3://bucket/tiny", "tiny")
    lock.release()
    assert not lock_file.exists()

    # two runs that both saw no lock: the one whose write is not there on reading back yields
    other = {"pid": 1, "host": "elsewhere.example", "started_at": "now", "token": "theirs"}
    sleep = time.sleep

    def their_write_lands(seconds):
        lock_file.write_text(json.dumps(other))
        sleep(seconds)

    monkeypatch.setattr(results.time, "sleep", their_write_lands)
    with pytest.raises(StudyLocked, match="pid 1 on host elsewhere.example"):
        StudyLock.acquire(fs, "tiny", "s3://bucket/tiny", "tiny")
    monkeypatch.setattr(results.time, "sleep", sleep)
    assert json.loads(lock_file.read_text()) == other  # theirs, untouched

    # another host's lock not refreshed for longer than the timeout is stale: taken over
    old = time.time() - results.LOCK_STALE_AFTER_S - 1
    os.utime(lock_file, (old, old))
    monkeypatch.setattr(results, "LOCK_REFRESH_S", 0.05)
    lock = StudyLock.acquire(fs, "tiny", "s3://bucket/tiny", "tiny")
    assert capsys.readouterr().err.startswith(
        "raycl: taking over the stale lock of study 'tiny' (pid 1 on host elsewhere.example")
    try:
        # the holder refreshes its lock, so a long study is never stale
        written = lock_file.stat().st_mtime
        deadline = time.monotonic() + 10
        while lock_file.stat().st_mtime == written and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock_file.stat().st_mtime > written
        # ... and says so once if another run took it over meanwhile
        # (an object store has no compare-and-swap: a refresh that read its own token just
        # before this write may put it back once; the other run keeps writing, as its own
        # refreshes would)
        deadline = time.monotonic() + 10
        while "no longer this run's" not in capsys.readouterr().err:
            assert time.monotonic() < deadline, "the take-over was never noticed"
            if json.loads(lock_file.read_text()) != other:
                lock_file.write_text(json.dumps(other))
            time.sleep(0.05)
    finally:
        lock.release()
    assert json.loads(lock_file.read_text()) == other  # not this run's to remove


# ---- storage faults (issue 14 item 7): one line, exit 2, before Ray starts ------------------
@pytest.mark.parametrize("uri, what", [
    ("s3://", "names no bucket"),
    ("S3:///x", "names no bucket"),
    ("gs://?endpoint_override=x", "names no bucket"),
    ("foo://bar/x", "unknown scheme 'foo://'"),
    ("hdfs://nn/x", "HDFS needs a Java runtime"),
])
def test_storage_uris_that_cannot_work_are_one_line_naming_the_storage(uri, what, tmp_path,
                                                                       capsys, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    path = write_study(tmp_path, TINY)
    assert main([str(path), "--storage", uri]) == 2
    err = capsys.readouterr().err
    shown = uri.split("?")[0]  # a URI's query (endpoint ...) is never printed
    assert err.startswith(f"raycl: error: --storage {shown}: {what}") and err.count("\n") == 1, \
        err


def test_a_name_too_long_for_a_folder_is_refused_by_validation(tmp_path, capsys):
    path = write_study(tmp_path, TINY, replace={'name="tiny"': f'name="{"x" * 300}"'})
    assert main([str(path), "--storage", str(tmp_path / "results"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"raycl: error: {path}: name: must be at most 100 characters, got 300\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("table", ["trials", "curves"])
def test_resume_with_an_unreadable_table_is_one_line_and_changes_nothing(table, tmp_path,
                                                                          capsys):
    storage = tmp_path / "results"
    path = write_study(tmp_path, TINY)
    store = ResultStore(storage, "tiny")
    store.set_trial(make_trial("naive", {}, 0), "x", "TERMINATED", _report(4))
    store.write()
    (storage / "tiny" / f"{table}.parquet").write_bytes(b"not parquet")
    before = {p.name: p.read_bytes() for p in (storage / "tiny").iterdir()}
    assert main([str(path), "--storage", str(storage), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"raycl: error: {storage / 'tiny' / table}.parquet is unreadable (")
    assert err.count("\n") == 1 and "cannot be rebuilt from the other tables" in err
    assert {p.name: p.read_bytes() for p in (storage / "tiny").iterdir()} == before


def test_a_trial_that_cannot_save_its_checkpoint_on_a_full_disk_stops_the_study(tmp_path):
    """The trial side of a full storage: not raised (Tune would retry it, and every other
    trial would fail the same way) but reported with the cause, which stops the study."""
    from raycl.tune.callbacks import ParquetCallback, StudyStopper
    from raycl.tune.compat import tune_config
    from raycl.tune.trainable import SETUP_FAILED, STORAGE_FULL_ERRNOS, stop_report

    assert errno.ENOSPC in STORAGE_FULL_ERRNOS
    source = SimpleNamespace(settings={"metric": "final_avg_accuracy"})
    report = stop_report(source, "cannot save a checkpoint: No space left on device")
    assert math.isnan(report["valid_final_avg_accuracy"])
    stopper = StudyStopper()
    store = ResultStore(tmp_path, "demo")
    callback = ParquetCallback(store, stopper=stopper)
    trial = SimpleNamespace(trial_id="t1", last_result=report,
                            config={"trial": tune_config(make_trial("naive", {}, 0))})
    callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trial, {**_report(0), "trial_id": "t1"})
    callback.on_trial_complete(0, [], trial)
    assert stopper.stop_all() and stopper.failure == report[SETUP_FAILED]
    rows = pd.read_parquet(tmp_path / "demo" / "trials.parquet")
    assert rows["status"].tolist() == ["ERROR"]
    assert rows["error"].tolist() == ["cannot save a checkpoint: No space left on device"]
    assert len(pd.read_parquet(tmp_path / "demo" / "curves.parquet")) == 1  # its report kept


def test_a_full_disk_under_the_driver_stops_the_study_and_keeps_the_written_rows(
        tmp_path, monkeypatch):
    import raycl.study.results as results
    from raycl.tune.callbacks import ParquetCallback, StudyStopper
    from raycl.tune.compat import tune_config

    store = ResultStore(tmp_path, "demo")
    stopper = StudyStopper()
    callback = ParquetCallback(store, write_factor=0.0, stopper=stopper)  # write at every end
    trials = [SimpleNamespace(trial_id=f"t{i}", last_result=_report(1),
                              config={"trial": tune_config(make_trial("naive", {}, i))})
              for i in range(2)]
    callback.on_trial_start(0, [], trials[0])
    callback.on_trial_result(0, [], trials[0], _report(0))
    callback.on_trial_complete(0, [], trials[0])
    written = (tmp_path / "demo" / "trials.parquet").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.pq, "write_table", full)
    callback.on_trial_start(0, [], trials[1])
    callback.on_trial_result(0, [], trials[1], _report(0))
    callback.on_trial_complete(0, [], trials[1])
    assert stopper.stop_all() and "No space left on device" in stopper.failure
    assert (tmp_path / "demo" / "trials.parquet").read_bytes() == written  # the last complete


def test_a_failed_trial_keeps_every_attempts_traceback_in_the_study_folder(tmp_path):
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config
    from raycl.tune.progress import ProgressCallback

    store = ResultStore(tmp_path, "demo")
    callback = ParquetCallback(store)
    out = __import__("io").StringIO()
    progress = ProgressCallback(1, "valid_final_avg_accuracy", "max", out=out,
                                error_files=callback.error_files)
    errors = tmp_path / "ray-error.txt"
    trial = SimpleNamespace(trial_id="t1", last_result=_report(0), status="RUNNING",
                            error_file=str(errors),
                            config={"trial": tune_config(make_trial("naive", {}, 0))})
    for attempt in (1, 2):
        errors.write_text(f"Traceback (most recent call last):\n  File x\n"
                          f"\x1b[36mray::ImplicitFunc.train()\x1b[39m\n"
                          f"RuntimeError: boom {attempt}\n")
        for cb in (callback, progress):
            (cb.on_trial_recover if attempt == 1 else cb.on_trial_error)(0, [trial], trial)
    key = make_trial("naive", {}, 0).trial_key
    text = (tmp_path / "demo" / "errors" / f"{key}.txt").read_text()
    assert text.count("==== attempt") == 2 and "boom 1" in text and "boom 2" in text
    assert "\x1b[" not in text
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("trial ")]
    assert lines == [f"trial t1 (naive, seed 0) errored after 2 attempts: RuntimeError: boom 2 "
                     f"(traceback: {tmp_path / 'demo' / 'errors' / key}.txt)"]
    assert pd.read_parquet(tmp_path / "demo" / "trials.parquet")["error"].tolist() == [
        "RuntimeError: boom 2"]


def test_a_restarted_trials_partial_reports_are_dropped(tmp_path):
    """A trial rerun from its start (the driver was killed and the study resumed) must not keep
    the reports of its first run past where the rerun got: its curves hold the rerun's only."""
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config

    spec = make_trial("naive", {}, 0)
    first = ResultStore(tmp_path, "demo")
    killed = ParquetCallback(first)
    old = SimpleNamespace(trial_id="old", last_result=_report(2),
                          config={"trial": tune_config(spec)})
    killed.on_trial_start(0, [], old)
    for k in range(3):
        killed.on_trial_result(0, [], old, _report(k))
    killed.on_experiment_end([])  # written; then the driver dies before the trial ends

    resumed = ResultStore(tmp_path, "demo")
    resumed.load()
    callback = ParquetCallback(resumed)
    new = SimpleNamespace(trial_id="new", last_result=_report(1),
                          config={"trial": tune_config(spec)})
    callback.on_trial_start(0, [], new)
    for k in range(2):  # ASHA (say) stops the rerun after two experiences this time
        callback.on_trial_result(0, [], new, _report(k))
    callback.on_trial_complete(0, [], new)
    callback.on_experiment_end([])
    curves = pd.read_parquet(tmp_path / "demo" / "curves.parquet")
    assert sorted(curves["experience"]) == [0, 1] and set(curves["trial_id"]) == {"new"}
    matrix = pd.read_parquet(tmp_path / "demo" / "matrix.parquet")
    assert set(matrix["trial_id"]) == {"new"} and matrix["trained_exp"].max() == 1


def test_a_cluster_that_cannot_place_a_trial_stops_the_study_after_the_timeout(monkeypatch):
    from raycl.tune import callbacks
    from raycl.tune.callbacks import PlacementWatch, StudyStopper

    now = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    stopper = StudyStopper()
    watch = PlacementWatch(stopper, "4 CPU and 1 GPU, and the largest node has 2 CPU and 0 GPU",
                           timeout_s=60)
    now[0] += 59
    watch.on_step_end(0, [])
    assert not stopper.stop_all()
    now[0] += 2
    watch.on_step_end(0, [])
    assert stopper.stop_all() and stopper.failure.startswith(
        "no node of the Ray cluster could run a trial for 60 s: it asks for 4 CPU and 1 GPU")
    placed = StudyStopper()
    watch = PlacementWatch(placed, "1 GPU", timeout_s=60)
    watch.on_trial_start(0, [], None)  # a node was added in time
    now[0] += 3600
    watch.on_step_end(0, [])
    assert not placed.stop_all()


def test_cli_numbers_and_abbreviations_are_checked(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["s.py", "--num-samples", "two"])
    assert "--num-samples: must be a whole number, got 'two'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser().parse_args(["s.py", "--num-sample", "2"])  # no silent abbreviation
    assert "unrecognized arguments: --num-sample" in capsys.readouterr().err


def test_checkpoints_are_pruned_as_trials_run_and_dropped_when_they_finish(tmp_path):
    """Disk (issue 16 item 5): a running trial keeps its newest `keep_checkpoints`; a finished
    one keeps none unless asked to keep its last (the per_experience protocol always does)."""
    from raycl.study.protocol import keep_final_checkpoint
    from raycl.tune.callbacks import ParquetCallback
    from raycl.tune.compat import tune_config

    def trial(i: int) -> SimpleNamespace:
        folder = tmp_path / "demo" / "_ray" / "run" / f"t{i}"
        return SimpleNamespace(trial_id=f"t{i}", last_result=_report(1), path=str(folder),
                               config={"trial": tune_config(make_trial("naive", {}, i))})

    def report(t: SimpleNamespace, callback: ParquetCallback, k: int) -> None:
        (Path(t.path) / f"checkpoint_{k:06d}").mkdir(parents=True)
        (Path(t.path) / f"checkpoint_{k:06d}" / "state.pt").write_bytes(b"x")
        callback.on_trial_result(0, [], t, _report(k))

    def left(t: SimpleNamespace) -> list[str]:
        return sorted(p.name for p in Path(t.path).iterdir())

    store = ResultStore(tmp_path, "demo")
    dropping = ParquetCallback(store, keep_checkpoints=2, keep_final_checkpoint=False)
    keeping = ParquetCallback(store, keep_checkpoints=2, keep_final_checkpoint=True)
    a, b = trial(0), trial(1)
    for callback, t in ((dropping, a), (keeping, b)):
        callback.on_trial_start(0, [], t)
        for k in range(12):  # 12: the newest two by number, not by name
            report(t, callback, k)
            assert left(t) == [f"checkpoint_{j:06d}" for j in range(max(0, k - 1), k + 1)]
        t.checkpoint = SimpleNamespace(path=f"{t.path}/checkpoint_000011")
    dropping.on_trial_complete(0, [], a)
    keeping.on_trial_complete(0, [], b)
    assert left(a) == [] and left(b) == ["checkpoint_000011"]
    rows = store.frames()["trials"].set_index("trial_id")["checkpoint"]
    assert rows["t0"] is None and rows["t1"] == f"{b.path}/checkpoint_000011"

    study = load_study(write_study(tmp_path, TINY))
    assert study.keep_checkpoints == 2 and not keep_final_checkpoint(study)
    assert keep_final_checkpoint(study.__class__(**{**study.__dict__,
                                                    "selection": "per_experience"}))


class _Terminal(__import__("io").StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_each_running_trial_and_the_time_left(monkeypatch):
    """Issue 16 item 3: a line per running trial (arm, seed, experience k/N, latest accuracy),
    redrawn in place on a terminal, printed whole in a log, and the time left once a trial
    has finished."""
    import io

    from raycl.tune import progress as progress_module
    from raycl.tune.compat import tune_config
    from raycl.tune.progress import ProgressCallback

    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])

    def trial(arm: str, seed: int) -> SimpleNamespace:
        params = {} if arm == "naive" else {"ewc_lambda": 1.0}
        return SimpleNamespace(trial_id=f"{arm}{seed}", status="RUNNING", last_result={},
                               config={"trial": tune_config(make_trial(arm, params, seed))})

    def result(k: int, acc: float) -> dict:
        return {"experience": k, "valid_avg_accuracy": acc, "valid_final_avg_accuracy": acc}

    for out in (io.StringIO(), _Terminal()):
        now[0] = 0.0
        shown = ProgressCallback(4, "valid_final_avg_accuracy", "max", out=out, log_every=0,
                                 n_experiences=5)
        a, b = trial("naive", 0), trial("ewc", 1)
        for t in (a, b):
            shown.on_trial_start(0, [a, b], t)
        now[0] = 10.0
        shown.on_trial_result(0, [a, b], a, result(0, 0.91))
        shown.on_trial_result(0, [a, b], a, result(1, 0.62))
        assert shown.trial_lines() == [
            "  ewc            seed 1   experience 0/5  valid_avg_accuracy -",
            "  naive          seed 0   experience 2/5  valid_avg_accuracy 0.6200"]
        assert shown.time_left() is None and "left" not in shown.line()
        now[0] = 40.0
        a.status = "TERMINATED"
        shown.on_trial_complete(0, [a, b], a)
        # one trial took 40 s; 2 still to start, b has ~0 s of its 40 left; 1 running
        assert shown.time_left() == pytest.approx(80.0)
        assert shown.line().endswith("| ~1m20s left")
        assert [ln.split()[0] for ln in shown.trial_lines()] == ["ewc"]
    text = out.getvalue()
    # the terminal's block was redrawn in place: every redraw of a two-line block first moves
    # up one line and clears it
    assert text.count("\x1b[1A\x1b[2K") >= 3


def test_study_callbacks_must_be_tune_callbacks_and_trackers_need_their_package(tmp_path,
                                                                                capsys,
                                                                                monkeypatch):
    import importlib.util

    from raycl.study.plan import RunError
    from raycl.tune.trackers import tracker_callbacks

    path = write_study(tmp_path, TINY, replace={"num_samples=2,": "num_samples=2, "
                                                                 "callbacks=[print],"})
    assert main([str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        f"raycl: error: {path}: callbacks[0]: must be a Ray Tune callback")
    store = ResultStore(tmp_path, "tiny")
    assert len(tracker_callbacks(["tensorboard", "tensorboard"], "tiny", store)) == 1
    with pytest.raises(RunError, match="--tracker neptune: unknown; choose one of "):
        tracker_callbacks(["neptune"], "tiny", store)
    find_spec = importlib.util.find_spec
    for name, package in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow"),
                          ("wandb", "wandb")):
        with monkeypatch.context() as patch:  # as on a machine without the package
            patch.setattr(importlib.util, "find_spec",
                          lambda n, *a, _p=package: None if n == _p else find_spec(n, *a))
            with pytest.raises(RunError, match=f"--tracker {name}: needs the {package} "):
                tracker_callbacks([name], "tiny", store)
    if find_spec("mlflow") is not None:
        # a store MLflow cannot open: one line before any trial, not Tune's traceback
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
        with pytest.raises(RunError) as error:
            tracker_callbacks(["mlflow"], "tiny", store)
        assert str(error.value).startswith("--tracker mlflow: nosuchscheme://x: ")
        assert "\n" not in str(error.value)
        # the default file store sits beside the results: not on remote storage
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        remote = ResultStore.__new__(ResultStore)
        remote.uri = "s3://bucket/studies/tiny"
        with pytest.raises(RunError, match="--tracker mlflow: set MLFLOW_TRACKING_URI"):
            tracker_callbacks(["mlflow"], "tiny", remote)
