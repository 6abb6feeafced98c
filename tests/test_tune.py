"""Studies on a real (local) Ray: fake GPUs, a trial that dies, a killed driver, Optuna + ASHA.

One Ray instance (2 CPUs, 2 fake GPUs) serves the whole module: starting Ray costs ~5 s here.
The killed-driver test runs the CLI as a subprocess joined to that instance with ``--address``,
so killing it (by pid) leaves no Ray processes of its own behind.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from study_files import CHECKPOINT_KILLS, DIES, ONE_TRIAL, READS_RELATIVE, TINY, write_study

from raycl.study.plan import prepare_run
from raycl.tune.runner import run_study

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False,
                       logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _wait_for(condition, what: str, driver: subprocess.Popen | None = None,
              timeout: float = 300.0) -> None:
    """Poll ``condition`` every 50 ms until it holds; fail saying ``what`` did not happen when
    the time is up or the driver (if given) ended first, with the driver's output. Generous:
    a shared CI machine may be slow, but a wait never carries on silently."""
    deadline = time.monotonic() + timeout
    while not condition():
        if driver is not None and driver.poll() is not None:
            pytest.fail(f"the driver ended (exit {driver.returncode}) before {what}:\n"
                        f"{driver.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _intervals(log: Path) -> pd.DataFrame:
    rows = [line.split() for line in log.read_text().splitlines()]
    return pd.DataFrame(rows, columns=["pid", "gpu", "start", "end"]).astype(
        {"start": float, "end": float})


def test_fake_gpus_one_trial_per_gpu_and_a_killed_trial_resumes(ray_address, tmp_path):
    path = write_study(tmp_path, DIES)
    out = io.StringIO()
    outcome = run_study(prepare_run(path, storage=str(tmp_path / "results"), gpus_per_trial=1),
                        out=out)
    assert (outcome.finished, outcome.errored, outcome.interrupted) == (4, 2, False)
    printed = out.getvalue()
    assert "running (1 after a failure)" in printed  # the killed trial, restarting
    # one line per failed trial, pointing to every attempt's traceback in the study folder
    failed = [ln for ln in printed.splitlines() if " errored after " in ln]
    assert len(failed) == 2, printed
    for line in failed:
        assert ": RuntimeError: broken on purpose (traceback: " in line
        where = Path(line.rpartition("(traceback: ")[2].rstrip(")"))
        assert where.parent == tmp_path / "results" / "dies" / "errors"
        attempts = int(line.split(" errored after ")[1].split()[0])
        assert attempts == 2  # max_failures=1: one retry
        assert where.read_text().count("==== attempt") == attempts
        assert 'raise RuntimeError("broken on purpose")' in where.read_text()  # the stack
    assert "Traceback" not in printed

    # every experience of every attempt ran on its own fake GPU: never two at once on one GPU
    spans = _intervals(tmp_path / "gpu.log")
    assert set(spans["gpu"]) == {"0", "1"}
    for _, a in spans.iterrows():
        overlapping = spans[(spans["start"] < a["end"]) & (spans["end"] > a["start"])]
        assert len(overlapping) <= 2
        assert overlapping["gpu"].is_unique, overlapping

    trials = pd.read_parquet(outcome.paths["trials"])
    broken = trials[trials["arm"] == "broken"]
    assert set(broken["status"]) == {"ERROR"} and (broken["experiences_done"] == 1).all()
    assert broken["error"].str.contains("RuntimeError: broken on purpose").all()
    trials = trials[trials["arm"] != "broken"]
    assert len(trials) == 4 and set(trials["status"]) == {"TERMINATED"}
    assert (trials["experiences_done"] == 5).all()
    # Ray granted a GPU, torch sees none: the trial trained on the CPU and recorded both facts
    assert set(trials["device"]) == {"cpu"} and set(trials["gpu_ids"]) <= {"0", "1"}
    curves = pd.read_parquet(outcome.paths["curves"])
    assert curves["device_note"].str.contains("torch sees no CUDA device").all()
    assert not curves.duplicated(["trial_key", "experience"]).any()
    assert len(curves) == 4 * 5 + 2 * 1  # the errored trials' first experience is kept
    matrix = pd.read_parquet(outcome.paths["matrix"])
    assert len(matrix) == 2 * (4 * 5 + 2 * 1) * 5  # a validation and a test row each
    assert not matrix.duplicated(["trial_key", "split", "trained_exp", "eval_exp"]).any()

    # one trial of "dies" ended its process after experience 2; it went on from its checkpoint
    assert (tmp_path / "died.marker").exists()
    restarted = curves[curves["resumed_from"] > 0]
    assert list(restarted["arm"].unique()) == ["dies"]
    assert restarted["resumed_from"].unique().tolist() == [2]
    assert sorted(restarted["experience"]) == [2, 3, 4]
    # ... and its accuracy matrix equals the uninterrupted twin's ("clean", same seed)
    cols = ["seed", "trained_exp", "eval_exp", "accuracy", "loss"]
    for seed in (0, 1):
        clean = matrix[(matrix["arm"] == "clean") & (matrix["seed"] == seed)][cols]
        dies = matrix[(matrix["arm"] == "dies") & (matrix["seed"] == seed)][cols]
        pd.testing.assert_frame_equal(clean.reset_index(drop=True), dies.reset_index(drop=True))


def test_trial_killed_while_writing_its_checkpoint_resumes_from_the_last_complete_one(
        ray_address, tmp_path):
    path = write_study(tmp_path, CHECKPOINT_KILLS)
    outcome = run_study(prepare_run(path, storage=str(tmp_path / "results"), gpus_per_trial=0),
                        out=io.StringIO())
    assert (outcome.finished, outcome.errored, outcome.interrupted) == (6, 0, False)
    for stage in ("cut_write", "cut_upload"):  # each kill happened, in a trial process
        assert int((tmp_path / f"{stage}.marker").read_text()) != os.getpid()

    curves = pd.read_parquet(outcome.paths["curves"])
    assert len(curves) == 6 * 5 and not curves.duplicated(["trial_key", "experience"]).any()
    restarted = curves[curves["resumed_from"] > 0]
    # killed while writing experience 1's checkpoint: restarted from experience 0's (1 done);
    # killed while experience 3's was copied to storage: from experience 2's (3 done)
    starts = restarted.groupby("arm")["resumed_from"].unique().map(list).to_dict()
    assert starts == {"cut_write": [1], "cut_upload": [3]}
    assert sorted(restarted[restarted["arm"] == "cut_write"]["experience"]) == [1, 2, 3, 4]
    assert sorted(restarted[restarted["arm"] == "cut_upload"]["experience"]) == [3, 4]

    # the resumed trials learned exactly what their uninterrupted twins did
    matrix = pd.read_parquet(outcome.paths["matrix"])
    assert len(matrix) == 2 * 6 * 5 * 5  # a validation and a test row each
    cols = ["seed", "trained_exp", "eval_exp", "accuracy", "loss"]
    for arm in ("cut_write", "cut_upload"):
        for seed in (0, 1):
            clean = matrix[(matrix["arm"] == "clean") & (matrix["seed"] == seed)][cols]
            cut = matrix[(matrix["arm"] == arm) & (matrix["seed"] == seed)][cols]
            pd.testing.assert_frame_equal(clean.reset_index(drop=True),
                                          cut.reset_index(drop=True))

    # keep_final_checkpoint: each finished trial kept its last checkpoint only (the others
    # were pruned as it ran), complete, and its trials row points to it
    import pyarrow.fs as pafs

    from raycl.tune.trainable import read_checkpoint

    folders = sorted((tmp_path / "results" / "cuts" / "_ray").rglob("checkpoint_*"))
    trials = pd.read_parquet(outcome.paths["trials"])
    assert sorted(map(str, folders)) == sorted(trials["checkpoint"])
    for folder in folders:
        state = read_checkpoint(pafs.LocalFileSystem(), str(folder))
        assert state["next_experience"] == 5


SLOW = {
    # a pause after each experience: every trial lasts at least ~0.75 s on any machine
    "from raycl.study import": "import time\n\nfrom raycl.plugins import StrategyPlugin\n"
                              "from raycl.study import",
    "study = Study(": "class Pause(StrategyPlugin):\n"
                      "    def after_training_exp(self, strategy, **kwargs):\n"
                      "        time.sleep(0.15)\n\n\nstudy = Study(",
    'Arm("naive", baseline=True)': 'Arm("naive", lambda c: [Pause()], baseline=True)',
    'lambda c: [EWCPlugin(c["ewc_lambda"])]': 'lambda c: [EWCPlugin(c["ewc_lambda"]), Pause()]',
    'lambda c: [SynapticIntelligencePlugin(c["si_lambda"])]':
        'lambda c: [SynapticIntelligencePlugin(c["si_lambda"]), Pause()]',
    "num_samples=2,": "num_samples=1,",
}


#: SLOW plus an arm whose loss turns NaN in experience 1: it must end in ERROR, rows kept.
DIVERGING = {
    **SLOW,
    "study = Study(": "class Poison(StrategyPlugin):\n"
                      "    def before_backward(self, strategy, **kwargs):\n"
                      "        if strategy.clock.train_exp_counter == 1:\n"
                      "            strategy.loss = strategy.loss * float('nan')\n\n\n"
                      "class Pause(StrategyPlugin):\n"
                      "    def after_training_exp(self, strategy, **kwargs):\n"
                      "        time.sleep(0.15)\n\n\nstudy = Study(",
    'Arm("naive", baseline=True)': 'Arm("naive", lambda c: [Pause()], baseline=True),\n'
                                   '        Arm("nan", lambda c: [Poison()], baseline=True)',
}


def _files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_driver_killed_three_times_then_resumed_loses_and_duplicates_nothing(
        ray_address, tmp_path, monkeypatch):
    from raycl.study import load_study, plan_trials, run_trial

    files, work, home = tmp_path / "files", tmp_path / "work", tmp_path / "home"
    for folder in (files, work, home):
        folder.mkdir()
    path = write_study(files, TINY, replace=DIVERGING)
    # default --storage: ./results of the driver's working directory, which must hold nothing else
    # 4 Tune runs of at most 3 trials: kills and the resume cross batch boundaries
    command = [sys.executable, "-m", "raycl.study", str(path), "--address", ray_address,
               "--gpus-per-trial", "0", "--trials-per-batch", "3"]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    token = Path.home() / ".ray" / "auth_token"  # the local Ray's token, which ray.init wrote
    if token.exists() and "RAY_AUTH_TOKEN_PATH" not in env:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    folder = work / "results" / "tiny"
    trials_file = folder / "trials.parquet"

    def rows() -> int:
        return len(pd.read_parquet(trials_file)) if trials_file.exists() else 0

    def kill_when(ready, what: str) -> None:
        driver = subprocess.Popen([*command, *(["--resume"] if folder.exists() else [])],
                                  cwd=work, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for(ready, what, driver)
            os.kill(driver.pid, signal.SIGKILL)  # at once: no cleanup, no last write
        finally:
            if driver.poll() is None:
                driver.kill()
            driver.communicate(timeout=60)

    kill_when(lambda: (folder / "_ray").exists(), "Tune starting")  # 1: nothing finished
    first = rows()
    kill_when(lambda: rows() >= first + 2, "two more trials ending")  # 2: trials finishing
    second = rows()
    kill_when(lambda: rows() >= second + 1, "another trial ending")  # 3: trials in flight
    before = pd.read_parquet(trials_file)  # readable after every kill: atomic rewrites
    done_before = before[before["status"] == "TERMINATED"]
    assert len(before) >= 3 and 1 <= len(done_before) < 8

    final = subprocess.run([*command, "--resume"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=240)
    # the 'nan' arm's trials diverge: recorded as ERROR, yet the study itself succeeded
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "errored (2 diverged)" in final.stdout
    assert f"({len(before[before['status'] == 'TERMINATED'])} done before)" in final.stdout

    # the same trials as an uninterrupted study, each exactly once
    trials = pd.read_parquet(trials_file)
    study = load_study(path)
    planned = {t.trial_key: t for t in plan_trials(study)}
    assert len(trials) == len(planned) == 10 and set(trials["trial_key"]) == set(planned)
    diverged = trials[trials["arm"] == "nan"]
    assert set(diverged["status"]) == {"ERROR"} and (diverged["experiences_done"] == 1).all()
    assert diverged["error"].str.startswith("diverged: training loss became NaN in "
                                            "experience 1").all()
    ok = trials[trials["arm"] != "nan"]
    assert set(ok["status"]) == {"TERMINATED"} and (ok["experiences_done"] == 5).all()
    # finished trials were not rerun: same Ray trial ids as before the kills
    kept = trials.set_index("trial_key").loc[done_before["trial_key"], "trial_id"]
    assert kept.tolist() == done_before["trial_id"].tolist()
    matrix = pd.read_parquet(folder / "matrix.parquet")
    assert len(matrix) == 2 * (8 * 5 + 2 * 1) * 5  # a validation and a test row each
    assert not matrix.duplicated(["trial_key", "split", "trained_exp", "eval_exp"]).any()
    curves = pd.read_parquet(folder / "curves.parquet")
    assert len(curves) == 8 * 5 + 2 * 1
    assert not curves.duplicated(["trial_key", "experience"]).any()

    # identical metrics to an uninterrupted run of each trial (deterministic seeds)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the study's pauses
    columns = [c for c in curves.columns if c.startswith(("test_acc_exp_", "test_loss_exp_"))]
    for key in ok["trial_key"]:
        reports: list = []
        run_trial(study, planned[key], lambda m, s, out=reports: out.append(m))
        mine = curves[curves["trial_key"] == key].sort_values("experience")
        expected = pd.DataFrame(reports)[columns]
        pd.testing.assert_frame_equal(mine[columns].reset_index(drop=True), expected,
                                      check_dtype=False)

    # nothing written outside the storage folder: Ray's files are under <storage>/tiny/_ray
    assert {p.split("/")[0] for p in _files_under(work)} == {"results"}
    outside_ray = {p for p in _files_under(folder) if not p.startswith("_ray/")}
    assert outside_ray == {"trials.parquet", "matrix.parquet", "curves.parquet",
                           "selection.parquet", "comparisons.parquet", "study.json"}
    assert _files_under(home) == set()


def test_ctrl_c_stops_the_running_batch_and_starts_no_other(ray_address, tmp_path):
    path = write_study(tmp_path, TINY, replace=SLOW)
    storage = tmp_path / "results"
    command = [sys.executable, "-m", "raycl.study", str(path), "--address", ray_address,
               "--gpus-per-trial", "0", "--trials-per-batch", "2", "--storage", str(storage)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trials_file = storage / "tiny" / "trials.parquet"
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: trials_file.exists() and len(pd.read_parquet(trials_file)) >= 1,
                  "a first trial ending", driver)
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=120)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 1, output[-3000:]
    assert "the study was interrupted: run the same command with --resume" in output
    # 10 trials in batches of 2: the interrupted batch was the last to start
    runs = [p for p in (storage / "tiny" / "_ray").iterdir() if p.is_dir()]
    assert 1 <= len(runs) <= 2, runs
    trials = pd.read_parquet(trials_file)
    assert 1 <= len(trials) <= 4 and trials["trial_key"].is_unique


def test_optuna_search_with_asha(ray_address, tmp_path):
    pytest.importorskip("optuna")
    # the si arm's trials never learn: at chance they rank last at their rungs, so ASHA
    # (reduction factor 2) stops them early, unless one is the first to reach every rung;
    # FIFO would run them to the end
    path = write_study(tmp_path, TINY, replace={
        "num_samples=2,": "num_samples=2, search='optuna', scheduler='asha',",
        '{"si_lambda": tune.grid_search([0.1, 1.0])}': '{"si_lambda": tune.uniform(0.1, 1.0)}',
        "from raycl.study import": "from raycl.plugins import StrategyPlugin\n"
                                  "from raycl.study import",
        "study = Study(": "class Frozen(StrategyPlugin):\n"
                          "    def after_backward(self, strategy, **kwargs):\n"
                          "        strategy.optimizer.zero_grad(set_to_none=False)\n\n\n"
                          "study = Study(",
        'lambda c: [SynapticIntelligencePlugin(c["si_lambda"])]':
            'lambda c: [SynapticIntelligencePlugin(c["si_lambda"]), Frozen()]'})
    # three Tune runs (4 + 4 + 2 trials) share one Optuna searcher and one ASHA scheduler
    outcome = run_study(prepare_run(path, storage=str(tmp_path / "results"), gpus_per_trial=0),
                        out=io.StringIO(), trials_per_batch=4)
    assert (outcome.started, outcome.errored, outcome.interrupted) == (10, 0, False)
    runs = [p.name for p in (tmp_path / "results" / "tiny" / "_ray").iterdir() if p.is_dir()]
    assert sorted(r.rsplit("-", 1)[1] for r in runs) == ["b000", "b001", "b002"]
    trials = pd.read_parquet(outcome.paths["trials"])
    assert len(trials) == 10 and set(trials["status"]) == {"TERMINATED"}
    for arm, param in (("ewc", "param_ewc_lambda"), ("si", "param_si_lambda")):
        rows = trials[trials["arm"] == arm]
        assert rows[param].nunique() == 2  # two configs chosen by Optuna ...
        assert (rows.groupby(param)["seed"].apply(sorted) == pd.Series(
            [[0, 1], [0, 1]], index=sorted(rows[param].unique()))).all()  # ... each seed
    # ASHA stops trials only at experience boundaries; every report is in the curves
    curves = pd.read_parquet(outcome.paths["curves"])
    assert trials["experiences_done"].between(1, 5).all()
    assert len(curves) == trials["experiences_done"].sum()
    # ... and it did stop frozen ones early, at a rung (1, 2 or 4 experiences)
    frozen = trials[trials["arm"] == "si"]["experiences_done"]
    assert (frozen < 5).sum() >= 2 and set(frozen) <= {1, 2, 4, 5}, frozen.tolist()


def test_driver_killed_in_the_confirmation_phase_resumes_without_rerunning_the_search(
        ray_address, tmp_path):
    """Phase 2 (each arm's chosen config on fresh seeds) depends on phase 1's results: a driver
    killed during it resumes phase 2 only, derives the same choices, and nothing is lost or
    duplicated."""
    files, work, home = tmp_path / "files", tmp_path / "work", tmp_path / "home"
    for folder in (files, work, home):
        folder.mkdir()
    path = write_study(files, TINY, replace={"confirm_seeds=[],": "confirm_seeds=[5, 6],"})
    # batches of 4: the search in 3 Tune runs, the confirmation in 2 (every Tune run costs
    # seconds of start-up); the kill still lands between the confirmation's first trial and last
    command = [sys.executable, "-m", "raycl.study", str(path), "--address", ray_address,
               "--gpus-per-trial", "0", "--trials-per-batch", "4"]
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    token = Path.home() / ".ray" / "auth_token"
    if token.exists() and "RAY_AUTH_TOKEN_PATH" not in env:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    folder = work / "results" / "tiny"
    trials_file = folder / "trials.parquet"

    def phases() -> list[str]:
        try:
            return pd.read_parquet(trials_file)["phase"].tolist()
        except (OSError, ValueError, KeyError):
            return []

    driver = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: "confirm" in phases(), "a confirmation trial ending", driver)
        os.kill(driver.pid, signal.SIGKILL)  # in phase 2: its first trial just finished
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate(timeout=60)
    before = pd.read_parquet(trials_file)
    search_before = before[before["phase"] == "search"].set_index("trial_key")["trial_id"]
    assert len(search_before) == 10 and 1 <= (before["phase"] == "confirm").sum() < 6

    final = subprocess.run([*command, "--resume"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    assert "phase search" not in final.stdout  # phase 1 was not run again
    trials = pd.read_parquet(trials_file)
    assert trials["trial_key"].is_unique and len(trials) == 10 + 3 * 2
    search = trials[trials["phase"] == "search"].set_index("trial_key")["trial_id"]
    assert search.sort_index().tolist() == search_before.sort_index().tolist()  # not rerun
    confirm = trials[trials["phase"] == "confirm"]
    assert sorted(confirm["seed"].unique()) == [5, 6] and (confirm["status"] == "TERMINATED").all()
    selection = pd.read_parquet(folder / "selection.parquet").set_index("arm")
    for arm, row in selection.iterrows():  # the confirmation runs are of the chosen config
        mine = confirm[confirm["arm"] == arm]
        assert set(mine["config"]) == {json.dumps(json.loads(row["chosen_config"]),
                                                  sort_keys=True)}
        assert row["reported_phase"] == "confirm" and row["reported_n"] == 2
    matrix = pd.read_parquet(folder / "matrix.parquet")
    assert not matrix.duplicated(["trial_key", "split", "trained_exp", "eval_exp"]).any()
    assert set(matrix["split"]) == {"valid", "test"}


# ---- a study's results belong to one study -------------------------------------------------------
def test_a_run_started_while_another_runs_the_study_is_refused_and_the_first_keeps_its_rows(
        ray_address, tmp_path):
    from raycl.study import load_study, plan_trials

    first_file = write_study(tmp_path, TINY, name="first.py", replace=SLOW)
    # another study file of the same name: its rows must never join the first's
    second_file = write_study(tmp_path, TINY, name="second.py",
                              replace={**SLOW, "train_epochs=1,": "train_epochs=2,"})
    storage = tmp_path / "results"
    folder = storage / "tiny"

    def command(path):
        return [sys.executable, "-m", "raycl.study", str(path), "--address", ray_address,
                "--gpus-per-trial", "0", "--storage", str(storage)]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command(first_file), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        # validated, locked: Ray not started yet
        _wait_for((folder / ".lock").exists, "the first run taking the lock", first)
        for path in (second_file, first_file):
            second = subprocess.run(command(path), env=env, capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
            assert second.stdout == "" and second.stderr.count("\n") == 1, second.stderr
            assert second.stderr.startswith(f"raycl: error: study 'tiny' in {folder} is being "
                                            f"run by pid {first.pid} on host "), second.stderr
        output = first.communicate(timeout=300)[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, output[-3000:]
    trials = pd.read_parquet(folder / "trials.parquet")
    planned = plan_trials(load_study(first_file))
    assert sorted(trials["trial_key"]) == sorted(t.trial_key for t in planned)
    assert set(trials["status"]) == {"TERMINATED"}
    assert json.loads((folder / "study.json").read_text())["train_epochs"] == 1
    assert not (folder / ".lock").exists()  # released at the end


_OTHER_RAY = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)  # two nodes: a cluster
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes stdin
cluster.shutdown()
"""


def test_without_an_address_a_ray_already_running_is_not_joined(tmp_path):
    import shutil
    import tempfile

    # Ray's files (and its "latest cluster" record, which ray.init() without an address
    # follows) in a folder of this test: nobody else's Ray is seen or touched
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    other = subprocess.Popen([sys.executable, "-c", _OTHER_RAY], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = other.stdout.readline().strip()  # someone else's Ray on this machine
        assert address, "the other Ray did not start"
        # the danger is real: ray.init() without an address joins that Ray
        joined = subprocess.run(
            [sys.executable, "-c", "import ray; ray.init(logging_level='ERROR'); "
             "print(ray.get_runtime_context().gcs_address); ray.shutdown()"],
            env=env, capture_output=True, text=True, timeout=120)
        assert joined.stdout.split()[-1:] == [address], joined.stdout + joined.stderr[-2000:]

        path = write_study(tmp_path, ONE_TRIAL)
        done = subprocess.run([sys.executable, "-m", "raycl.study", str(path), "--storage",
                               str(tmp_path / "results"), "--gpus-per-trial", "0"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        which = [ln for ln in done.stdout.splitlines() if ln.startswith("Ray: ")]
        assert len(which) == 1 and which[0].startswith(
            "Ray: local Ray started for this study ("), done.stdout
        assert address not in which[0]
        trials = pd.read_parquet(tmp_path / "results" / "one" / "trials.parquet")
        assert list(trials["status"]) == ["TERMINATED"]

        # joined on purpose, that 2-node cluster refuses a storage path only this machine sees
        joined = [sys.executable, "-m", "raycl.study", str(path), "--address", address,
                  "--gpus-per-trial", "0"]
        refused = subprocess.run([*joined, "--storage", str(tmp_path / "local")], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
        assert f"raycl: error: --storage {tmp_path / 'local'}: a path on this machine, and " \
               f"the Ray cluster has 2 nodes: use storage every node reaches" in refused.stderr
        # ... and, declared shared, a trial no node can place stops the study after the
        # --pending-timeout (an autoscaler might have added a node meanwhile)
        waited = subprocess.run([*joined, "--storage", str(tmp_path / "shared"),
                                 "--shared-storage", "--cpus-per-trial", "4",
                                 "--pending-timeout", "2"], env=env, capture_output=True,
                                text=True, timeout=300)
        assert waited.returncode == 1, waited.stdout[-3000:] + waited.stderr[-3000:]
        assert "raycl: error: no node of the Ray cluster could run a trial for 2 s: it asks " \
               "for 4 CPU and 0 GPU, and the largest node has 1 CPU and 0 GPU" in waited.stderr
    finally:
        other.stdin.close()
        try:
            other.wait(timeout=60)
        finally:
            if other.poll() is None:
                other.kill()
                other.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_study_file_failing_in_the_trial_processes_is_not_retried_and_says_why(
        ray_address, tmp_path, monkeypatch, capsys):
    from raycl.study.__main__ import main

    path = write_study(tmp_path, READS_RELATIVE)
    line = next(i + 1 for i, text in enumerate(path.read_text().splitlines())
                if text.startswith("CLASSES ="))
    (tmp_path / "classes.txt").write_text("0 1 2 3\n")
    monkeypatch.chdir(tmp_path)  # the driver finds classes.txt; trial processes do not
    # in this process: the module's Ray is used (the header says so)
    assert main([str(path), "--storage", str(tmp_path / "results"), "--gpus-per-trial", "0"]) == 1
    captured = capsys.readouterr()
    assert "Ray: Ray cluster at " in captured.out
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("raycl: error:")]
    cause = ("the study file does not import in a trial process: FileNotFoundError: [Errno 2] "
             f"No such file or directory: 'classes.txt' (line {line} of {path}; ")
    assert len(errors) == 1 and errors[0].startswith(f"raycl: error: {cause}"), captured.err
    assert "the study was stopped" in captured.out
    assert "restarting from its last checkpoint" not in captured.out

    trials = pd.read_parquet(tmp_path / "results" / "relative" / "trials.parquet")
    assert len(trials) >= 1 and set(trials["status"]) == {"ERROR"}
    assert trials["error"].str.startswith(cause).all()
    # each trial imported the file once: never retried (max_failures=2 would make it 3 times)
    imports = [ln.split() for ln in (tmp_path / "imports.log").read_text().splitlines()]
    in_trials = [who for pid, who in imports if who != "driver"]
    assert all(int(pid) == os.getpid() for pid, who in imports if who == "driver")
    assert len(in_trials) == len(set(in_trials)) >= len(trials)
    assert set(trials["trial_id"]) <= set(in_trials)


def test_resources_no_node_has_are_one_line_and_exit_2_on_a_local_ray(tmp_path):
    """On raycl's own local Ray (a fixed size), a trial asking for more CPUs than the machine
    has would wait forever: refused at once, in one line, before any trial."""
    path = write_study(tmp_path, TINY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-m", "raycl.study", str(path), "--storage",
                           str(tmp_path / "results"), "--cpus-per-trial", "64"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("raycl: error:")]
    assert len(errors) == 1 and "asks for 64 CPU" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "results" / "tiny" / "trials.parquet").exists()


def _tensorboard_scalars(folder: Path) -> dict[str, list[int]]:
    """tag -> steps of every scalar in the TensorBoard event files under ``folder`` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    steps: dict[str, list[int]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    steps.setdefault(value.tag, []).append(event.step)
    return steps


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file (``run-*.wandb``): a 7-byte W&B header, then
    LevelDB log framing (32 KiB blocks; chunks of CRC, length, type: 1 full, 2 first, 3 middle,
    4 last) around ``wandb_internal_pb2.Record`` messages."""
    import struct

    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, at, pending, records = 32768, 7, b"", []
    while at + 7 <= len(data):
        room = block - at % block
        _, length, kind = struct.unpack("<IHB", data[at:at + 7]) if room >= 7 else (0, 0, 0)
        if room < 7 or (length, kind) == (0, 0):  # block trailer or zero padding
            at += room
            continue
        pending += data[at + 7:at + 7 + length]
        at += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pending))
            pending = b""
    return records


def test_trackers_log_a_step_per_experience_with_the_config(ray_address, tmp_path,
                                                            monkeypatch):
    """--tracker tensorboard, mlflow and wandb at once, each on its local back end: the event
    files, MLflow's file store beside the results, W&B's offline run files (WANDB_MODE and
    WANDB_DIR reach the logging actors although Ray started before they were set)."""
    pytest.importorskip("tensorboardX")
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "wandb").mkdir()
    path = write_study(tmp_path, ONE_TRIAL)
    out = io.StringIO()
    outcome = run_study(prepare_run(path, storage=str(tmp_path / "results"), gpus_per_trial=0),
                        out=out, trackers=["tensorboard", "mlflow", "wandb"])
    assert (outcome.finished, outcome.errored) == (1, 0), out.getvalue()
    trial = pd.read_parquet(tmp_path / "results" / "one" / "trials.parquet").iloc[0]

    scalars = _tensorboard_scalars(tmp_path / "results" / "one" / "_ray")
    assert scalars["ray/tune/valid_avg_accuracy"] == [1, 2]  # one step per experience
    assert scalars["ray/tune/test_acc_exp_000"] == [1, 2]
    hparams = list((tmp_path / "results" / "one" / "_ray").rglob("events.out.tfevents.*"))
    assert any(b"trial/seed" in p.read_bytes() for p in hparams)  # the config as parameters

    client = mlflow.tracking.MlflowClient(f"file://{tmp_path / 'results' / 'one' / 'mlruns'}")
    experiment = client.get_experiment_by_name("one")  # named after the study
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["trial/seed"] == "0"
    assert run.data.params["trial/trial_key"] == trial["trial_key"]
    history = client.get_metric_history(run.info.run_id, "valid_avg_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(trial["valid_final_avg_accuracy"])

    (run_file,) = (tmp_path / "wandb").rglob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    (started,) = [r.run for r in records if r.HasField("run")]
    assert started.project == "one"
    steps = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
             for r in records if r.HasField("history")]
    assert [s["training_iteration"] for s in steps] == [1, 2]
    assert steps[-1]["valid_avg_accuracy"] == pytest.approx(trial["valid_final_avg_accuracy"])
    configs = [json.loads(i.value_json) for r in records if r.HasField("config")
               for i in r.config.update if i.key == "trial"]
    assert configs and configs[-1]["trial_key"] == trial["trial_key"]
    assert "wandb:" not in out.getvalue()  # silent: no banner through Ray's log forwarding
    assert "--tracker" not in out.getvalue()
