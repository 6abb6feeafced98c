"""raycl.analysis: loading study Parquet, summaries, derived tables, Pareto fronts, figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from synthetic_study import (
    MATCHED_ARMS,
    make_synthetic_study_tables,
    make_synthetic_tables,
    study_results,
    synthetic_settings,
    write_synthetic_study,
)

import raycl.analysis as rca
from raycl.study.schema import SELECTION_HEAD, SELECTION_TAIL
from raycl.study.stats import COMPARISON_COLUMNS

TRIALS_COLUMNS = ("study", "trial_id", "phase", "arm", "seed", "status", "error",
                  "experiences_done", "test_final_avg_accuracy", "test_avg_forgetting",
                  "test_bwt", "valid_final_avg_accuracy", "train_time_s", "device",
                  "started_at", "finished_at", "checkpoint", "schema_version")
MATRIX_COLUMNS = ("study", "trial_id", "phase", "arm", "seed", "split", "trained_exp",
                  "eval_exp", "accuracy", "loss", "schema_version")
TEST_ACC, VALID_ACC = "test_final_avg_accuracy", "valid_final_avg_accuracy"


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's study (the real smoke study when the study layer exists)."""
    return study_results(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> rca.StudyResults:
    """A synthetic v2 study with 4 arms, 3 seeds, 3 configs per searched arm, one ERROR trial,
    the configs chosen on validation confirmed on 2 more seeds."""
    return rca.load_study(write_synthetic_study(tmp_path_factory.mktemp("s") / "synth"))


def _trial(arm: str, seed: int, metric: float, status: str = "TERMINATED", done: int = 5,
           **params: object) -> dict[str, object]:
    return {"study": "hand", "trial_id": f"{arm}-{len(params)}-{seed}-{metric}", "arm": arm,
            "seed": seed, "status": status, "experiences_done": done,
            "test_final_avg_accuracy": metric, "train_time_s": 1.0,
            **{f"param_{k}": v for k, v in params.items()}}


@pytest.fixture
def hand_trials() -> pd.DataFrame:
    """Trials whose summary is checked by hand below."""
    rows = [
        _trial("ewc", 0, 0.5, ewc_lambda=1.0), _trial("ewc", 1, 0.7, ewc_lambda=1.0),
        _trial("ewc", 0, 0.8, ewc_lambda=10.0), _trial("ewc", 1, 0.6, ewc_lambda=10.0),
        _trial("ewc", 0, math.nan, status="ERROR", done=2, ewc_lambda=100.0),
        # Stopped early by a scheduler: its high score covers 2 experiences, it must not win.
        _trial("ewc", 1, 0.99, done=2, ewc_lambda=100.0),
        _trial("naive", 0, 0.2), _trial("naive", 1, 0.3), _trial("naive", 2, 0.4),
    ]
    frame = pd.DataFrame(rows)
    frame.loc[frame["arm"] == "naive", "param_ewc_lambda"] = np.nan
    return frame


# --------------------------------------------------------------------------- loading


def test_load_study_reads_the_tables(tmp_path: Path) -> None:
    trials, matrix, curves, selection = make_synthetic_tables(study="a")
    directory = write_synthetic_study(tmp_path / "a", study="a")
    results = rca.load_study(directory)
    assert isinstance(results, rca.StudyResults)
    assert len(results.trials) == len(trials) and len(results.matrix) == len(matrix)
    assert len(results.curves) == len(curves)
    pd.testing.assert_frame_equal(results.selection, selection)  # version 2: read as it is
    assert set(results.matrix["split"]) == {"valid", "test"}
    assert set(TRIALS_COLUMNS) <= set(results.trials.columns)
    assert str(results.trials["started_at"].dt.tz) == "UTC"
    # A path to one of the files and a file:// URI name the same study.
    same = rca.load_study(os.path.join(directory, "trials.parquet"))
    pd.testing.assert_frame_equal(same.trials, results.trials)
    from_uri = rca.load_study(Path(directory).resolve().as_uri())
    pd.testing.assert_frame_equal(from_uri.matrix, results.matrix)


def test_load_study_concatenates_studies(tmp_path: Path) -> None:
    a = write_synthetic_study(tmp_path / "a", study="a")
    write_synthetic_study(tmp_path / "b", study="b", seeds=(0,), with_error=False)
    both = rca.load_study([a, tmp_path / "b"])
    assert set(both.trials["study"]) == {"a", "b"}
    assert both.trials["trial_id"].duplicated().any()  # ids repeat across studies...
    assert not both.trials[["study", "trial_id"]].duplicated().any()  # ...not within one
    # A storage root holding several study directories loads all of them.
    root = rca.load_study(tmp_path)
    assert len(root.trials) == len(both.trials) and len(root.matrix) == len(both.matrix)
    table = rca.summary(both.trials)
    assert sorted(zip(table["study"], table["arm"], strict=True)) == sorted(
        (s, arm) for s in "ab" for arm in ("ewc", "naive", "online_ewc", "si"))


def test_load_study_tolerates_missing_files_and_columns(tmp_path: Path) -> None:
    directory = write_synthetic_study(tmp_path / "s", drop_columns=("test_fwt", "peak_memory_mb"),
                                      with_selection=False)
    os.remove(os.path.join(directory, "curves.parquet"))
    results = rca.load_study(directory)
    assert results.curves.empty and "trial_id" in results.curves.columns
    assert results.selection.empty
    assert list(results.selection.columns) == [*SELECTION_HEAD, *SELECTION_TAIL]
    assert "peak_memory_mb" not in results.trials.columns
    assert len(rca.summary(results.trials)) == 4
    fig = rca.plot_cost(results.trials)
    assert "peak memory (MB) not recorded" in fig.get_suptitle()
    assert [ax.get_xlabel() for ax in fig.axes] == ["training time (s)"]
    with pytest.raises(FileNotFoundError, match="trials.parquet"):
        rca.load_study(tmp_path / "nothing_here")


def test_load_study_reads_comparisons_and_settings(tmp_path: Path) -> None:
    tables = make_synthetic_study_tables(study="a")
    results = rca.load_study(write_synthetic_study(tmp_path / "a", study="a"))
    pd.testing.assert_frame_equal(results.comparisons, tables["comparisons"])
    assert results.settings == synthetic_settings(study="a")
    assert results.study_settings == {"a": results.settings}
    arms = {arm["name"]: arm for arm in results.settings["arms"]}
    assert arms["online_ewc"]["log_scale"] == ["ewc_lambda"]
    assert arms["online_ewc"]["space"]["decay_factor"].startswith("uniform(")
    # Code that unpacked the four tables keeps working.
    trials, matrix, curves, selection = results
    assert trials is results.trials and selection is results.selection
    assert len(results) == 4 and results[1] is results.matrix
    # Only the Parquet metadata holds the settings (study.json not copied): read from there.
    meta = rca.load_study(write_synthetic_study(tmp_path / "m", study="m", settings="metadata"))
    assert meta.settings == synthetic_settings(study="m")
    # Neither, and no comparisons: empty, with the columns downstream code selects.
    bare = rca.load_study(write_synthetic_study(tmp_path / "b", study="b", settings=None,
                                                with_selection=False))
    assert bare.settings == {} and bare.study_settings == {}
    assert bare.comparisons.empty
    assert list(bare.comparisons.columns) == ["study", *COMPARISON_COLUMNS]
    # Several studies: comparisons concatenated, the first study's settings, each by name.
    both = rca.load_study([tmp_path / "a", tmp_path / "m", tmp_path / "b"])
    assert set(both.comparisons["study"]) == {"a", "m"}
    assert len(both.comparisons) == 2 * len(tables["comparisons"])
    assert both.settings == results.settings
    assert set(both.study_settings) == {"a", "m"}
    assert both.study_settings["m"]["name"] == "m"
    # A broken study.json is an error that names the file, on one line.
    (tmp_path / "a" / "study.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="study.json must hold a JSON object"):
        rca.load_study(tmp_path / "a")
    (tmp_path / "a" / "study.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="study.json is not valid JSON") as error:
        rca.load_study(tmp_path / "a")
    assert "\n" not in str(error.value)


def test_load_study_rejects_a_table_without_required_columns(tmp_path: Path) -> None:
    pd.DataFrame({"trial_id": ["1"], "status": ["TERMINATED"]}).to_parquet(
        tmp_path / "trials.parquet")
    with pytest.raises(ValueError, match="arm"):
        rca.load_study(tmp_path)


def _write_v1_study(directory: Path) -> Path:
    """A study as raycl wrote it before schema version 2: unprefixed metrics measured on the
    test stream, no phase, no split, no selection table."""
    directory.mkdir(parents=True)
    head = [{"study": "old", "trial_id": f"t{i}", "trial_key": f"k{i}", "arm": arm,
             "seed": seed} for i, (arm, seed) in enumerate([("ewc", 0), ("ewc", 1),
                                                             ("naive", 0)])]
    accuracy = [0.6, 0.8, 0.3]
    pd.DataFrame([{**h, "param_ewc_lambda": 10.0 if h["arm"] == "ewc" else np.nan,
                   "status": "TERMINATED", "error": None, "experiences_done": 2,
                   "final_avg_accuracy": a, "avg_forgetting": 0.1, "bwt": -0.1, "fwt": 0.0,
                   "train_time_s": 1.5, "peak_memory_mb": 100.0, "schema_version": 1}
                  for h, a in zip(head, accuracy, strict=True)]).to_parquet(
        directory / "trials.parquet", index=False)
    # Each run's final row averages to its final_avg_accuracy.
    pd.DataFrame([{**h, "trained_exp": t, "eval_exp": e,
                   "accuracy": a if t == 1 else (0.9 if e == 0 else 0.0), "loss": 1.0,
                   "schema_version": 1}
                  for h, a in zip(head, accuracy, strict=True) for t in range(2)
                  for e in range(2)]).to_parquet(directory / "matrix.parquet", index=False)
    pd.DataFrame([{**h, "experience": t, "training_iteration": t + 1, "avg_accuracy": 0.5,
                   "stream_accuracy": 0.4, "stream_loss": 1.2, "acc_exp_000": 0.7,
                   "loss_exp_000": 0.9, "train_time_s": 0.7, "schema_version": 1}
                  for h in head for t in range(2)]).to_parquet(directory / "curves.parquet",
                                                                index=False)
    return directory


def test_load_study_upgrades_a_version_1_study(tmp_path: Path) -> None:
    old = rca.load_study(_write_v1_study(tmp_path / "old"))
    trials, matrix, curves = old.trials, old.matrix, old.curves
    # Unprefixed metrics were measured on the test stream: they become the test columns.
    assert trials["test_final_avg_accuracy"].tolist() == [0.6, 0.8, 0.3]
    assert {"test_avg_forgetting", "test_bwt", "test_fwt"} <= set(trials.columns)
    assert not {"final_avg_accuracy", "avg_forgetting", "bwt", "fwt"} & set(trials.columns)
    assert {"test_avg_accuracy", "test_stream_accuracy", "test_stream_loss", "test_acc_exp_000",
            "test_loss_exp_000"} <= set(curves.columns)
    assert "acc_exp_000" not in curves.columns and "avg_accuracy" not in curves.columns
    # Cost metrics have no split and keep their names.
    assert trials["train_time_s"].tolist() == [1.5] * 3 and "train_time_s" in curves.columns
    # Every table gets the phase (all search) in the head; the matrix gets split=test.
    for frame in (trials, matrix, curves):
        assert list(frame.columns[:6]) == ["study", "trial_id", "trial_key", "phase", "arm",
                                           "seed"]
        assert (frame["phase"] == "search").all() and (frame["schema_version"] == 2).all()
    assert list(matrix.columns[6:8]) == ["split", "trained_exp"]
    assert (matrix["split"] == "test").all()
    assert old.selection.empty
    assert list(old.selection.columns) == [*SELECTION_HEAD, *SELECTION_TAIL]
    # The analysis reads an upgraded study with its defaults.
    table = rca.summary(old.trials).set_index("arm")
    assert table.loc["ewc", "mean"] == pytest.approx(0.7)
    table = rca.accuracy_matrix(old.matrix, "t1")
    assert table.iloc[-1].mean() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="valid split"):
        rca.accuracy_matrix(old.matrix, "t1", split="valid")  # v1 never measured validation
    # Loaded next to a version-2 study, the two concatenate on the same names.
    both = rca.load_study([tmp_path / "old", write_synthetic_study(tmp_path / "new")])
    assert both.trials["test_final_avg_accuracy"].notna().all() == (
        both.trials["status"] == "TERMINATED").all()
    assert set(both.selection["study"]) == {"synth"}


def test_load_study_refuses_an_unknown_schema_version(tmp_path: Path) -> None:
    directory = Path(write_synthetic_study(tmp_path / "future"))
    trials = pd.read_parquet(directory / "trials.parquet").assign(schema_version=3)
    trials.to_parquet(directory / "trials.parquet", index=False)
    with pytest.raises(ValueError, match="schema_version 3") as error:
        rca.load_study(directory)
    assert "\n" not in str(error.value) and "trials.parquet" in str(error.value)
    # A version-2 trials table next to a newer selection table is refused too.
    trials.assign(schema_version=2).to_parquet(directory / "trials.parquet", index=False)
    selection = pd.read_parquet(directory / "selection.parquet").assign(schema_version=7)
    selection.to_parquet(directory / "selection.parquet", index=False)
    with pytest.raises(ValueError, match=r"selection\.parquet has schema_version 7"):
        rca.load_study(directory)


# --------------------------------------------------------------------------- summary


def test_summary_by_hand(hand_trials: pd.DataFrame) -> None:
    table = rca.summary(hand_trials)
    assert list(table["arm"]) == ["ewc", "naive"]  # best arm first
    ewc = table.iloc[0]
    assert ewc["best_config"] == {"ewc_lambda": 10.0}
    assert ewc["mean"] == pytest.approx(0.7)
    assert ewc["std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.8 and 0.6
    assert (ewc["n_seeds"], ewc["n_configs"], ewc["n_trials"]) == (2, 2, 6)
    assert (ewc["n_errored"], ewc["n_stopped"]) == (1, 1)
    naive = table.iloc[1]
    assert naive["best_config"] == {}
    assert naive["mean"] == pytest.approx(0.3) and naive["std"] == pytest.approx(0.1)
    assert (naive["n_seeds"], naive["n_errored"]) == (3, 0)
    assert table.attrs == {"metric": "test_final_avg_accuracy", "mode": "max"}


def test_summary_min_mode_and_other_metric(hand_trials: pd.DataFrame) -> None:
    table = rca.summary(hand_trials, mode="min")
    assert list(table["arm"]) == ["naive", "ewc"]
    assert table.set_index("arm").loc["ewc", "best_config"] == {"ewc_lambda": 1.0}
    assert table.set_index("arm").loc["ewc", "mean"] == pytest.approx(0.6)
    hand_trials["train_time_s"] = np.arange(len(hand_trials), dtype=float)
    by_time = rca.summary(hand_trials, metric="train_time_s", mode="min").set_index("arm")
    assert by_time.loc["ewc", "best_config"] == {"ewc_lambda": 1.0}  # rows 0 and 1: mean 0.5


def test_summary_arm_with_only_errors(hand_trials: pd.DataFrame) -> None:
    broken = pd.DataFrame([_trial("si", s, math.nan, status="ERROR", si_lambda=1.0)
                           for s in (0, 1)])
    table = rca.summary(pd.concat([hand_trials, broken], ignore_index=True)).set_index("arm")
    assert table.loc["si", "best_config"] is None and math.isnan(table.loc["si", "mean"])
    assert (table.loc["si", "n_errored"], table.loc["si", "n_trials"]) == (2, 2)
    assert table.index[-1] == "si"  # arms without a result sort last


def test_summary_rejects_bad_arguments(hand_trials: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="mode"):
        rca.summary(hand_trials, mode="best")
    with pytest.raises(ValueError, match="no_such_metric"):
        rca.summary(hand_trials, metric="no_such_metric")


def test_best_trials_are_the_best_configs_seeds(synth: rca.StudyResults) -> None:
    # Without a selection table: the best search config by the test metric.
    best = rca.best_trials(synth.trials)
    table = rca.summary(rca.search_trials(synth.trials)).set_index("arm")
    for arm, rows in best.groupby("arm"):
        assert len(rows) == table.loc[arm, "n_seeds"]
        assert rows["test_final_avg_accuracy"].mean() == pytest.approx(table.loc[arm, "mean"])
        assert (rows["status"] == "TERMINATED").all()
        assert (rows["phase"] == "search").all()


# --------------------------------------------------------------------------- matrices


def test_accuracy_matrix_shape_and_values(synth: rca.StudyResults) -> None:
    trial = synth.trials[synth.trials["status"] == "TERMINATED"].iloc[4]
    table = rca.accuracy_matrix(synth.matrix, trial["trial_id"])
    assert table.shape == (5, 5)
    assert list(table.index) == list(range(5)) and list(table.columns) == list(range(5))
    rows = synth.matrix[(synth.matrix["trial_id"] == trial["trial_id"])
                        & (synth.matrix["split"] == "test")]
    for row in rows.itertuples():
        assert table.loc[row.trained_exp, row.eval_exp] == row.accuracy
    # The last row's mean is the trial's final average accuracy.
    assert table.iloc[-1].mean() == pytest.approx(trial["test_final_avg_accuracy"])
    by_key = rca.accuracy_matrix(synth.matrix, trial["trial_key"])
    pd.testing.assert_frame_equal(by_key, table)
    loss = rca.accuracy_matrix(synth.matrix, trial["trial_id"], value="loss")
    assert loss.shape == (5, 5) and (loss.to_numpy() >= 0).all()


def test_accuracy_matrix_partial_run_and_errors(synth: rca.StudyResults) -> None:
    errored = synth.trials[synth.trials["status"] == "ERROR"].iloc[0]
    partial = rca.accuracy_matrix(synth.matrix, errored["trial_id"])
    assert partial.shape == (errored["experiences_done"], 5)
    with pytest.raises(ValueError, match="no matrix rows"):
        rca.accuracy_matrix(synth.matrix, "does-not-exist")
    # One trial that trained two seeds needs the seed.
    two_seeds = synth.matrix[synth.matrix["trial_id"].isin(["00001", "00002"])].copy()
    two_seeds["trial_id"] = "shared"
    two_seeds = two_seeds.drop(columns="trial_key")
    with pytest.raises(ValueError, match="seed"):
        rca.accuracy_matrix(two_seeds, "shared")
    assert rca.accuracy_matrix(two_seeds, "shared", seed=1).shape == (5, 5)


def _hand_matrix() -> pd.DataFrame:
    values = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, 0.5, 0.7]]
    return pd.DataFrame([{"study": "s", "trial_id": "t", "seed": 0, "arm": "a",
                          "trained_exp": t, "eval_exp": e, "accuracy": values[t][e]}
                         for t in range(3) for e in range(3)])


def test_average_accuracy_and_forgetting_by_hand() -> None:
    avg = rca.average_accuracy_per_experience(_hand_matrix())
    assert avg["avg_accuracy"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    forgetting = rca.forgetting_per_experience(_hand_matrix())
    assert forgetting["eval_exp"].tolist() == [0, 1]
    assert forgetting["forgetting"].tolist() == pytest.approx([0.6, 0.3])
    # A v2 matrix holds both splits: each function reads one, test unless asked.
    both = pd.concat([_hand_matrix().assign(split="test"),
                      _hand_matrix().assign(split="valid", accuracy=lambda f: f.accuracy / 2)])
    assert rca.average_accuracy_per_experience(both)["avg_accuracy"].tolist() == pytest.approx(
        [0.9, 0.7, 0.5])
    assert rca.average_accuracy_per_experience(both, split="valid")[
        "avg_accuracy"].tolist() == pytest.approx([0.45, 0.35, 0.25])
    assert rca.forgetting_per_experience(both, split="valid")[
        "forgetting"].tolist() == pytest.approx([0.3, 0.15])


def test_matrix_functions_read_the_test_split_unless_asked(synth: rca.StudyResults) -> None:
    trial = synth.trials[(synth.trials["status"] == "TERMINATED")
                         & (synth.trials["arm"] == "ewc")].iloc[0]
    test = rca.accuracy_matrix(synth.matrix, trial["trial_id"])
    valid = rca.accuracy_matrix(synth.matrix, trial["trial_id"], split="valid")
    pd.testing.assert_frame_equal(test, rca.accuracy_matrix(synth.matrix, trial["trial_id"],
                                                            split="test"))
    assert test.iloc[-1].mean() == pytest.approx(trial["test_final_avg_accuracy"])
    assert valid.iloc[-1].mean() == pytest.approx(trial["valid_final_avg_accuracy"])
    assert not np.allclose(test.to_numpy(), valid.to_numpy())
    runs = synth.trials[synth.trials["trial_id"] == trial["trial_id"]]
    pd.testing.assert_frame_equal(rca.mean_accuracy_matrix(synth.matrix, runs), test,
                                  check_names=False)
    pd.testing.assert_frame_equal(rca.mean_accuracy_matrix(synth.matrix, runs, split="valid"),
                                  valid, check_names=False)
    rows = rca.select_runs(synth.matrix, runs)
    for split, table in (("test", test), ("valid", valid)):
        kwargs = {} if split == "test" else {"split": split}
        avg = rca.average_accuracy_per_experience(rows, **kwargs)
        assert avg["avg_accuracy"].tolist() == pytest.approx(
            [table.iloc[t, : t + 1].mean() for t in range(5)])
        forgetting = rca.forgetting_per_experience(rows, **kwargs)
        assert forgetting["forgetting"].tolist() == pytest.approx(
            [table.iloc[j:-1, j].max() - table.iloc[-1, j] for j in range(4)])
    with pytest.raises(ValueError, match="split"):
        rca.average_accuracy_per_experience(rows, split="train")
    fig = rca.plot_accuracy_matrix(synth.matrix, trial["trial_id"], split="valid")
    assert fig.axes[0].get_title().startswith("Validation accuracy matrix")
    assert fig.axes[0].texts[0].get_text() == f"{valid.iat[0, 0]:.2f}"
    curves = rca.plot_avg_accuracy_curves(synth.trials, synth.matrix, split="valid")
    assert "validation" in curves.axes[0].get_ylabel()
    assert "test" in rca.plot_forgetting(synth.trials, synth.matrix).axes[0].get_ylabel()


def _last_points(fig: Any) -> dict[str, float]:
    return {line.get_label().split(" (")[0]: float(line.get_ydata()[-1])
            for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}


def test_best_config_figures_use_the_config_chosen_on_validation(
        synth: rca.StudyResults) -> None:
    from matplotlib.collections import PathCollection

    selection = synth.selection.set_index("arm")
    chosen = rca.chosen_configs(synth.selection)
    test_best = rca.summary(rca.search_trials(synth.trials)).set_index("arm")
    for arm in ("ewc", "online_ewc", "si"):  # validation and test disagree in the synthetic study
        assert chosen[("synth", arm)] == json.loads(selection.loc[arm, "chosen_config"])
        assert chosen[("synth", arm)] != test_best.loc[arm, "best_config"]
    best = rca.best_trials(synth.trials, selection=synth.selection)
    for arm, rows in best.groupby("arm"):
        # The runs behind the reported figure: the confirmation of the chosen config.
        assert (rows["phase"] == "confirm").all()
        assert sorted(rows["seed"]) == json.loads(selection.loc[arm, "reported_seeds"])
        assert rows["test_final_avg_accuracy"].mean() == pytest.approx(
            selection.loc[arm, "reported_mean"])
    # A study stopped before its confirmation: the chosen config's search runs.
    searched = rca.best_trials(rca.search_trials(synth.trials), selection=synth.selection)
    for arm, rows in searched.groupby("arm"):
        assert (rows["phase"] == "search").all()
        assert rows["test_final_avg_accuracy"].mean() == pytest.approx(
            selection.loc[arm, "search_test_mean"])
    # The curves end at the test final average accuracy of those runs: the reported figure.
    fig = rca.plot_avg_accuracy_curves(synth.trials, synth.matrix, selection=synth.selection)
    assert _last_points(fig) == pytest.approx(selection["reported_mean"].to_dict())
    assert "chosen per arm on valid_final_avg_accuracy" in fig.axes[0].get_title()
    assert "TEST" not in fig.axes[0].get_title()
    # Without the selection table: the best search config by its test mean, as before.
    fallback = _last_points(rca.plot_avg_accuracy_curves(synth.trials, synth.matrix))
    assert fallback == pytest.approx(test_best["mean"].to_dict())
    # The matrices and forgetting draw the same runs.
    matrices = rca.plot_accuracy_matrices(synth.trials, synth.matrix, selection=synth.selection)
    assert "(mean of 2 seeds)" in matrices.axes[0].get_title()
    # The sensitivity star marks the chosen config, at its search runs' mean test value.
    sensitivity = rca.plot_sensitivity(synth.trials, selection=synth.selection)
    panel = next(ax for ax in sensitivity.axes if ax.get_title() == "si: si_lambda")
    stars = [c for c in panel.collections if isinstance(c, PathCollection)
             and len(c.get_sizes()) and c.get_sizes()[0] == 220]
    assert len(stars) == 1
    x, y = stars[0].get_offsets()[0]
    assert x == pytest.approx(chosen[("synth", "si")]["si_lambda"])
    assert y == pytest.approx(selection.loc["si", "search_test_mean"])
    assert "test final average accuracy" in panel.get_ylabel()
    labels = [t.get_text() for t in sensitivity.legends[0].get_texts()]
    assert "chosen config of each arm" in labels


def test_figures_say_when_configs_were_chosen_on_test(tmp_path: Path) -> None:
    results = rca.load_study(write_synthetic_study(tmp_path / "t", selection_split="test"))
    fig = rca.plot_avg_accuracy_curves(results.trials, results.matrix,
                                       selection=results.selection)
    assert "CHOSEN ON TEST DATA" in fig.axes[0].get_title()
    # Chosen on test, the chosen config is the test-best one.
    test_best = rca.summary(rca.search_trials(results.trials)).set_index("arm")
    for (_, arm), config in rca.chosen_configs(results.selection).items():
        assert config == test_best.loc[arm, "best_config"]


# --------------------------------------------------------------------------- intervals


def _t_interval(values: Any) -> tuple[float, float]:
    """scipy's Student-t 95 % interval of the mean of ``values``."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    return stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))


def test_mean_intervals_are_scipy_t_intervals() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 5 + ["c"],
                          "x": np.r_[rng.normal(0.5, 0.1, 8), 0.7]})
    table = rca.mean_intervals(frame, "arm", "x")
    assert list(table.index) == ["a", "b", "c"]
    for arm, rows in frame.groupby("arm"):
        if len(rows) > 1:
            assert (table.loc[arm, "low"], table.loc[arm, "high"]) == pytest.approx(
                _t_interval(rows["x"]))
        assert table.loc[arm, "mean"] == pytest.approx(rows["x"].mean())
        assert table.loc[arm, "n"] == len(rows)
    assert math.isnan(table.loc["c", "low"]) and math.isnan(table.loc["c", "std"])
    two = rca.mean_intervals(frame.assign(k=[0, 1] * 4 + [0]), ["arm", "k"], "x")
    assert two.index.names == ["arm", "k"] and len(two) == 5


def _band(ax: Any, color: str) -> dict[float, tuple[float, float]]:
    """x -> (low, high) of the fill_between band drawn in ``color``."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    band = next(c for c in ax.collections if isinstance(c, PolyCollection)
                and to_hex(c.get_facecolor()[0]) == color)
    vertices = band.get_paths()[0].vertices
    return {float(x): (vertices[vertices[:, 0] == x, 1].min(),
                       vertices[vertices[:, 0] == x, 1].max()) for x in np.unique(vertices[:, 0])}


def test_figures_draw_t_intervals_over_seeds(synth: rca.StudyResults) -> None:
    """Every spread drawn for an arm is scipy's 95 % t interval over its seeds, and the figure
    says so."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    best = rca.best_trials(synth.trials, selection=synth.selection)
    # Average accuracy curves: the band at each experience.
    fig = rca.plot_avg_accuracy_curves(synth.trials, synth.matrix, selection=synth.selection)
    ax = fig.axes[0]
    assert "band: 95% t interval over 2 seeds" in ax.get_title()
    assert "band: 95% t interval over 2 seeds" in [t.get_text()
                                                    for t in ax.get_legend().get_texts()]
    for arm, runs in best.groupby("arm"):
        matrices = [rca.accuracy_matrix(synth.matrix, r.trial_id, seed=r.seed)
                    for r in runs.itertuples()]
        band = _band(ax, rca.arm_color(arm))
        for t in range(5):
            seen = [m.iloc[t, : t + 1].mean() for m in matrices]
            assert band[float(t)] == pytest.approx(_t_interval(seen)), (arm, t)
    # Forgetting: the error bar of each arm's mean group.
    fig = rca.plot_forgetting(synth.trials, synth.matrix, selection=synth.selection)
    ax = fig.axes[0]
    assert "error bars: 95% t interval over 2 seeds" in ax.get_title()
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    for arm, runs in best.groupby("arm"):
        forgetting = []
        for r in runs.itertuples():
            m = rca.accuracy_matrix(synth.matrix, r.trial_id, seed=r.seed).to_numpy()
            forgetting.append(np.mean([m[j:-1, j].max() - m[-1, j] for j in range(4)]))
        segments = bars[arm].errorbar.lines[2][0].get_segments()
        low, high = segments[-1][:, 1]  # the last group: the mean over experiences
        assert (low, high) == pytest.approx(_t_interval(forgetting)), arm
    # Sensitivity: each config's bar over its search seeds.
    fig = rca.plot_sensitivity(synth.trials, selection=synth.selection, settings=synth.settings)
    assert "circles: configs, mean over seeds with 95% t interval over 2–3 seeds" in (
        fig.get_suptitle())
    panel = next(ax for ax in fig.axes if ax.get_title() == "si: si_lambda")
    errorbar = next(c for c in panel.containers if isinstance(c, ErrorbarContainer))
    drawn = {round(float(seg[0, 0]), 9): tuple(seg[:, 1])
             for seg in errorbar.lines[2][0].get_segments()}
    search = rca.completed_trials(rca.search_trials(synth.trials))
    for value, rows in search[search["arm"] == "si"].groupby("param_si_lambda"):
        assert drawn[round(float(value), 9)] == pytest.approx(
            _t_interval(rows["test_final_avg_accuracy"]))
    # Cost: each arm's chosen config, both axes.
    fig = rca.plot_cost(synth.trials, selection=synth.selection)
    ax = fig.axes[0]
    assert "each arm's chosen config: mean, 95% t interval over 2 seeds" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    diamonds = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(diamonds) == 4
    runs = best[best["arm"] == "si"]
    si = next(c for c in diamonds
              if c.lines[0].get_ydata()[0] == pytest.approx(runs["test_final_avg_accuracy"].mean()))
    x_bar, y_bar = (lines.get_segments()[0] for lines in si.lines[2])
    assert tuple(x_bar[:, 0]) == pytest.approx(_t_interval(runs["train_time_s"]))
    assert tuple(y_bar[:, 1]) == pytest.approx(_t_interval(runs["test_final_avg_accuracy"]))


def test_one_seed_draws_no_interval(tmp_path: Path) -> None:
    results = rca.load_study(write_synthetic_study(tmp_path / "one", seeds=(0,),
                                                   confirm_seeds=(), with_error=False))
    fig = rca.plot_avg_accuracy_curves(results.trials, results.matrix,
                                       selection=results.selection)
    assert "one seed per arm: no interval shown" in fig.axes[0].get_title()
    assert not fig.axes[0].collections  # no band
    fig = rca.plot_forgetting(results.trials, results.matrix, selection=results.selection)
    assert "one seed per arm: no interval shown" in fig.axes[0].get_title()


def test_matched_params() -> None:
    tables = make_synthetic_study_tables(arms=MATCHED_ARMS, study="gem")
    assert rca.matched_params(tables["trials"]) == ["param_patterns_per_experience"]
    # Searched parameters vary within an arm; a constant of a single arm sets nothing apart.
    assert rca.matched_params(make_synthetic_tables()[0]) == []
    one = tables["trials"][tables["trials"]["arm"].isin(["naive", "gem_m16"])]
    assert rca.matched_params(one) == []
    # One value everywhere is no grouping either.
    same = tables["trials"].assign(param_patterns_per_experience=lambda f: f[
        "param_patterns_per_experience"].where(f["param_patterns_per_experience"].isna(), 16.0))
    assert rca.matched_params(same) == []


# --------------------------------------------------------------------------- Pareto front


def test_pareto_front_by_hand() -> None:
    points = pd.DataFrame({
        "cost": [1.0, 2.0, 2.0, 3.0, 4.0, 1.0, np.nan, 5.0],
        "acc": [0.5, 0.7, 0.6, 0.7, 0.9, 0.5, 1.0, 0.9],
    }, index=list("abcdefgh"))
    front = rca.pareto_front(points, "cost", "acc")
    # c is beaten by b; d ties b's accuracy at a higher cost; h ties e at a higher cost; g has
    # no cost; a and f are the same point (neither dominates the other).
    assert sorted(front[front].index) == ["a", "b", "e", "f"]
    low = rca.pareto_front(points, "cost", "acc", mode="min")
    assert sorted(low[low].index) == ["a", "f"]


def test_pareto_front_matches_the_definition_on_random_points() -> None:
    rng = np.random.default_rng(3)
    points = pd.DataFrame({"cost": rng.integers(0, 8, 200).astype(float),
                           "acc": rng.integers(0, 8, 200) / 8})
    front = rca.pareto_front(points, "cost", "acc").to_numpy()
    c, a = points["cost"].to_numpy(), points["acc"].to_numpy()
    weakly = (c[None, :] <= c[:, None]) & (a[None, :] >= a[:, None])
    strictly = (c[None, :] < c[:, None]) | (a[None, :] > a[:, None])
    dominated = (weakly & strictly).any(axis=1)
    assert (front == ~dominated).all() and front.any()


# --------------------------------------------------------------------------- colours


def test_arm_colours_are_stable_and_distinct() -> None:
    assert rca.arm_color("ewc") == rca.KNOWN_ARM_COLORS["ewc"] == rca.arm_color("EWC")
    small = rca.arm_colors(["ewc", "si"])
    large = rca.arm_colors(["naive", "si", "ewc", "my_arm", "other_arm", "third"])
    assert small["ewc"] == large["ewc"] and small["si"] == large["si"]
    many = rca.arm_colors([f"arm{i}" for i in range(12)] + ["ewc", "si", "naive"])
    assert len(set(many.values())) == len(many)  # checksum clashes are moved apart
    two_studies = rca.arm_colors(["a:ewc", "b:ewc"])
    assert len(set(two_studies.values())) == 2
    # The same name gets the same colour in another process (no salted hash()).
    code = "import raycl.analysis as r; print(r.arm_color('my_arm'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == rca.arm_color("my_arm")


def _line_colours(fig: object) -> dict[str, str]:
    from matplotlib.colors import to_hex

    return {line.get_label().split(" (")[0]: to_hex(line.get_color())
            for ax in fig.axes for line in ax.get_lines()  # type: ignore[attr-defined]
            if not line.get_label().startswith("_")}


def test_figures_share_arm_colours(synth: rca.StudyResults) -> None:
    from matplotlib.colors import to_hex
    from matplotlib.container import BarContainer

    curves = _line_colours(rca.plot_avg_accuracy_curves(synth.trials, synth.matrix))
    assert curves == {arm: rca.arm_color(arm) for arm in ("ewc", "naive", "online_ewc", "si")}
    legend = rca.plot_cost(synth.trials).legends[0]
    handles: list[Any] = list(legend.legend_handles)
    scatter = {text.get_text(): to_hex(handle.get_facecolor()[0])
               for text, handle in zip(legend.get_texts(), handles, strict=True)
               if text.get_text() in curves}
    assert scatter == curves
    containers: list[Any] = list(
        rca.plot_forgetting(synth.trials, synth.matrix).axes[0].containers)
    bars = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in containers
            if isinstance(c, BarContainer)}
    assert bars == curves


# --------------------------------------------------------------------------- figures


def test_infer_log_scale() -> None:
    rng = np.random.default_rng(0)
    assert rca.infer_log_scale([1, 10, 100, 1000])
    assert rca.infer_log_scale([1, 10, 100])  # a geometric grid over two decades
    assert rca.infer_log_scale(10 ** rng.uniform(-2, 0, 30))  # log-uniform over two decades
    assert not rca.infer_log_scale(rng.uniform(1, 100, 30))  # uniform over two decades
    assert not rca.infer_log_scale([0.5, 0.7, 0.9])
    assert not rca.infer_log_scale([-1.0, 10.0, 1000.0])
    assert not rca.infer_log_scale(["class", "experience"])


def test_study_figures_are_labelled(synth: rca.StudyResults) -> None:
    figures = rca.study_figures(synth.trials, synth.matrix)
    # No importance: 3 configs per arm are too few to rank; online_ewc searches two parameters.
    assert set(figures) == {"accuracy_matrices", "avg_accuracy", "forgetting", "sensitivity",
                            "parallel_coordinates", "param_pairs", "cost"}
    for name, fig in figures.items():
        title = fig.get_suptitle() or " ".join(ax.get_title() for ax in fig.axes)
        assert title.strip(), name
        assert "excluded: 1 errored trial" in title, name
        for ax in fig.axes:
            if ax.get_visible() and ax.get_label() != "<colorbar>" and ax.has_data():
                assert ax.get_xlabel(), (name, ax.get_title())
                # Panels that share their y axis name it once, in the first column.
                spec = ax.get_subplotspec()
                if spec is None or spec.is_first_col():
                    assert ax.get_ylabel(), (name, ax.get_title())


def test_figures_exclude_errored_and_incomplete_trials(synth: rca.StudyResults) -> None:
    done = rca.completed_trials(synth.trials)
    assert len(done) == len(synth.trials) - 1
    fig = rca.plot_cost(synth.trials)
    ax = fig.axes[0]
    collections: list[Any] = list(ax.collections)
    # Filled dots are trials; the hollow circles on top mark the Pareto front. The cost plot
    # describes the search: confirmation runs are not in it.
    plotted = sum(len(c.get_offsets()) for c in collections if len(c.get_facecolor()))
    assert plotted == len(rca.completed_trials(rca.search_trials(synth.trials)))
    assert plotted == len(done) - (synth.trials["phase"] == "confirm").sum()


def test_plot_accuracy_matrix_annotates_every_cell(synth: rca.StudyResults) -> None:
    fig = rca.plot_accuracy_matrix(synth.matrix, "00001")
    ax = fig.axes[0]
    assert len(ax.texts) == 25
    table = rca.accuracy_matrix(synth.matrix, "00001")
    assert ax.texts[0].get_text() == f"{table.iat[0, 0]:.2f}"
    assert fig.axes[1].get_ylabel() == "accuracy (0–1)"  # the colour bar states the unit


def test_plot_sensitivity_axes(hand_trials: pd.DataFrame) -> None:
    rows = []
    for seed in (0, 1):
        for lr, decay, policy in [(1e-3, 0.5, "class"), (1e-2, 0.7, "experience"),
                                  (1e-1, 0.9, "class"), (1.0, 0.8, "experience")]:
            rows.append(_trial("replay", seed, 0.3 + decay / 2 + seed / 100, lr=lr, decay=decay,
                               policy=policy))
    trials = pd.concat([hand_trials, pd.DataFrame(rows)], ignore_index=True)
    fig = rca.plot_sensitivity(trials)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    # One panel per arm and parameter it searches; naive searches nothing.
    assert set(axes) == {"ewc: ewc_lambda", "replay: lr", "replay: decay", "replay: policy"}
    # No study.json: the scale is guessed from the values.
    assert axes["replay: lr"].get_xscale() == "log"
    assert axes["replay: decay"].get_xscale() == "linear"
    assert [t.get_text() for t in axes["replay: policy"].get_xticklabels()] == [
        "class", "experience"]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"ewc", "replay", "naive (searches nothing: mean)",
            "best config of each arm"} <= set(labels)
    assert "values spanning decades (no study.json)" in fig.get_suptitle()


def _arm_points(ax: Any) -> np.ndarray:
    """The x of the trial dots of a sensitivity panel (its faint scatter)."""
    from matplotlib.collections import PathCollection

    dots = [c for c in ax.collections if isinstance(c, PathCollection)
            and len(c.get_sizes()) and c.get_sizes()[0] == 14]
    return np.sort(np.concatenate([c.get_offsets()[:, 0] for c in dots]))


def test_sensitivity_log_axis_follows_study_json() -> None:
    """An arm's parameter is on a log axis when study.json says it is searched on a log scale,
    whatever its values span; a uniform one is linear even across three decades; arms sharing
    a parameter name keep their own panels."""
    rng = np.random.default_rng(5)
    narrow = np.exp(rng.uniform(np.log(2.0), np.log(8.0), 4))  # log-uniform, < 1 decade
    wide = np.array([1.0, 250.0, 600.0, 1000.0])  # uniform over three decades
    rows = [_trial("a", seed, 0.5 + 0.01 * i + seed / 100, lr=float(x))
            for seed in (0, 1) for i, x in enumerate(narrow)]
    rows += [_trial("b", seed, 0.4 + 0.01 * i + seed / 100, lr=float(x))
             for seed in (0, 1) for i, x in enumerate(wide)]
    rows += [_trial("c", seed, 0.3, lr=float(x))
             for seed in (0, 1) for x in (1e-3, 1e-2, 1e-1, 1.0)]
    trials = pd.DataFrame(rows)
    settings = {"name": "hand", "arms": [
        {"name": "a", "space": {"lr": "loguniform(2, 8)"}, "log_scale": ["lr"]},
        {"name": "b", "space": {"lr": "uniform(1, 1000)"}, "log_scale": []},
        {"name": "c", "space": {"lr": "grid_search([0.001, 0.01, 0.1, 1.0])"},
         "log_scale": []},
    ]}
    fig = rca.plot_sensitivity(trials, settings=settings)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"a: lr", "b: lr", "c: lr"}  # not pooled into one "lr" panel
    assert axes["a: lr"].get_xscale() == "log"
    assert axes["b: lr"].get_xscale() == "linear"
    # A grid declares no scale: the values decide (four decades: log).
    assert axes["c: lr"].get_xscale() == "log"
    assert "searched on a log scale (study.json)" in fig.get_suptitle()
    np.testing.assert_allclose(_arm_points(axes["a: lr"]), np.sort(np.tile(narrow, 2)))
    np.testing.assert_allclose(_arm_points(axes["b: lr"]), np.sort(np.tile(wide, 2)))
    # Without study.json the values decide, the other way round for both.
    guessed = {ax.get_title(): ax.get_xscale()
               for ax in rca.plot_sensitivity(trials).axes if ax.get_visible()}
    assert guessed == {"a: lr": "linear", "b: lr": "log", "c: lr": "log"}
    # The settings as load_study gives them for several studies: by study name.
    by_study = rca.plot_sensitivity(trials, settings={"hand": settings})
    assert {ax.get_title(): ax.get_xscale() for ax in by_study.axes if ax.get_visible()} == {
        "a: lr": "log", "b: lr": "linear", "c: lr": "log"}
    assert rca.param_log_scale("lr", narrow, settings["arms"][0])
    assert not rca.param_log_scale("lr", wide, settings["arms"][1])
    assert not rca.param_log_scale("lr", narrow) and rca.param_log_scale("lr", wide)


def test_sensitivity_of_the_synthetic_study_uses_its_study_json(
        synth: rca.StudyResults) -> None:
    fig = rca.plot_sensitivity(synth.trials, selection=synth.selection, settings=synth.settings)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    scales = {title: ax.get_xscale() for title, ax in axes.items()}
    assert scales == {"ewc: ewc_lambda": "log", "online_ewc: ewc_lambda": "log",
                      "online_ewc: decay_factor": "linear", "si: si_lambda": "log"}
    # Each arm's panel holds its own trials only (ewc and online_ewc share a parameter name).
    search = rca.completed_trials(rca.search_trials(synth.trials))
    for arm in ("ewc", "online_ewc"):
        np.testing.assert_allclose(_arm_points(axes[f"{arm}: ewc_lambda"]),
                                   np.sort(search.loc[search["arm"] == arm, "param_ewc_lambda"]))


def test_figures_of_several_studies(tmp_path: Path) -> None:
    write_synthetic_study(tmp_path / "a", study="a")
    write_synthetic_study(tmp_path / "b", study="b", seeds=(0, 1), rng_seed=1)
    results = rca.load_study(tmp_path)
    curves = _line_colours(rca.plot_avg_accuracy_curves(results.trials, results.matrix))
    assert len(curves) == 8 and "a:ewc" in curves and "b:ewc" in curves
    assert len(set(curves.values())) == 8


def test_percent_accuracy_is_labelled_as_percent(synth: rca.StudyResults) -> None:
    matrix = synth.matrix.assign(accuracy=synth.matrix["accuracy"] * 100)
    trials = synth.trials.assign(
        test_final_avg_accuracy=synth.trials["test_final_avg_accuracy"] * 100)
    fig = rca.plot_avg_accuracy_curves(trials, matrix)
    assert "(%)" in fig.axes[0].get_ylabel() and fig.axes[0].get_ylim()[1] > 100
    assert "(%)" in rca.metric_label("test_final_avg_accuracy", trials["test_final_avg_accuracy"])
    assert rca.metric_label("valid_final_avg_accuracy") == (
        "validation final average accuracy (0–1)")
    assert rca.metric_label("train_time_s") == "training time (s)"


def test_import_is_light(tmp_path: Path) -> None:
    """Importing the analysis loads no matplotlib, and loading a study no Ray (whose import
    takes ~10 s here: every notebook kernel and report paid it to read study.json)."""
    study = write_synthetic_study(tmp_path / "synth")
    code = ("import sys, raycl.analysis as rca; print('matplotlib' in sys.modules); "
            f"results = rca.load_study({study!r}); print('ray' in sys.modules); "
            "print(results.settings['name'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False", "synth"]
    # The names load_study reads settings under are the study layer's.
    from raycl.analysis import load
    from raycl.study import settings

    assert (load.SETTINGS_FILE, load.METADATA_KEY) == (settings.SETTINGS_FILE,
                                                       settings.METADATA_KEY)


# --------------------------------------------------------------------------- the real study


@pytest.mark.ray  # uses the smoke study, which starts Ray once per session
def test_study_tables_have_the_columns_the_analysis_reads(
        study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    results = rca.load_study(study_dir)
    if study_results(tmp_path_factory)[1] == "smoke":  # written by this raycl just now
        assert results.settings["name"] == results.trials["study"].iloc[0]
        assert {a["name"] for a in results.settings["arms"]} == set(results.trials["arm"])
        assert set(results.comparisons["arm"]) <= set(results.selection["arm"])
        assert {"reported_low", "reported_high"} <= set(results.selection.columns)
        assert results.selection["interval"].str.endswith("% t").all()
    assert set(TRIALS_COLUMNS) <= set(results.trials.columns)
    assert set(MATRIX_COLUMNS) <= set(results.matrix.columns)
    assert {"study", "trial_id", "arm", "seed", "experience"} <= set(results.curves.columns)
    assert set(results.trials["status"]) <= {"TERMINATED", "ERROR"}
    assert set(results.matrix["split"]) == {"valid", "test"}
    assert (results.trials["schema_version"] == 2).all()
    table = rca.summary(rca.search_trials(results.trials))
    assert set(table["arm"]) == set(results.trials["arm"])
    finished = table[table["n_seeds"] > 0]
    assert len(finished) and finished["mean"].between(0, 1).all()
    best = rca.best_trials(results.trials, selection=results.selection)
    assert set(best["arm"]) == set(results.trials["arm"])
    for row in best.itertuples():
        matrix = rca.accuracy_matrix(results.matrix, row.trial_id, seed=row.seed)
        assert matrix.shape[0] == row.experiences_done
        # The final row's mean over experiences is the trial's final average accuracy, per split.
        assert matrix.iloc[-1].mean() == pytest.approx(row.test_final_avg_accuracy, abs=1e-6)
        valid = rca.accuracy_matrix(results.matrix, row.trial_id, seed=row.seed, split="valid")
        assert valid.iloc[-1].mean() == pytest.approx(row.valid_final_avg_accuracy, abs=1e-6)
    # With a selection table, the runs the figures show are the ones behind the reported figures.
    for row in results.selection.itertuples():
        runs = best[best["arm"] == row.arm]
        assert len(runs) == row.reported_n, row.arm
        assert runs[row.reported_metric].mean() == pytest.approx(row.reported_mean, abs=1e-6)


# --------------------------------------------------------------------------- the search, whole


def _two_knob_study(n_configs: int = 12, seeds: tuple[int, ...] = (0, 1)
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Search trials of arm "ab" (``a`` log-uniform, ``b`` uniform) whose validation metric
    follows ``a`` only and whose test metric follows ``b`` only; arm "one" searches one
    parameter, arm "few" two parameters on 5 configs; "naive" searches nothing."""
    rng = np.random.default_rng(3)
    rows = []
    for arm, n, knobs in (("ab", n_configs, ("a", "b")), ("one", n_configs, ("a",)),
                          ("few", 5, ("a", "b"))):
        for _ in range(n):
            a, b = float(10 ** rng.uniform(0, 4)), float(rng.uniform(0, 1))
            params = {"a": a, "b": b} if len(knobs) == 2 else {"a": a}
            for seed in seeds:
                noise = rng.normal(0, 0.002)
                row = _trial(arm, seed, 0.2 + 0.6 * b + noise, **params)
                row.update(phase="search", valid_final_avg_accuracy=0.2 + 0.15 * math.log10(a)
                           + noise)
                rows.append(row)
    for seed in seeds:
        rows.append({**_trial("naive", seed, 0.3), "phase": "search",
                     "valid_final_avg_accuracy": 0.3})
    settings = {"name": "hand", "metric": "final_avg_accuracy", "mode": "max",
                "selection": "valid", "arms": [
                    {"name": "naive", "space": {}, "log_scale": []},
                    {"name": "ab", "space": {"a": "loguniform(1, 10000)", "b": "uniform(0, 1)"},
                     "log_scale": ["a"]},
                    {"name": "one", "space": {"a": "loguniform(1, 10000)"}, "log_scale": ["a"]},
                    {"name": "few", "space": {"a": "loguniform(1, 10000)", "b": "uniform(0, 1)"},
                     "log_scale": ["a"]}]}
    return pd.DataFrame(rows), settings


def test_param_importance_is_computed_on_the_metric_configs_were_chosen_on() -> None:
    trials, settings = _two_knob_study()
    table = rca.param_importance(trials, settings=settings)
    assert table.attrs["metric"] == VALID_ACC and table.attrs["split"] == "valid"
    rows = {(r.arm, r.parameter): r for r in table.itertuples()}
    # Validation follows a only: a test-metric fit would credit b instead.
    assert rows[("ab", "a")].status == "computed"
    assert rows[("ab", "a")].importance > 0.8 > rows[("ab", "b")].importance
    assert rows[("ab", "a")].importance + rows[("ab", "b")].importance == pytest.approx(1.0)
    assert rows[("ab", "a")].n_configs == 12 and rows[("ab", "a")].n_trials == 24
    # One parameter: 1 without a fit; 5 configs: too few, no number to misread.
    assert (rows[("one", "a")].status, rows[("one", "a")].importance) == ("one parameter", 1.0)
    assert rows[("few", "a")].status == "too few configs"
    assert math.isnan(rows[("few", "a")].importance)
    assert "naive" not in set(table["arm"])
    # A study that selects on test ranks on test: then b is what matters.
    on_test = rca.param_importance(trials, settings={**settings, "selection": "test"})
    assert on_test.attrs["split"] == "test"
    ab = on_test[on_test["arm"] == "ab"].set_index("parameter")["importance"]
    assert ab["b"] > 0.8 > ab["a"]
    # selection.parquet's metric wins over study.json's.
    selection = pd.DataFrame({"arm": ["ab"], "selection_split": ["test"],
                              "selection_metric": [TEST_ACC], "chosen_config": ["{}"]})
    assert rca.selection_metric(trials, selection, settings) == (TEST_ACC, "max")


def test_importance_figure_names_its_split_and_draws_only_ranked_arms() -> None:
    trials, settings = _two_knob_study()
    fig = rca.plot_param_importance(trials, settings=settings)
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in drawn] == ["ab (12 configs)"]
    bars = {t.get_text(): p.get_width() for t, p in
            zip(drawn[0].get_yticklabels(), drawn[0].patches, strict=True)}
    assert set(bars) == {"a", "b"} and bars["a"] > bars["b"]
    from matplotlib.colors import to_hex
    assert to_hex(drawn[0].patches[0].get_facecolor()) == rca.arm_color("ab")
    title = fig.get_suptitle().replace("\n", " ")
    assert "valid_final_avg_accuracy" in title and "validation split" in title
    assert "one: one parameter (a): its importance is 1 by definition" in title
    assert "few: 5 configs, fewer than 8: too few to rank" in title


def test_parallel_coordinates_draw_each_config_on_log_axes_coloured_by_the_selection_metric(
        synth: rca.StudyResults) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    fig = rca.plot_parallel_coordinates(synth.trials, synth.selection, synth.settings)
    panels = {ax.get_title().split(" (")[0]: ax for ax in fig.axes
              if ax.get_visible() and ax.get_label() != "<colorbar>"}
    assert set(panels) == {"ewc", "online_ewc", "si"}  # naive searches nothing
    for label, ax in panels.items():
        assert to_hex(ax.title.get_color()) == rca.arm_color(label)
    colorbar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert colorbar.get_ylabel().startswith("validation final average accuracy")
    assert "validation split" in fig.get_suptitle().replace("\n", " ")
    # online_ewc: one line per config through decay_factor, ewc_lambda (log) and the metric.
    ax = panels["online_ewc"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "decay_factor", "ewc_lambda\n(log)", "validation\nfinal average accuracy"]
    search = rca.completed_trials(rca.search_trials(synth.trials))
    configs = (search[search["arm"] == "online_ewc"]
               .groupby(["param_decay_factor", "param_ewc_lambda"])[VALID_ACC].mean()
               .reset_index())
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    # Each config once, the chosen one twice more (its black outline and its colour on top).
    assert len(lines) == len(configs) + 2
    log_lambda = np.log10(configs["param_ewc_lambda"].to_numpy())
    expected_y = (log_lambda - log_lambda.min()) / np.ptp(log_lambda)
    np.testing.assert_allclose(sorted(line.get_ydata()[1] for line in lines[:len(configs)]),
                               sorted(expected_y))
    values = pd.concat([search.loc[search["arm"] == a].groupby(
        [c for c in search.columns if c.startswith("param_")
         and search.loc[search["arm"] == a, c].notna().any()])[VALID_ACC].mean()
        for a in panels])
    norm_low, norm_high = values.min(), values.max()
    best = configs[VALID_ACC].max()
    top = lines[len(configs) - 1]  # drawn last: the best config
    assert to_hex(top.get_color()) == to_hex(colormaps["viridis"](
        (best - norm_low) / (norm_high - norm_low)))


def test_two_parameter_view_only_for_arms_that_search_two(synth: rca.StudyResults) -> None:
    from matplotlib.collections import PathCollection

    assert rca.two_parameter_arms(synth.trials, synth.settings) == ["online_ewc"]
    fig = rca.plot_param_pairs(synth.trials, synth.selection, synth.settings)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["online_ewc (3 configs)"]
    ax = panels[0]
    assert ax.get_xlabel() == "decay_factor" and ax.get_xscale() == "linear"
    assert ax.get_ylabel() == "ewc_lambda (log scale)" and ax.get_yscale() == "log"
    dots = next(c for c in ax.collections if isinstance(c, PathCollection))
    search = rca.completed_trials(rca.search_trials(synth.trials))
    configs = (search[search["arm"] == "online_ewc"]
               .groupby(["param_decay_factor", "param_ewc_lambda"])[VALID_ACC].mean()
               .reset_index())
    np.testing.assert_allclose(dots.get_offsets(),
                               configs[["param_decay_factor", "param_ewc_lambda"]].to_numpy())
    np.testing.assert_allclose(dots.get_array(), configs[VALID_ACC].to_numpy())
    # The star sits on the config the study chose (selection.parquet), not the best on test.
    star = [c for c in ax.collections if isinstance(c, PathCollection)][1]
    chosen = synth.selection.set_index("arm").loc["online_ewc"]
    np.testing.assert_allclose(star.get_offsets()[0], [chosen["param_decay_factor"],
                                                       chosen["param_ewc_lambda"]])
    # A study without a two-parameter arm says so instead of drawing an empty grid.
    others = synth.trials[synth.trials["arm"] != "online_ewc"]
    empty = rca.plot_param_pairs(others, settings=synth.settings)
    assert "no arm searches exactly two parameters" in [t.get_text()
                                                        for t in empty.axes[0].texts]


def test_cost_figure_draws_peak_memory_only_where_it_is_the_trials_own(
        synth: rca.StudyResults) -> None:
    trials = synth.trials  # trained on CPU: peak_memory_mb is the worker's ru_maxrss
    assert rca.per_trial_memory(trials).isna().all()
    fig = rca.plot_cost(trials)
    assert [ax.get_xlabel() for ax in fig.axes] == ["training time (s)"]
    assert "no memory panel: peak_memory_mb is a trial's own peak only on CUDA; on CPU" in \
        fig.get_suptitle().replace("\n", " ")
    # On CUDA it is the trial's own peak: drawn, CPU trials left out and counted.
    search = rca.completed_trials(rca.search_trials(trials))
    on_gpu = search.index[search["arm"] != "si"]
    mixed = trials.assign(device="cpu")
    mixed.loc[on_gpu, "device"] = "cuda"
    fig = rca.plot_cost(mixed)
    memory = next(ax for ax in fig.axes if "memory" in ax.get_xlabel())
    assert memory.get_xlabel() == "peak CUDA memory of the trial (MB)"
    drawn = np.sort(np.concatenate([c.get_offsets()[:, 0] for c in memory.collections
                                    if len(c.get_facecolor())]))
    np.testing.assert_allclose(drawn, np.sort(mixed.loc[on_gpu, "peak_memory_mb"]))
    left_out = len(search) - len(on_gpu)
    assert f"{left_out} trials left out of the memory panel" in fig.get_suptitle()


def test_docs_analysis_code_runs_on_a_study(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/analysis.md's Python, as a user copies it, on a study named by RAYCL_STUDY_DIR."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "analysis.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 1 and "RAYCL_STUDY_DIR" in blocks[0]
    for name in ("load_study", "summary", "config_table", "plot_param_importance",
                 "plot_parallel_coordinates", "plot_param_pairs", "plot_sensitivity"):
        assert f"rca.{name}(" in blocks[0], name
    assert "make notebooks STUDY_DIR=" in text and "pip install -e '.[notebooks]'" in text
    study = write_synthetic_study(tmp_path / "synth", n_configs=8)
    monkeypatch.setenv("RAYCL_STUDY_DIR", study)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], "docs/analysis.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "importance.png").stat().st_size > 5_000
    assert namespace["metric"] == VALID_ACC
    assert (namespace["importance"]["status"] == "computed").any()


def test_load_study_gives_trials_written_before_node_id_a_null_node_id(tmp_path: Path) -> None:
    """node_id joined the trials table within schema version 2: an older table loads with it,
    null, right after node_ip; the analysis reads the same columns either way."""
    folder = tmp_path / "before"
    folder.mkdir()
    pd.DataFrame([{"study": "before", "trial_id": "t0", "trial_key": "k0", "phase": "search",
                   "arm": "naive", "seed": 0, "status": "TERMINATED", "device": "cpu",
                   "gpu_ids": None, "node_ip": "10.0.0.1", "started_at": None,
                   "schema_version": 2}]).to_parquet(folder / "trials.parquet", index=False)
    trials = rca.load_study(folder).trials
    columns = list(trials.columns)
    assert columns[columns.index("node_ip") + 1] == "node_id"
    assert trials["node_id"].isna().all() and trials["node_ip"].tolist() == ["10.0.0.1"]
