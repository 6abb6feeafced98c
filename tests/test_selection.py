"""Selection protocols: configs are chosen on validation data (or the protocol's tuning data) and
reported on data the choice never saw. These tests need no Ray: the protocol is a pure function
of the study and its results tables, and trials run through ``run_trial``."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
from study_files import TINY, write_study

from raycl.study import load_study, make_trial, run_trial
from raycl.study.protocol import (
    choices,
    comparisons_frame,
    confirm_seeds,
    first_trials,
    next_batch,
    rank_column,
    selection_frame,
)
from raycl.study.schema import (
    CHECKPOINT,
    CONFIG,
    CONFIG_KEY,
    CONFIRM,
    EXPERIENCE,
    FINAL,
    PHASE,
    PLASTICITY,
    SEARCH,
    STABILITY,
    STATUS,
    TERMINATED,
    TRIAL_KEY,
    TUNE,
    accuracy_column,
    split_column,
)
from raycl.study.spec import Arm, PerExperience


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_study(write_study(tmp_path_factory.mktemp("tiny"), TINY))


def _row(spec, **metrics):
    """A finished trials row of ``spec`` (and its curves row) with the given metrics."""
    row = {TRIAL_KEY: spec.trial_key, PHASE: spec.phase, "arm": spec.arm, "seed": spec.seed,
           CONFIG_KEY: spec.config_key, CONFIG: json.dumps(spec.params, sort_keys=True),
           STATUS: TERMINATED, CHECKPOINT: f"/ckpt/{spec.trial_key}", **metrics}
    return row


# ---- valid / test --------------------------------------------------------------------------------
def test_the_choice_follows_validation_and_the_report_comes_from_fresh_seeds(tiny):
    """Two ewc configs: validation prefers A, test prefers B. The study chooses A, reports A's
    confirmation runs on seeds the search never ran, and says what it chose on."""
    study = dataclasses.replace(tiny, arms=[a for a in tiny.arms if a.name == "ewc"],
                                confirm_seeds=None)  # the default: 3 fresh seeds
    valid, test = (split_column(s, "final_avg_accuracy") for s in ("valid", "test"))
    a, b = {"ewc_lambda": 3.0}, {"ewc_lambda": 30.0}
    searched = [make_trial("ewc", c, s) for c in (a, b) for s in study.seeds]
    rows = [_row(t, **({valid: 0.80, test: 0.60} if t.params == a else {valid: 0.70, test: 0.90}))
            for t in searched]
    trials, curves = pd.DataFrame(rows), pd.DataFrame()
    assert rank_column(study) == valid
    chosen = choices(study, trials, curves)["ewc"]
    assert chosen.params == a and chosen.value == pytest.approx(0.80) and chosen.configs == 2

    assert next_batch(study, trials.iloc[:2], curves, planned=searched).trials == searched[2:]
    batch = next_batch(study, trials, curves, planned=searched)
    assert batch.phase == CONFIRM and confirm_seeds(study) == [2, 3, 4]
    assert {(t.arm, json.dumps(t.params), t.seed) for t in batch.trials} == {
        ("ewc", json.dumps(a), s) for s in (2, 3, 4)}
    confirm = [_row(t, **{valid: 0.75, test: 0.5 + 0.01 * t.seed}) for t in batch.trials]
    trials = pd.concat([trials, pd.DataFrame(confirm)], ignore_index=True)
    assert next_batch(study, trials, curves, planned=searched) is None
    table = selection_frame(study, trials, curves).set_index("arm").loc["ewc"]
    assert table["selection_split"] == "valid" and table["reported_phase"] == CONFIRM
    assert json.loads(table["chosen_config"]) == a
    assert table["reported_mean"] == pytest.approx(0.53)  # confirm runs' test, not B's 0.90
    assert table["reported_n"] == 3 and json.loads(table["reported_seeds"]) == [2, 3, 4]
    assert table["search_test_mean"] == pytest.approx(0.60)

    # selection='test' (asked for): the same rows choose B, and the table says 'test'
    on_test = dataclasses.replace(study, selection="test")
    assert choices(on_test, trials, curves)["ewc"].params == b
    assert selection_frame(on_test, trials, curves)["selection_split"].tolist() == ["test"]


def test_no_confirmation_when_nothing_is_searched_or_when_asked(tiny):
    baseline_only = dataclasses.replace(tiny, arms=[tiny.arms[0]])
    assert confirm_seeds(baseline_only) == []
    assert confirm_seeds(dataclasses.replace(tiny, confirm_seeds=None)) == [2, 3, 4]
    assert confirm_seeds(dataclasses.replace(tiny, confirm_seeds=[])) == []
    assert confirm_seeds(dataclasses.replace(tiny, confirm_seeds=[7, 9])) == [7, 9]


def test_trials_evaluate_on_validation_and_test(tiny):
    reports = []
    run_trial(tiny, make_trial("naive", {}, 0), lambda m, s: reports.append(m))
    last = reports[-1]
    for split in ("valid", "test"):
        assert [k for k in last if k.startswith(f"{split}_acc_exp_")] == [
            accuracy_column(j, split) for j in range(5)]
        assert math.isfinite(last[split_column(split, "final_avg_accuracy")])
    # different data: the two splits do not give the same numbers
    assert last["valid_stream_accuracy"] != last["test_stream_accuracy"]


# ---- first_tasks / first_task --------------------------------------------------------------------
def test_first_tasks_tunes_on_the_first_experiences_and_reports_on_the_rest(tiny):
    study = dataclasses.replace(tiny, selection="first_tasks", tuning_experiences=2)
    tune_trials = first_trials(study)
    assert {t.phase for t in tune_trials} == {TUNE} and {t.stream for t in tune_trials} == {(0, 2)}
    reports = []
    run_trial(study, tune_trials[0], lambda m, s: reports.append(m))
    assert [m[EXPERIENCE] for m in reports] == [0, 1]  # shorter trials: experiences 0 and 1

    valid = split_column("valid", "final_avg_accuracy")
    rows = [_row(t, **{valid: 0.5 + 0.1 * (t.arm == "si") + 0.01 * t.seed})
            for t in tune_trials]
    final = next_batch(study, pd.DataFrame(rows), pd.DataFrame())
    assert final.phase == FINAL
    assert {t.stream for t in final.trials} == {(2, 5)}
    assert sorted({t.seed for t in final.trials}) == study.seeds
    assert len(final.trials) == len(study.arms) * len(study.seeds)

    reports = []
    run_trial(study, final.trials[0], lambda m, s: reports.append(m))
    # trained from scratch on experiences 2..4 only, numbered as in the whole stream
    assert [m[EXPERIENCE] for m in reports] == [2, 3, 4]
    assert not any(k.endswith(("acc_exp_000", "acc_exp_001")) for m in reports for k in m)
    assert accuracy_column(2) in reports[0] and math.isfinite(
        reports[-1][split_column("test", "final_avg_accuracy")])


def test_first_task_runs_the_chosen_values_on_the_whole_stream(tiny):
    study = dataclasses.replace(tiny, selection="first_task")
    tune_trials = first_trials(study)
    assert {t.stream for t in tune_trials} == {(0, 1)}
    valid = split_column("valid", "final_avg_accuracy")
    rows = [_row(t, **{valid: 0.5}) for t in tune_trials]
    final = next_batch(study, pd.DataFrame(rows), pd.DataFrame())
    assert final.phase == FINAL and {t.stream for t in final.trials} == {None}


# ---- per_experience (De Lange et al. 2021) -------------------------------------------------------
def test_per_experience_follows_the_decay_rule_on_a_hand_checked_case(tiny):
    """A* = 0.8 (lr 0.1); lambda 100 reaches 0.5 < 0.8 * (1 - 0.2) = 0.64, so it halves; lambda
    50 reaches 0.7 >= 0.64 and is chosen; the next experience continues its checkpoint."""
    arm = Arm("ewc", tiny.arms[1].plugins, {}, stability="ewc_lambda", stability_start=100.0)
    study = dataclasses.replace(
        tiny, arms=[arm], seeds=[0], selection="per_experience",
        per_experience=PerExperience(lr_grid=[0.1, 0.01], alpha=0.5, p=0.2, max_decays=3))
    trials, curves = [], []

    def finish(spec, valid_acc):
        trials.append(_row(spec))
        curves.append({TRIAL_KEY: spec.trial_key, EXPERIENCE: 0,
                       accuracy_column(0, "valid"): valid_acc})

    def batch():
        return next_batch(study, pd.DataFrame(trials), pd.DataFrame(curves))

    first = batch()
    assert first.phase == PLASTICITY and first.trials[0].params == {"ewc_lambda": 0.0,
                                                                   "lr": 0.1}
    assert first.trials[0].init is None and first.trials[0].steps == 1
    finish(first.trials[0], 0.8)
    second = batch()
    assert second.trials[0].params == {"ewc_lambda": 0.0, "lr": 0.01}
    finish(second.trials[0], 0.6)
    decay0 = batch().trials[0]
    assert decay0.phase == STABILITY and decay0.params == {"ewc_lambda": 100.0, "lr": 0.1}
    finish(decay0, 0.5)
    decay1 = batch().trials[0]
    assert decay1.params == {"ewc_lambda": 50.0, "lr": 0.1}
    finish(decay1, 0.7)
    step1 = batch().trials[0]
    assert step1.phase == PLASTICITY and step1.init == f"/ckpt/{decay1.trial_key}"
    assert step1.params == {"ewc_lambda": 0.0, "lr": 0.1}


def test_search_phase_trials_keep_their_keys(tiny):
    """A plain search trial's key is the same as before phases existed (results stay
    comparable), and every phase or stream gives a different key."""
    plain = make_trial("ewc", {"ewc_lambda": 3.0}, 0)
    assert plain.phase == SEARCH and plain.trial_key == make_trial("ewc", {"ewc_lambda": 3.0},
                                                                   0, phase=SEARCH).trial_key
    keys = {plain.trial_key, make_trial("ewc", {"ewc_lambda": 3.0}, 0, phase=CONFIRM).trial_key,
            make_trial("ewc", {"ewc_lambda": 3.0}, 0, phase=TUNE, stream=(0, 2)).trial_key}
    assert len(keys) == 3


def test_asha_and_optuna_see_the_validation_split_only(tiny):
    pytest.importorskip("optuna")
    from raycl.study.plan import PreparedRun, StudySource
    from raycl.study.results import ResultStore
    from raycl.tune.runner import _scheduler, _searcher

    asha = dataclasses.replace(tiny, scheduler="asha")
    assert _scheduler(asha)._metric == "valid_avg_accuracy"  # final metric: not every report
    per_exp = dataclasses.replace(asha, metric="stream_accuracy")
    assert _scheduler(per_exp)._metric == "valid_stream_accuracy"
    assert _scheduler(dataclasses.replace(per_exp, selection="test"))._metric == \
        "test_stream_accuracy"
    optuna = dataclasses.replace(tiny, search="optuna")
    prepared = PreparedRun(optuna, StudySource("x.py", ""), ResultStore("/nonexistent", "t"),
                           None, 0)
    assert _searcher(prepared)._target == "valid_final_avg_accuracy"


# ---- reported intervals, paired comparisons, ranking with failed seeds ---------------------------
def _two_arm_study(tiny):
    return dataclasses.replace(tiny, arms=[tiny.arms[0], tiny.arms[1]], seeds=[0, 1, 2],
                               confirm_seeds=[])


def test_reported_figures_have_a_t_interval_and_a_paired_verdict(tiny):
    from scipy import stats as scipy_stats

    study = _two_arm_study(tiny)
    test = split_column("test", "final_avg_accuracy")
    valid = split_column("valid", "final_avg_accuracy")
    naive = [0.50, 0.55, 0.52]
    ewc = [0.70, 0.74, 0.73]
    rows = [_row(make_trial("naive", {}, s), **{valid: v, test: v}) for s, v in enumerate(naive)]
    rows += [_row(make_trial("ewc", {"ewc_lambda": 3.0}, s), **{valid: v, test: v})
             for s, v in enumerate(ewc)]
    trials = pd.DataFrame(rows)
    table = selection_frame(study, trials, pd.DataFrame()).set_index("arm")
    low, high = scipy_stats.t.interval(0.95, 2, loc=sum(ewc) / 3,
                                       scale=scipy_stats.sem(ewc))
    assert table.loc["ewc", "reported_low"] == pytest.approx(low)
    assert table.loc["ewc", "reported_high"] == pytest.approx(high)
    assert table.loc["ewc", "interval"] == "95% t"
    assert list(table.index) == ["ewc", "naive"]  # best reported figure first
    comparisons = comparisons_frame(study, trials, pd.DataFrame())
    pair = comparisons[(comparisons["arm"] == "naive") & (comparisons["reference"] == "ewc")]
    expected = scipy_stats.ttest_rel(naive, ewc).pvalue
    assert pair["p_value"].iloc[0] == pytest.approx(expected)
    assert table.loc["ewc", "verdict"].startswith("best")
    assert "best" in table.loc["naive", "verdict"]


def test_a_config_is_ranked_only_when_all_its_seeds_finished(tiny):
    """1 of 3 seeds finished at 0.83 must not beat 3 of 3 at 0.80 (unless min_seeds allows)."""
    study = _two_arm_study(tiny)
    valid = split_column("valid", "final_avg_accuracy")
    lucky, steady = {"ewc_lambda": 1.0}, {"ewc_lambda": 2.0}
    rows = [_row(make_trial("ewc", lucky, 0), **{valid: 0.83})]
    rows += [{**_row(make_trial("ewc", lucky, s)), STATUS: "ERROR", valid: math.nan}
             for s in (1, 2)]
    rows += [_row(make_trial("ewc", steady, s), **{valid: 0.80}) for s in (0, 1, 2)]
    trials = pd.DataFrame(rows)
    chosen = choices(study, trials, pd.DataFrame())["ewc"]
    assert chosen.params == steady and chosen.configs == 1 and chosen.unranked == 1
    relaxed = choices(dataclasses.replace(study, min_seeds=1), trials, pd.DataFrame())["ewc"]
    assert relaxed.params == lucky and relaxed.failed == 2


def test_a_joint_arm_trains_on_all_data_so_far_and_gives_intransigence(tiny):
    from raycl.study.spec import no_plugins

    joint = Arm("joint", no_plugins, baseline=True, joint=True)
    study = dataclasses.replace(tiny, arms=[tiny.arms[0], joint], confirm_seeds=[])
    final = {}
    for arm in ("naive", "joint"):
        reports = []
        run_trial(study, make_trial(arm, {}, 0), lambda m, s, out=reports: out.append(m))
        final[arm] = reports[-1]
    # class-incremental split digits: naive forgets the first classes, joint training does not
    assert final["joint"]["test_acc_exp_000"] > 0.8 > final["naive"]["test_acc_exp_000"]

    # intransigence (Chaudhry et al. 2018) on hand-made diagonals: joint 0.9, 0.8; arm 0.7, 0.6
    rows, curves = [], []
    for arm, diagonal in (("joint", (0.9, 0.8)), ("naive", (0.7, 0.6))):
        spec = make_trial(arm, {}, 0)
        rows.append(_row(spec, **{split_column("valid", "final_avg_accuracy"): 0.5,
                                  split_column("test", "final_avg_accuracy"): 0.5}))
        curves += [{TRIAL_KEY: spec.trial_key, EXPERIENCE: k, accuracy_column(k): value}
                   for k, value in enumerate(diagonal)]
    table = selection_frame(dataclasses.replace(study, seeds=[0]), pd.DataFrame(rows),
                            pd.DataFrame(curves)).set_index("arm")
    assert table.loc["naive", "intransigence"] == pytest.approx(0.2)
    assert table.loc["joint", "intransigence"] == pytest.approx(0.0)
