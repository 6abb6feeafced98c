"""The study layer without Ray: the trial runner, study files, the trial plan, Parquet results."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from study_files import TINY, write_study

from raycl.study import load_study, make_trial, run_trial
from raycl.study.__main__ import main
from raycl.study.loader import StudyError
from raycl.study.plan import apply_overrides, plan_trials
from raycl.study.protocol import first_trials, next_batch
from raycl.study.results import ResultStore, resolve_storage
from raycl.study.schema import (
    CURVE_ID_COLUMNS,
    MATRIX_COLUMNS,
    SCHEMA_VERSION,
    TRIAL_COLUMNS,
    TRIAL_HEAD,
)
from raycl.study.trial import deserialize_state, serialize_state

REPO = Path(__file__).resolve().parents[1]
_VOLATILE = ("train_time_s", "eval_time_s", "peak_memory_mb", "resumed_from")


def _run(study, trial, checkpoint=None):
    """Reports of a trial as (metrics, serialized state) pairs, the way the Tune layer keeps
    them (the state is saved with torch.save and loaded with weights_only=True)."""
    reports = []
    run_trial(study, trial, lambda m, s: reports.append((m, serialize_state(s))),
              checkpoint_state=None if checkpoint is None else deserialize_state(checkpoint))
    return reports


def _stable(metrics):
    return {k: v for k, v in metrics.items() if k not in _VOLATILE}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        both_nan = isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])
        assert both_nan or a[k] == b[k], (k, a[k], b[k])


# ---- run_trial -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_study(write_study(tmp_path_factory.mktemp("tiny"), TINY))


def test_run_trial_reports_every_experience_and_resumes_exactly(tiny):
    trial = make_trial("ewc", {"ewc_lambda": 10.0}, seed=1)
    first = _run(tiny, trial)
    assert [m["experience"] for m, _ in first] == [0, 1, 2, 3, 4]
    final = first[-1][0]
    for m, _ in first[:-1]:
        assert "test_final_avg_accuracy" not in m
    for name in ("test_final_avg_accuracy", "test_avg_forgetting", "test_bwt"):
        assert math.isfinite(final[name]), name
    # class-incremental: accuracy on classes not yet trained is 0 by construction, before and
    # after initialisation alike, so forward transfer is undefined
    assert math.isnan(final["test_fwt"]) and math.isnan(final["valid_fwt"])
    assert [k for k in final if k.startswith("test_acc_exp_")] == [f"test_acc_exp_{j:03d}"
                                                              for j in range(5)]
    # class-incremental: after experience 0, later experiences' classes are never predicted
    assert first[0][0]["test_acc_exp_004"] == 0.0 < first[0][0]["test_acc_exp_000"]
    assert final["device"] == "cpu" and final["resumed_from"] == 0

    again = _run(tiny, trial)  # same trial, same process: identical numbers
    for (a, _), (b, _) in zip(first, again):
        _same(_stable(a), _stable(b))

    # restart from the checkpoint written after experience 1 (EWC's importances, optimizer
    # momentum, the evaluator's matrix and every RNG are in it): the rest is identical
    resumed = _run(tiny, trial, checkpoint=first[1][1])
    assert [m["experience"] for m, _ in resumed] == [2, 3, 4]
    assert resumed[0][0]["resumed_from"] == 2
    for (a, _), (b, _) in zip(first[2:], resumed):
        _same(_stable(a), _stable(b))


def test_run_trial_rejects_a_checkpoint_of_another_trial(tiny):
    state = _run(tiny, make_trial("naive", {}, seed=0))[0][1]
    with pytest.raises(ValueError, match="checkpoint_state belongs to trial"):
        _run(tiny, make_trial("naive", {}, seed=1), checkpoint=state)


def test_multi_head_model_is_evaluated_on_the_tasks_it_has_seen(tiny):
    import dataclasses

    from raycl.study import Benchmark, Model

    task_il = dataclasses.replace(tiny, benchmark=Benchmark("split_digits", scenario="task"),
                                  model=Model("auto", hidden_size=32))
    reports = [m for m, _ in _run(task_il, make_trial("naive", {}, seed=0))]
    for i, m in enumerate(reports):  # 'auto' model: a multi-head MLP, heads appear with tasks
        assert sorted(k for k in m if k.startswith("test_acc_exp_")) == [
            f"test_acc_exp_{j:03d}" for j in range(i + 1)]
    assert math.isfinite(reports[-1]["test_final_avg_accuracy"])
    assert math.isnan(reports[-1]["test_fwt"])  # no head, no accuracy before training on a task


# ---- study files ---------------------------------------------------------------------------------
_BAD_STUDIES = {
    # name: (text replacements, expected "<field>: <what>" start)
    "syntax": ({"seeds=[0, 1],": "seeds=[0, 1"}, "line "),
    "unknown_field": ({"num_samples=2,": "num_sample=2,"},
                      "num_sample: unknown field of Study (did you mean 'num_samples'?)"),
    "unknown_nested_field": ({'Benchmark("split_digits", n_experiences=5)':
                              'Benchmark("split_digits", n_experience=5)'},
                             "Benchmark.n_experience: unknown field of Benchmark"),
    "empty_space": ({'{"ewc_lambda": tune.loguniform(1.0, 100.0)}': "{}"},
                    "arms[ewc].space: empty search space"),
    "not_a_domain": ({"tune.loguniform(1.0, 100.0)": "[1.0, 100.0]"},
                     "arms[ewc].space.ewc_lambda: [1.0, 100.0] is neither a Ray Tune domain"),
    "out_of_range": ({"tune.loguniform(1.0, 100.0)": "tune.uniform(-5.0, 5.0)"},
                     "arms[ewc].space.ewc_lambda: ewc_lambda"),
    "typo_in_factory": ({'c["ewc_lambda"]': 'c["ewc_lamda"]'}, "arms[ewc].plugins: KeyError"),
    "metric": ({"num_samples=2,": "num_samples=2, metric='accuracy',"},
               "metric: 'accuracy' is not a metric trials report"),
    "grid_with_random_domain": ({"num_samples=2,": "num_samples=2, search='grid',"},
                                "arms[ewc].space.ewc_lambda: search='grid' needs grid_search"),
    "no_study": ({"study = Study(": "other = Study("}, "study: the file must define"),
    "classes_not_divisible": ({'Benchmark("split_digits", n_experiences=5)':
                               'Benchmark("split_digits", n_experiences=3)'},
                              "benchmark.n_experiences: split_digits has 10 classes"),
}


@pytest.mark.parametrize("case", sorted(_BAD_STUDIES))
def test_bad_study_file_is_one_line_error_with_exit_status_2(case, tmp_path, capsys):
    import ray

    replace, expected = _BAD_STUDIES[case]
    path = write_study(tmp_path, TINY, replace=replace)
    assert main([str(path), "--storage", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"raycl: error: {path}: {expected}"), err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()


def test_missing_study_file_from_the_command_line(tmp_path):
    missing = tmp_path / "nope.py"
    done = subprocess.run([sys.executable, "-m", "raycl.study", str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"raycl: error: {missing}: file: no such file\n"
    assert done.stdout == ""


def test_study_file_is_a_module_of_its_own(tmp_path):
    path = write_study(tmp_path, TINY + "\nLEAK = 1\n")
    study = load_study(path)
    assert "LEAK" not in globals()
    assert [a.name for a in study.arms] == ["naive", "ewc", "si"]
    with pytest.raises(StudyError, match="raycl.study.Study"):
        load_study(write_study(tmp_path, "study = 3\n", name="three.py"))


def test_studies_shipped_with_the_project_validate():
    for path in sorted((REPO / "studies").glob("*.py")):
        smoke = apply_overrides(load_study(path), smoke=True)
        first = next_batch(smoke, pd.DataFrame(), pd.DataFrame(),
                           planned=first_trials(smoke, smoke=True))
        assert first is not None and first.trials, path


# ---- the trial plan ------------------------------------------------------------------------------
def test_trial_plan_is_deterministic_and_crosses_configs_with_seeds(tiny, tmp_path):
    trials = plan_trials(tiny)
    again = plan_trials(load_study(write_study(tmp_path, TINY)))
    assert trials == again
    by_arm = {}
    for t in trials:
        by_arm.setdefault(t.arm, []).append(t)
    assert len(by_arm["naive"]) == 2  # a baseline without space: one config x 2 seeds
    assert len(by_arm["ewc"]) == 2 * 2  # num_samples x seeds
    assert len(by_arm["si"]) == 2 * 2  # the grid's 2 values x seeds (nothing random)
    assert {t.params["si_lambda"] for t in by_arm["si"]} == {0.1, 1.0}
    for arm_trials in by_arm.values():
        configs = {}
        for t in arm_trials:
            configs.setdefault(repr(sorted(t.params.items())), set()).add(t.seed)
        assert all(seeds == {0, 1} for seeds in configs.values())
    assert len({t.trial_key for t in trials}) == len(trials)
    # another arm does not change the configs drawn for this one
    fewer = apply_overrides(tiny)
    fewer.arms = [a for a in fewer.arms if a.name != "naive"]
    assert [t for t in plan_trials(fewer) if t.arm == "ewc"] == by_arm["ewc"]


def test_random_search_never_repeats_a_config():
    import numpy as np
    from ray import tune

    from raycl.study.space import sample_configs

    space = {"k": tune.choice([1, 2]), "m": tune.grid_search(["a", "b"])}
    configs = sample_configs(space, 5, np.random.default_rng(0))
    assert sorted((c["k"], c["m"]) for c in configs) == [(1, "a"), (1, "b"), (2, "a"),
                                                          (2, "b")]
    wide = sample_configs({"x": tune.uniform(0, 1)}, 5, np.random.default_rng(0))
    assert len({c["x"] for c in wide}) == 5


def test_smoke_and_dry_run(tiny, tmp_path, capsys):
    smoke = apply_overrides(tiny, smoke=True)
    assert smoke.name == "tiny-smoke" and smoke.seeds == [0] and smoke.train_epochs == 1
    assert [t.arm for t in plan_trials(smoke, smoke=True)] == ["naive", "ewc", "si"]
    path = write_study(tmp_path, TINY)
    assert main([str(path), "--dry-run", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    trials = plan_trials(apply_overrides(tiny, num_samples=3))
    assert f"{len(trials)} trials in the first phase:" in out
    assert all(t.trial_key in out for t in trials)


# ---- Parquet results -----------------------------------------------------------------------------
def _metrics(exp, n=3, acc=0.5):
    m = {"experience": exp, "test_avg_accuracy": acc, "train_time_s": 1.0 + exp,
         "device": "cpu", "gpu_ids": "", "node_ip": "10.0.0.1"}
    m.update({f"test_acc_exp_{j:03d}": acc for j in range(n)})
    m.update({f"test_loss_exp_{j:03d}": 1.0 for j in range(n)})
    if exp == n - 1:
        m.update(test_final_avg_accuracy=acc, test_avg_forgetting=0.1, test_bwt=-0.1,
                 test_fwt=0.0)
    return m


def test_results_are_tidy_deduplicated_and_survive_a_resume(tmp_path):
    store = ResultStore(tmp_path / "results", "demo")
    assert not store.has_results()
    ewc = make_trial("ewc", {"ewc_lambda": 10.0, "mode": "online"}, 0)
    gem = make_trial("gem", {"patterns_per_experience": 64}, 0)
    for trial, tid in ((ewc, "a_1"), (gem, "b_1")):
        for exp in range(3):
            store.add_report(trial, tid, _metrics(exp))
    started = pd.Timestamp("2026-01-02T03:04:05", tz="UTC")
    store.set_trial(ewc, "a_1", "TERMINATED", _metrics(2), started_at=started,
                    finished_at=started + pd.Timedelta(seconds=3))
    store.set_trial(gem, "b_1", "ERROR", _metrics(1), error="RuntimeError: boom")
    store.write()
    assert store.has_results()
    assert sorted(p.name for p in (tmp_path / "results" / "demo").iterdir()) == [
        "curves.parquet", "matrix.parquet", "trials.parquet"]  # no temporary files left

    trials = pd.read_parquet(tmp_path / "results" / "demo" / "trials.parquet")
    params = ["param_ewc_lambda", "param_mode", "param_patterns_per_experience"]
    head = len(TRIAL_HEAD)
    assert list(trials.columns) == [*TRIAL_COLUMNS[:head], *params, *TRIAL_COLUMNS[head:]]
    assert (trials["schema_version"] == SCHEMA_VERSION).all()
    assert str(trials["param_patterns_per_experience"].dtype) == "Int64"  # stays an int
    assert str(trials["started_at"].dtype).startswith("datetime64")
    row = trials.set_index("arm").loc["gem"]
    assert row["status"] == "ERROR" and row["error"] == "RuntimeError: boom"
    assert row["experiences_done"] == 2 and math.isnan(row["test_final_avg_accuracy"])
    matrix = pd.read_parquet(tmp_path / "results" / "demo" / "matrix.parquet")
    assert list(matrix.columns) == list(MATRIX_COLUMNS) and len(matrix) == 2 * 3 * 3
    curves = pd.read_parquet(tmp_path / "results" / "demo" / "curves.parquet")
    assert list(curves.columns[:len(CURVE_ID_COLUMNS)]) == list(CURVE_ID_COLUMNS)
    assert len(curves) == 2 * 3 and "test_acc_exp_002" in curves.columns

    # a resumed run: the errored trial reruns under a new Ray trial id and replaces its rows
    resumed = ResultStore(tmp_path / "results", "demo")
    resumed.load()
    assert resumed.done_keys() == {ewc.trial_key}
    for exp in range(3):
        resumed.add_report(gem, "c_1", _metrics(exp, acc=0.7))
    resumed.set_trial(gem, "c_1", "TERMINATED", _metrics(2, acc=0.7))
    resumed.write()
    trials = pd.read_parquet(tmp_path / "results" / "demo" / "trials.parquet")
    assert sorted(trials["trial_id"]) == ["a_1", "c_1"]
    assert trials.set_index("trial_id").loc["a_1", "started_at"] == started  # kept as it was
    assert trials["trial_key"].is_unique
    matrix = pd.read_parquet(tmp_path / "results" / "demo" / "matrix.parquet")
    assert not matrix.duplicated(["trial_key", "trained_exp", "eval_exp"]).any()
    assert len(matrix) == 2 * 3 * 3
    assert set(matrix.loc[matrix["arm"] == "gem", "accuracy"]) == {0.7}
    curves = pd.read_parquet(tmp_path / "results" / "demo" / "curves.parquet")
    assert not curves.duplicated(["trial_key", "experience"]).any() and len(curves) == 6


def test_storage_uris_resolve_offline():
    fs, path, uri = resolve_storage("s3://my-bucket/studies?region=us-east-1")
    assert type(fs).__name__ == "S3FileSystem"
    assert path == "my-bucket/studies" and uri == "s3://my-bucket/studies"
    store = ResultStore("s3://my-bucket/studies?region=us-east-1", "ewc_vs_si")
    assert store.path("trials") == "s3://my-bucket/studies/ewc_vs_si/trials.parquet"
    assert store.ray_storage == "s3://my-bucket/studies/ewc_vs_si/_ray"


def test_existing_results_need_resume_and_resume_needs_results(tmp_path, capsys):
    path = write_study(tmp_path, TINY)
    storage = tmp_path / "results"
    assert main([str(path), "--storage", str(storage), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raycl: error: --resume: no results of study 'tiny'")
    assert err.count("\n") == 1
    store = ResultStore(storage, "tiny")
    store.set_trial(make_trial("naive", {}, 0), "x", "TERMINATED", _metrics(2))
    store.write()
    assert main([str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "already holds results of study 'tiny': add --resume" in err
    assert err.count("\n") == 1


# ---- Optuna search, without Ray ------------------------------------------------------------------
def test_optuna_search_runs_every_config_with_every_seed():
    pytest.importorskip("optuna")
    from ray import tune
    from ray.tune.search import Searcher

    from raycl.study.space import params_from_row
    from raycl.tune.compat import spec_of_config
    from raycl.tune.search import SeededOptunaSearch

    arms = {"naive": {}, "ewc": {"ewc_lambda": tune.loguniform(1.0, 100.0), "mode": "online"}}
    search = SeededOptunaSearch(arms, seeds=[0, 1], budget={"naive": 1, "ewc": 3},
                                metric="final_avg_accuracy", mode="max", seed=0)
    seen = []
    while True:
        suggestion = search.suggest(f"t{len(seen)}")
        if suggestion == Searcher.FINISHED:
            break
        trial = spec_of_config(suggestion)
        seen.append(trial)
        value = trial.params.get("ewc_lambda", 1.0) / 100
        search.on_trial_complete(f"t{len(seen) - 1}", {"final_avg_accuracy": value})
    assert len(seen) == (1 + 3) * 2
    ewc = [t for t in seen if t.arm == "ewc"]
    configs = {t.params["ewc_lambda"] for t in ewc}
    assert len(configs) == 3
    for lam in configs:
        assert sorted(t.seed for t in ewc if t.params["ewc_lambda"] == lam) == [0, 1]
    assert all(t.params["mode"] == "online" for t in ewc)
    assert search.told("ewc") == 3

    # a trials row gives back the config with its types (Parquet made the int column float)
    space = {"k": tune.randint(1, 5), "c": tune.choice([16, 32]), "lam": tune.uniform(0, 1),
             "m": "online"}
    config = params_from_row(space, {"param_k": 3.0, "param_c": 32.0, "param_lam": 0.5,
                                     "param_m": "online"})
    assert config == {"k": 3, "c": 32, "lam": 0.5, "m": "online"}
    assert type(config["k"]) is int and type(config["c"]) is int

    # resume: one config fully done, one with a seed missing -> the missing seed runs first
    lam_done, lam_half = sorted(configs)[:2]
    previous = [{"arm": "ewc", "params": {"ewc_lambda": lam_done, "mode": "online"},
                 "seed": s, "value": 0.5} for s in (0, 1)]
    previous.append({"arm": "ewc", "params": {"ewc_lambda": lam_half, "mode": "online"},
                     "seed": 1, "value": 0.4})
    resumed = SeededOptunaSearch(arms, seeds=[0, 1], budget={"naive": 1, "ewc": 3},
                                 metric="final_avg_accuracy", mode="max", previous=previous)
    first = spec_of_config(resumed.suggest("r0"))
    assert first.arm == "ewc" and first.seed == 0
    assert first.params["ewc_lambda"] == lam_half
    rest = []
    while (s := resumed.suggest(f"r{len(rest) + 1}")) != Searcher.FINISHED:
        rest.append(spec_of_config(s))
    # naive (1 config) and one new ewc config, each with both seeds
    assert sorted(t.arm for t in rest) == ["ewc", "ewc", "naive", "naive"]


def test_first_signal_stops_the_study_and_a_second_one_quits(capsys):
    from raycl.tune.callbacks import StudyStopper
    from raycl.tune.runner import _stop_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stopper = StudyStopper()
    with pytest.raises(KeyboardInterrupt), _stop_on_signals(stopper, sys.stdout):
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # one handler for all batches
        os.kill(os.getpid(), signal.SIGTERM)  # like Ctrl-C: Tune stops at its next step
        time.sleep(0.5)
        assert stopper.stop_all() and not stopper("t", {})
        os.kill(os.getpid(), signal.SIGINT)  # a second one does not wait
        time.sleep(5)
    assert "SIGTERM: stopping the study" in capsys.readouterr().out
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_selection_and_confirmation_from_the_command_line(tmp_path, capsys):
    path = write_study(tmp_path, TINY)
    assert main([str(path), "--dry-run", "--selection", "first_tasks",
                 "--confirm-seeds", "none"]) == 0
    out = capsys.readouterr().out
    assert "selection (first_tasks): configs searched on experiences 0-2" in out
    assert "reported: test_final_avg_accuracy of the 'final' runs" in out
    assert main([str(path), "--dry-run", "--confirm-seeds", "7,8"]) == 0
    assert "rerun on fresh seeds [7, 8]" in capsys.readouterr().out
    # a confirmation seed the search already ran is refused in one line, nothing started
    assert main([str(path), "--dry-run", "--confirm-seeds", "1,9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "confirm_seeds: must be" in err
    with pytest.raises(SystemExit):
        main([str(path), "--confirm-seeds", "x"])


def test_trials_record_their_plugins_and_can_reset_the_optimizer_like_the_references(tiny):
    import dataclasses

    trial = make_trial("ewc", {"ewc_lambda": 10.0}, seed=1)
    kept = _run(tiny, trial)
    spec = kept[-1][0]["plugin_spec"]
    assert spec.startswith("EWCPlugin(ewc_lambda=10.0, mode='separate'")
    assert "Divergence" not in spec  # raycl's own guard is not the arm's
    reset = _run(dataclasses.replace(tiny, reset_optimizer=True), trial)
    # the momentum buffers start empty at every experience: a different run from the first
    # experience on (the first starts empty in both)
    assert kept[0][0]["test_acc_exp_000"] == reset[0][0]["test_acc_exp_000"]
    assert [m["test_acc_exp_000"] for m, _ in kept[1:]] != [
        m["test_acc_exp_000"] for m, _ in reset[1:]]


def test_resume_with_nothing_left_rebuilds_a_damaged_matrix(tmp_path, capsys):
    """Garbage in matrix.parquet and every trial done: --resume rewrites the matrix from the
    curves rows (no Ray is needed for that) instead of leaving it unreadable."""
    from raycl.study.plan import prepare_run

    path = write_study(tmp_path, TINY, replace={
        "Arm(\"ewc\",": "# Arm(\"ewc\",", "{\"ewc_lambda\": tune.loguniform(1.0, 100.0)}),":
        "# ", "Arm(\"si\",": "# Arm(\"si\",",
        "{\"si_lambda\": tune.grid_search([0.1, 1.0])}),": "# "})
    storage = tmp_path / "results"
    prepared = prepare_run(path, storage=str(storage), check_storage=False)
    prepared.release()
    assert [t.arm for t in prepared.planned] == ["naive", "naive"]
    store = ResultStore(storage, "tiny")
    store.set_settings(prepared.settings)
    for t in prepared.planned:
        for exp in range(3):
            store.add_report(t, f"id{t.seed}", _metrics(exp))
        store.set_trial(t, f"id{t.seed}", "TERMINATED", _metrics(2))
    store.write()
    folder = storage / "tiny"
    good = pd.read_parquet(folder / "matrix.parquet")
    (folder / "matrix.parquet").write_bytes(b"not parquet")
    assert main([str(path), "--storage", str(storage), "--resume"]) == 0
    assert "all 2 trials are done already" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "matrix.parquet"), good)
