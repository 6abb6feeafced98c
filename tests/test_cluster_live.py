"""Studies on a local multi-node Ray cluster with fake GPUs: a worker node lost while its trials
run, and four trials packed on one GPU.

One cluster serves the module (``ray.cluster_utils.Cluster``, every node a set of processes on
this machine): a head node with no CPU and no GPU, which runs the studies' drivers but no trial
(as cluster.yaml's head does), and worker nodes with 4 CPUs and 1 fake GPU each: two for the
node-loss test (it removes one), one for the packing test (so that its four trials share one
GPU). Ray grants the fake GPUs (``CUDA_VISIBLE_DEVICES``, ``ray.get_gpu_ids()``) while torch
sees no CUDA device, so the trials train on the CPU and record the GPU they were granted. The
storage is a local folder, which every node shares since all are on this machine
(``--shared-storage``). Each driver is the command line in a subprocess: the commands
docs/cluster.md shows ("Losing a node", "Several trials per GPU"; a test checks the page shows
them). Run the live tests alone with
``.venv/bin/pytest -m cluster``.

Nothing waits on a sleep: the study files' plugins hold their trials at a named point and write
a file there, and the test acts once the files say every trial got there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from study_files import write_study

from raycl.study.schema import (
    ACCURACY,
    DEVICE,
    EVAL_EXP,
    EXPERIENCE,
    FINISHED_AT,
    GPU_IDS,
    LOSS,
    NODE_ID,
    NODE_IP,
    SPLIT,
    SPLITS,
    STARTED_AT,
    STATUS,
    TERMINATED,
    TRAINED_EXP,
    TRIAL_KEY,
    accuracy_column,
    loss_column,
)

REPO = Path(__file__).resolve().parents[1]
#: What each worker node of the cluster has.
WORKER = {"num_cpus": 4, "num_gpus": 1}
#: The options of each test's command (after --address, --storage and --shared-storage).
NODE_LOSS_OPTIONS = ("--gpus-per-trial", "0.5")  # two trials per fake GPU
PACKED_OPTIONS = ("--gpus-per-trial", "0.25")  # four trials per fake GPU

#: Four trials of two experiences. Before its first experience each trial writes a file named
#: after its GPU (node id and CUDA_VISIBLE_DEVICES) in arrived/ and waits until four trials have
#: arrived on that GPU (at most 120 s): with --gpus-per-trial 0.25 they all run at once, or the
#: wait ends and the test, which measures the overlap, fails.
PACKED = '''
import os
import time
import uuid
from pathlib import Path

from raycl.plugins import StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study

HERE = Path(__file__).parent


class Gather(StrategyPlugin):
    def __init__(self, group):
        super().__init__()
        self.group = group

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter != 0:
            return
        import ray

        gpu = f"{ray.get_runtime_context().get_node_id()}-{os.environ['CUDA_VISIBLE_DEVICES']}"
        arrived = HERE / "arrived"
        arrived.mkdir(exist_ok=True)
        (arrived / f"{gpu}.{uuid.uuid4().hex}").touch()
        deadline = time.monotonic() + 120
        while (len(list(arrived.glob(f"{gpu}.*"))) < self.group
               and time.monotonic() < deadline):
            time.sleep(0.05)


study = Study(
    name="packed",
    benchmark=Benchmark("split_digits", n_experiences=2),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("naive", lambda c: [Gather(4)], baseline=True)],
    seeds=[0, 1, 2, 3],
    confirm_seeds=[],
)
'''

#: Four trials of five experiences. The first attempt of each trial, having reported (and
#: checkpointed) experiences 0 and 1, writes a file named after its node and process in held/
#: and waits before experience 2 until the test creates the file "release". A trial restarted
#: from its checkpoint finds "release" there and goes on; so does the uninterrupted twin the
#: test runs.
NODE_LOSS = '''
import os
import time
from pathlib import Path

from raycl.plugins import StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study

HERE = Path(__file__).parent
RELEASE = HERE / "release"


class Hold(StrategyPlugin):
    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter != 2 or RELEASE.exists():
            return
        import ray

        held = HERE / "held"
        held.mkdir(exist_ok=True)
        (held / f"{ray.get_runtime_context().get_node_id()}.{os.getpid()}").touch()
        deadline = time.monotonic() + 300
        while not RELEASE.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


study = Study(
    name="node_loss",
    benchmark=Benchmark("split_digits", n_experiences=5),
    model=Model("mlp", hidden_size=32, hidden_layers=1),
    train_epochs=1,
    train_mb_size=64,
    arms=[Arm("naive", lambda c: [Hold()], baseline=True)],
    seeds=[0, 1, 2, 3],
    confirm_seeds=[],
    max_failures=2,
)
'''


class _Cluster:
    """The module's cluster: the head node's address and the worker nodes alive."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.workers: list = []

    @property
    def address(self) -> str:
        return self.cluster.address

    def with_workers(self, n: int) -> list:
        """Exactly ``n`` worker nodes alive: added, or the extra ones shut down (another test
        may have added or removed one)."""
        while len(self.workers) > n:
            self.cluster.remove_node(self.workers.pop())
        while len(self.workers) < n:
            self.workers.append(self.cluster.add_node(**WORKER))
        self.cluster.wait_for_nodes()
        return list(self.workers)

    def remove(self, node) -> None:
        """Kill a worker node's Ray processes at once (SIGKILL: no goodbye to the head), as a
        machine that dies. Its worker processes notice that their raylet is gone and exit by
        themselves, within about a second."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="module")
def cluster():
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    # Ray's files, and the "current cluster" record the Cluster writes, in a folder of this
    # module: nobody else's Ray on the machine sees or joins this one
    ray_tmp = tempfile.mkdtemp(prefix="rcl", dir="/tmp")  # short: Ray's socket paths
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = ray_tmp
    made = None
    try:
        made = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            # a node killed without a goodbye is declared dead after 1.3 s, not 17 s
            "_system_config": {"health_check_initial_delay_ms": 0,
                               "health_check_period_ms": 500,
                               "health_check_failure_threshold": 3}})
        nodes = _Cluster(made)
        nodes.with_workers(1)
        yield nodes
    finally:
        if made is not None:
            made.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _command(path: Path, address: str, storage: Path, *options: str) -> list[str]:
    """The command docs/cluster.md shows, on the module's cluster."""
    return [sys.executable, "-m", "raycl.study", str(path), "--address", address,
            "--storage", str(storage), "--shared-storage", *options]


def test_docs_show_the_commands_these_tests_run():
    text = (REPO / "docs" / "cluster.md").read_text()
    for options in (NODE_LOSS_OPTIONS, PACKED_OPTIONS):
        assert ("python -m raycl.study study.py --address HEAD_ADDRESS --storage /tmp/x/results "
                "\\\n    --shared-storage " + " ".join(options) + "\n") in text, options
    assert ("cluster.remove_node(lost, allow_graceful=False)" in text
            and f"add_node(num_cpus={WORKER['num_cpus']}, num_gpus={WORKER['num_gpus']})" in text)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait_for(condition, what: str, driver: subprocess.Popen, timeout: float = 300.0) -> None:
    """Poll ``condition`` every 50 ms; fail saying ``what`` did not happen if the time is up or
    the driver ended first (with its output)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.poll() is not None:
            pytest.fail(f"the driver ended (exit {driver.returncode}) before {what}:\n"
                        f"{driver.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _most_at_once(starts: pd.Series, ends: pd.Series) -> int:
    """The largest number of the intervals [start, end) that overlap at one instant."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def _lost_and_duplicated(frame: pd.DataFrame, keys: list[str], expected: set) -> tuple[int, int]:
    """(expected rows missing, rows beyond the first of their key) of a table."""
    seen = set(frame[keys].itertuples(index=False, name=None))
    return len(expected - seen), len(frame) - len(seen)


@pytest.mark.ray
@pytest.mark.cluster
def test_a_worker_node_lost_while_its_trials_run_loses_and_duplicates_nothing(cluster, tmp_path):
    from raycl.study import load_study, plan_trials, run_trial

    survivor, lost = cluster.with_workers(2)
    path = write_study(tmp_path, NODE_LOSS)
    storage = tmp_path / "results"
    held = tmp_path / "held"
    # two trials per fake GPU: all four run at once, two on each worker node
    driver = subprocess.Popen(_command(path, cluster.address, storage, *NODE_LOSS_OPTIONS),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        _wait_for(lambda: held.exists() and len(list(held.iterdir())) == 4,
                  "four trials holding after two checkpointed experiences", driver)
        where = [p.name.split(".") for p in held.iterdir()]
        nodes = pd.Series([node for node, _ in where]).value_counts().to_dict()
        assert nodes == {survivor.node_id: 2, lost.node_id: 2}
        cluster.remove(lost)  # its two trials die with it, after experience 1's checkpoint
        doomed = [int(pid) for node, pid in where if node == lost.node_id]
        _wait_for(lambda: not any(map(_running, doomed)),
                  "the lost node's trial processes ending", driver, timeout=60)
        (tmp_path / "release").touch()
        output = driver.communicate(timeout=300)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, output[-3000:]

    folder = storage / "node_loss"
    study = load_study(path)
    planned = {t.trial_key: t for t in plan_trials(study)}
    trials = pd.read_parquet(folder / "trials.parquet")
    curves = pd.read_parquet(folder / "curves.parquet")
    matrix = pd.read_parquet(folder / "matrix.parquet")
    # every trial row exactly once, every experience's report once, every matrix row once
    assert _lost_and_duplicated(trials, [TRIAL_KEY], {(k,) for k in planned}) == (0, 0)
    exps = {(k, e) for k in planned for e in range(5)}
    assert _lost_and_duplicated(curves, [TRIAL_KEY, EXPERIENCE], exps) == (0, 0)
    cells = {(k, s, i, j) for k in planned for s in SPLITS for i in range(5) for j in range(5)}
    assert _lost_and_duplicated(matrix, [TRIAL_KEY, SPLIT, TRAINED_EXP, EVAL_EXP],
                                cells) == (0, 0)
    assert set(trials[STATUS]) == {TERMINATED} and (trials["experiences_done"] == 5).all()

    # the lost node's trials went on on the survivor from their last checkpoint (experience 1)
    assert set(trials[NODE_ID]) == {survivor.node_id}
    by_trial = curves.sort_values(EXPERIENCE).groupby(TRIAL_KEY)
    moved = {k for k, rows in by_trial if lost.node_id in set(rows[NODE_ID])}
    assert len(moved) == 2
    # the nodes share this machine's IP: only the node id tells them apart
    assert curves[NODE_IP].nunique() == 1
    for key, rows in by_trial:
        if key in moved:
            assert rows[NODE_ID].tolist() == [lost.node_id] * 2 + [survivor.node_id] * 3
            assert rows["resumed_from"].tolist() == [0, 0, 2, 2, 2]
        else:
            assert rows[NODE_ID].tolist() == [survivor.node_id] * 5
            assert rows["resumed_from"].tolist() == [0] * 5

    # ... and every trial's accuracy matrix equals its uninterrupted twin's (same seed, run
    # here in one go: "release" exists, nothing holds)
    cols = [TRIAL_KEY, SPLIT, TRAINED_EXP, EVAL_EXP, ACCURACY, LOSS]
    twin = []
    for key, trial in planned.items():
        reports: list = []
        run_trial(study, trial, lambda m, s, out=reports: out.append(m))
        for report in reports:
            for split in SPLITS:
                for j in range(5):
                    twin.append((key, split, report[EXPERIENCE], j,
                                 report[accuracy_column(j, split)],
                                 report[loss_column(j, split)]))
    expected = pd.DataFrame(twin, columns=cols).sort_values(cols[:4]).reset_index(drop=True)
    got = matrix[cols].sort_values(cols[:4]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


@pytest.mark.ray
@pytest.mark.cluster
def test_gpus_per_trial_a_quarter_runs_four_trials_at_once_on_one_gpu(cluster, tmp_path):
    (worker,) = cluster.with_workers(1)
    path = write_study(tmp_path, PACKED)
    done = subprocess.run(_command(path, cluster.address, tmp_path / "results",
                                   *PACKED_OPTIONS),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resources per trial: 1 CPU, 0.25 GPU" in done.stdout

    trials = pd.read_parquet(tmp_path / "results" / "packed" / "trials.parquet")
    assert len(trials) == 4 and trials[TRIAL_KEY].is_unique
    assert set(trials[STATUS]) == {TERMINATED}
    # each trial recorded the GPU Ray granted it (GPU 0 of the worker node), and trained on the
    # CPU: the GPU is fake, torch sees no CUDA device
    assert set(trials[GPU_IDS]) == {"0"} and set(trials[DEVICE]) == {"cpu"}
    assert set(trials[NODE_ID]) == {worker.node_id}
    # the four ran at once (each waited for the others before its first experience)
    assert _most_at_once(trials[STARTED_AT], trials[FINISHED_AT]) == 4
    curves = pd.read_parquet(tmp_path / "results" / "packed" / "curves.parquet")
    assert curves["device_note"].str.startswith("granted GPU(s) 0 but torch sees no CUDA").all()
