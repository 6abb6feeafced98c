"""Studies on S3 storage, live: a real S3-compatible server on this machine (moto's server mode,
``tests/s3_local.py``; nothing leaves the machine) behind a TCP proxy that can refuse
connections for a while.

* one study, three faults: a trial process killed in the middle of an experience resumes from
  its S3 checkpoint; the driver killed, then ``--resume`` (the first run with the endpoint in
  the URI's query, the second with ``AWS_ENDPOINT_URL``); in the resumed run, the storage
  unreachable for 5 s: writes are retried, said once; no row lost or duplicated; then
  ``raycl.report``, ``load_study`` and ``pd.read_parquet`` read the study back from S3;
* a missing bucket, refused credentials: one line, exit 2, no trial.

The secret key, the access key id and the endpoint (``127.0.0.1:<port>``) are never in what the
drivers print nor in any file outside Ray's own ``_ray/`` folder (whose pickled experiment state
holds the file system, endpoint included; the secret key is nowhere in the bucket).

Run them alone with ``pytest -m s3`` (they need the dev extra: moto[s3], flask, flask-cors).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from study_files import write_study

pytest.importorskip("moto.server")
pytest.importorskip("flask_cors")
from s3_local import MotoServer, OutageProxy, create_bucket, s3_filesystem  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.s3]
REPO = Path(__file__).resolve().parents[1]
BUCKET = "raycl-test"

#: Two arms (three configs), two seeds, two experiences: six trials; a pause after each
#: experience so that every trial lasts a while on any machine. With a file "die" beside it,
#: one trial of arm "dies" ends its process in the middle of experience 1 (after its tenth
#: training iteration), once per study (an atomically created marker file says it happened).
S3_STUDY = '''
import os
import time
from pathlib import Path

from ray import tune

from raycl.plugins import EWCPlugin, StrategyPlugin
from raycl.study import Arm, Benchmark, Model, Study

HERE = Path(__file__).parent


class Pause(StrategyPlugin):
    def after_training_exp(self, strategy, **kwargs):
        time.sleep(0.3)


class DieOnce(StrategyPlugin):
    def after_training_iteration(self, strategy, **kwargs):
        if (strategy.clock.train_exp_counter != 1 or strategy.clock.train_exp_iterations != 10
                or not (HERE / "die").exists()):
            return
        try:
            fd = os.open(HERE / "died.marker", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


study = Study(
    name="s3study",
    benchmark=Benchmark("split_digits", n_experiences=2),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=32,
    arms=[Arm("dies", lambda c: [Pause(), DieOnce()], baseline=True),
          Arm("ewc", lambda c: [EWCPlugin(c["ewc_lambda"]), Pause()],
              {"ewc_lambda": tune.grid_search([1.0, 10.0])})],
    seeds=[0, 1],
    max_failures=1,
    confirm_seeds=[],
)
'''


class S3:
    """The server, the proxy the studies go through, and the credentials in the environment."""

    def __init__(self, server: MotoServer, proxy: OutageProxy, key_id: str, secret: str):
        self.server, self.proxy, self.key_id, self.secret = server, proxy, key_id, secret
        self.fs = s3_filesystem(server.endpoint)  # straight to the server, never paused

    def query_uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override={self.proxy.endpoint}&scheme=http"

    def secrets(self) -> list[str]:
        """What must never be printed or stored: credentials, the endpoints as curl and URLs
        spell them."""
        found = [self.secret, self.key_id]
        for port in (self.server.port, self.proxy.port):
            found += [f"127.0.0.1:{port}", f"port {port}", f"localhost:{port}"]
        return found

    def names(self, prefix: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                        allow_not_found=True))
        return [i.path for i in infos if i.type == pafs.FileType.File]

    def objects(self, prefix: str) -> dict[str, bytes]:
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True,
                                                        allow_not_found=True))
        out = {}
        for info in infos:
            if info.type == pafs.FileType.File:
                with self.fs.open_input_stream(info.path) as f:
                    out[info.path.split("/", 2)[2]] = f.read()
        return out

    def table(self, prefix: str, name: str) -> pd.DataFrame | None:
        """A table of the study under ``prefix``; None while there is none. (A read while the
        driver replaces the object can see the new object's size and the old one's bytes:
        an error, and the next poll reads it whole.)"""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = f"{BUCKET}/{prefix}/s3study/{name}.parquet"
        try:
            return pq.read_table(path, filesystem=self.fs).to_pandas()
        except (OSError, pa.ArrowException):
            return None


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    key_id, secret = "AKIDRAYCL" + uuid.uuid4().hex[:8].upper(), "raycl-secret-" + uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                     "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", key_id)
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata look-ups
        mp.setenv("AWS_CONFIG_FILE", str(log.parent / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(log.parent / "no-aws-credentials"))
        server = MotoServer(log=log)
        proxy = OutageProxy(server.port)
        try:
            create_bucket(server.endpoint, BUCKET)
            yield S3(server, proxy, key_id, secret)
        finally:
            proxy.close()
            server.stop()


@pytest.fixture(scope="module")
def ray_address(s3):
    """One Ray for the module's drivers (``--address``), started with the credentials in its
    environment: the trial processes get them from there, and the endpoint with the file system
    raycl hands to Tune."""
    ray = pytest.importorskip("ray")
    context = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


def _driver_env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO), **extra}
    token = Path.home() / ".ray" / "auth_token"  # the local Ray's token, which ray.init wrote
    if token.exists() and "RAY_AUTH_TOKEN_PATH" not in env:
        env["RAY_AUTH_TOKEN_PATH"] = str(token)
    return env


def _wait_for(condition, what: str, driver: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.poll() is not None:
            pytest.fail(f"the driver ended (exit {driver.returncode}) before {what}:\n"
                        f"{driver.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def _finish(driver: subprocess.Popen) -> str:
    if driver.poll() is None:
        driver.kill()
    return driver.communicate(timeout=60)[0] or ""


def _lost_and_duplicated(s3: S3, prefix: str, study_file: Path,
                         keys: set[str] | None = None) -> tuple[int, int, str]:
    """(rows lost, rows duplicated, what) over the trials, curves and matrix tables against
    what an uninterrupted run of the study writes (of the trials ``keys`` only, if given)."""
    from raycl.study import load_study, plan_trials

    planned = {t.trial_key for t in plan_trials(load_study(study_file))}
    keys = planned if keys is None else keys
    n_exp = 2
    trials, curves = s3.table(prefix, "trials"), s3.table(prefix, "curves")
    matrix = s3.table(prefix, "matrix")
    done = trials[(trials["status"] == "TERMINATED") & (trials["experiences_done"] == n_exp)]
    expected = {
        "trials": (keys, set(done["trial_key"])),
        "curves": ({(k, e) for k in keys for e in range(n_exp)},
                   set(zip(curves["trial_key"], curves["experience"], strict=True))),
        "matrix": ({(k, s, t, e) for k in keys for s in ("valid", "test")
                    for t in range(n_exp) for e in range(n_exp)},
                   set(zip(matrix["trial_key"], matrix["split"], matrix["trained_exp"],
                           matrix["eval_exp"], strict=True))),
    }
    lost = {name: len(want - got) for name, (want, got) in expected.items()}
    duplicated = {
        "trials": int(trials["trial_key"].duplicated().sum()),
        "curves": int(curves.duplicated(["trial_key", "experience"]).sum()),
        "matrix": int(matrix.duplicated(["trial_key", "split", "trained_exp",
                                         "eval_exp"]).sum()),
        "unplanned": len((set(trials["trial_key"]) | set(curves["trial_key"])) - planned)}
    return (sum(lost.values()), sum(duplicated.values()),
            f"lost {lost}, duplicated {duplicated}\n{trials[['arm', 'seed', 'status']]}")


def _assert_no_secrets(s3: S3, prefix: str, outputs: list[str]) -> None:
    secrets = s3.secrets()
    for i, text in enumerate(outputs):
        for secret in secrets:
            assert secret not in text, f"output {i} holds {secret!r}"
    objects = s3.objects(prefix)
    assert any(name.endswith("trials.parquet") for name in objects)
    for name, data in objects.items():
        # Ray's pickled experiment state holds the file system Tune was given: its endpoint,
        # never the credentials (they come from the environment)
        checked = [s3.secret, s3.key_id] if "/_ray/" in name else secrets
        for secret in checked:
            assert secret.encode() not in data, f"{name} holds {secret!r}"


def test_killed_trial_killed_driver_and_unreachable_storage_lose_nothing_on_s3(
        s3, ray_address, tmp_path, monkeypatch, record_property):
    """One study on S3, three faults: a trial process killed in the middle of an experience
    (it resumes from its S3 checkpoint); the driver killed, then ``--resume`` against the same
    storage; in the resumed run, the storage unreachable for 5 s (writes retried, said once).
    Then ``raycl.report``, ``load_study`` and ``pd.read_parquet`` read the study from S3."""
    files, home = tmp_path / "files", tmp_path / "home"
    files.mkdir()
    home.mkdir()
    path = write_study(files, S3_STUDY)
    (files / "die").touch()
    prefix = "study"
    # two Tune runs (4 + 2 trials): the killed trial restarts within the first (a restarted
    # trial waits behind the others of its run), and the driver is killed once it ended
    command = [sys.executable, "-m", "raycl.study", str(path), "--address", ray_address,
               "--gpus-per-trial", "0", "--trials-per-batch", "4"]
    started = time.monotonic()

    def dies_done() -> bool:  # the killed trial and its twin finished: the driver dies now
        trials = s3.table(prefix, "trials")
        return (trials is not None and (files / "died.marker").exists()
                and ((trials["arm"] == "dies") & (trials["status"] == "TERMINATED")).sum() == 2)

    # run 1: the endpoint only in the URI's query
    driver = subprocess.Popen([*command, "--storage", s3.query_uri(prefix)],
                              env=_driver_env(home), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(dies_done, "the trial killed mid-experience finishing", driver)
        os.kill(driver.pid, signal.SIGKILL)  # at once: no cleanup, no last write
    finally:
        first_output = _finish(driver)
    before = s3.table(prefix, "trials")
    assert 2 <= len(before) < 6, before[["arm", "seed", "status"]]
    done = set(before.loc[before["status"] == "TERMINATED", "trial_key"])
    lost, duplicated, what = _lost_and_duplicated(s3, prefix, path, done)
    record_property("rows lost / duplicated by the killed driver", (lost, duplicated))
    assert (lost, duplicated) == (0, 0), what  # every finished trial has all its rows
    # the killed driver's lock is still there: its command without the URI's query
    with s3.fs.open_input_stream(f"{BUCKET}/{prefix}/s3study/.lock") as f:
        lock = f.read()
    assert b"--storage s3://raycl-test/study" in lock and b"endpoint" not in lock

    # run 2: --resume, the endpoint from AWS_ENDPOINT_URL; the storage stops answering for 5 s
    # as soon as a trial of this run saved a checkpoint (the others' uploads, the driver's
    # writes and Ray's experiment state fail then)
    driver = subprocess.Popen([*command, "--storage", f"s3://{BUCKET}/{prefix}", "--resume"],
                              env=_driver_env(home, AWS_ENDPOINT_URL=f"http://{s3.proxy.endpoint}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def checkpointed() -> bool:
            return any(f"-{driver.pid}-b" in n and "/checkpoint_" in n
                       for n in s3.names(f"{prefix}/s3study/_ray"))

        _wait_for(checkpointed, "a checkpoint of the resumed run", driver)
        s3.proxy.pause()  # connections refused
        try:
            time.sleep(5.0)
        finally:
            s3.proxy.resume()
        stdout, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stdout[-3000:] + stderr[-3000:]
    record_property("s3 study wall time, two runs (s)", round(time.monotonic() - started, 1))
    assert "raycl: taking over the stale lock" in stderr
    assert "Traceback" not in stdout + stderr
    said = [line for line in stderr.splitlines() if "does not answer" in line]
    assert len(said) == 1, stderr  # said once
    assert said[0].startswith(f"raycl: warning: the storage s3://{BUCKET}/{prefix}/s3study "
                              f"does not answer (")

    lost, duplicated, what = _lost_and_duplicated(s3, prefix, path)
    record_property("rows lost / duplicated after --resume with the outage", (lost, duplicated))
    assert (lost, duplicated) == (0, 0), what
    trials = s3.table(prefix, "trials")
    kept = trials.set_index("trial_key").loc[sorted(done), "trial_id"]
    assert kept.tolist() == before.set_index("trial_key").loc[sorted(done), "trial_id"].tolist()
    # the trial killed in experience 1 went on from its checkpoint of experience 0, in S3
    curves = s3.table(prefix, "curves")
    restarted = curves[curves["resumed_from"] > 0]
    assert restarted[["arm", "experience", "resumed_from"]].values.tolist() == [["dies", 1, 1]]
    assert trials["checkpoint"].isna().all()  # finished trials' checkpoints were pruned
    assert not [n for n in s3.names(prefix) if "/checkpoint_" in n]

    _assert_no_secrets(s3, prefix, [first_output, stdout, stderr])

    # read back: the URI with its query, or AWS_ENDPOINT_URL and the plain URI
    from raycl.analysis import load_study
    from raycl.report import main as report

    by_query = load_study(s3.query_uri(f"{prefix}/s3study"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3.server.endpoint}")
    uri = f"s3://{BUCKET}/{prefix}/s3study"
    by_env = load_study(uri)
    pd.testing.assert_frame_equal(by_query.trials, by_env.trials)
    assert sorted(by_env.trials["trial_key"]) == sorted(trials["trial_key"])
    assert set(by_env.study_settings) == {"s3study"}
    read = pd.read_parquet(f"{uri}/trials.parquet")  # pandas through pyarrow: no s3fs
    pd.testing.assert_frame_equal(read, trials)
    assert report([uri, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").exists()


def test_missing_bucket_or_refused_credentials_is_one_line_and_exit_2_before_any_trial(
        s3, tmp_path, monkeypatch, capsys):
    import raycl.tune.runner as runner
    from raycl.study.__main__ import main

    def no_run(*args, **kwargs):
        raise AssertionError("a study started")

    monkeypatch.setattr(runner, "run_study", no_run)
    path = write_study(tmp_path, S3_STUDY)
    refusing = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # knows no credentials
    try:
        cases = {
            "missing bucket": (f"s3://no-such-bucket/x?endpoint_override={s3.server.endpoint}"
                               f"&scheme=http", "bucket 'no-such-bucket' does not exist"),
            "refused credentials": (f"s3://{BUCKET}/x?endpoint_override={refusing.endpoint}"
                                    f"&scheme=http", "the storage refused the credentials"),
        }
        for what, (storage, says) in cases.items():
            assert main([str(path), "--storage", storage]) == 2, what
            out, err = capsys.readouterr()
            assert out == "" and err.count("\n") == 1, (what, err)
            assert err.startswith("raycl: error: --storage s3://") and says in err, (what, err)
            for secret in [*s3.secrets(), f"127.0.0.1:{refusing.port}"]:
                assert secret not in err, (what, err)
    finally:
        refusing.stop()
    assert not s3.objects("x")  # nothing written
