"""raycl.study.stats: intervals over seeds, paired comparisons, Holm correction, verdicts."""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from raycl.study.stats import (
    COMPARISON_COLUMNS,
    holm_bonferroni,
    interval,
    paired_comparisons,
    verdict,
)

# Per-seed final accuracies of three arms, seeds 0..4 (hand-made: A best, B worse, C close to A).
A = [0.80, 0.82, 0.85, 0.81, 0.83]
B = [0.70, 0.75, 0.71, 0.74, 0.72]
C = [0.79, 0.83, 0.84, 0.80, 0.84]


def frame(arms: dict[str, list[float]], seeds: dict[str, list[int]] | None = None
          ) -> pd.DataFrame:
    """The ``arm, seed, value`` table of ``arms`` (seeds 0.. unless given per arm)."""
    rows = []
    for arm, values in arms.items():
        arm_seeds = (seeds or {}).get(arm, list(range(len(values))))
        rows += [{"arm": arm, "seed": s, "value": v} for s, v in zip(arm_seeds, values)]
    return pd.DataFrame(rows)


def row_of(table: pd.DataFrame, arm: str, kind: str) -> pd.Series:
    match = table[(table["arm"] == arm) & (table["reference_kind"] == kind)]
    assert len(match) == 1
    return match.iloc[0]


# ---------------------------------------------------------------------------------- interval


@pytest.mark.parametrize("values", [A, B, [1.0, 2.0], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_t_interval_matches_scipy(values: list[float], confidence: float) -> None:
    x = np.asarray(values)
    got = interval(values, confidence)
    low, high = sps.t.interval(confidence, x.size - 1, loc=x.mean(), scale=sps.sem(x))
    assert got.low == pytest.approx(low, rel=1e-12)
    assert got.high == pytest.approx(high, rel=1e-12)
    assert got.n == x.size and got.mean == pytest.approx(x.mean())
    assert got.std == pytest.approx(x.std(ddof=1))
    assert (got.confidence, got.method) == (confidence, "t")


def test_t_interval_at_three_seeds_is_4_303_sem_wide() -> None:
    got = interval([0.80, 0.82, 0.85])
    std = np.std([0.80, 0.82, 0.85], ddof=1)
    assert got.half_width == pytest.approx(4.303 * std / math.sqrt(3), rel=1e-3)
    assert got.half_width == pytest.approx(2.484 * std, rel=1e-3)  # not the ±1 std of "mean ± std"


def test_interval_drops_nan_and_handles_tiny_n() -> None:
    assert interval([0.8, math.nan, 0.82, None, 0.85]) == interval([0.8, 0.82, 0.85])
    for method in ("t", "bootstrap"):
        empty = interval([], method=method)
        assert empty.n == 0 and all(math.isnan(v) for v in
                                    (empty.mean, empty.std, empty.low, empty.high))
        one = interval([math.nan, 0.7], method=method)
        assert (one.n, one.mean) == (1, 0.7)
        assert math.isnan(one.std) and math.isnan(one.low) and math.isnan(one.high)
        flat = interval([0.5, 0.5, 0.5], method=method)
        assert (flat.std, flat.low, flat.high) == (0.0, 0.5, 0.5)


def test_interval_accepts_series_and_arrays_and_is_frozen() -> None:
    expected = interval(A)
    assert interval(pd.Series(A)) == expected == interval(np.array(A)) == interval(iter(A))
    with pytest.raises(dataclasses.FrozenInstanceError):
        expected.low = 0.0  # type: ignore[misc]
    assert str(expected).startswith(f"{np.mean(A):.4g} [")


def test_bootstrap_interval_is_seeded_and_covers_the_mean() -> None:
    x = [0.71, 0.80, 0.74, 0.90, 0.77, 0.69, 0.83, 0.79]
    first = interval(x, method="bootstrap", seed=3)
    assert first == interval(x, method="bootstrap", seed=3)
    assert first != interval(x, method="bootstrap", seed=4)
    assert first.method == "bootstrap" and first.n == 8
    assert min(x) <= first.low < first.mean < first.high <= max(x)
    narrower = interval(x, 0.5, method="bootstrap", seed=3)
    assert first.low < narrower.low < narrower.high < first.high


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap() -> None:
    x = np.array([0.71, 0.80, 0.74, 0.90, 0.77, 0.69, 0.83, 0.79])
    ours = interval(x, 0.9, method="bootstrap", n_boot=20_000, seed=0)
    ref = sps.bootstrap((x,), np.mean, confidence_level=0.9, n_resamples=20_000,
                        method="percentile", rng=np.random.default_rng(1)).confidence_interval
    spread = x.max() - x.min()
    assert ours.low == pytest.approx(ref.low, abs=0.02 * spread)
    assert ours.high == pytest.approx(ref.high, abs=0.02 * spread)


@pytest.mark.parametrize(("kwargs", "error", "name"), [
    ({"confidence": 0.0}, ValueError, "confidence"),
    ({"confidence": 1.0}, ValueError, "confidence"),
    ({"confidence": 95}, ValueError, "confidence"),
    ({"confidence": "0.95"}, TypeError, "confidence"),
    ({"method": "z"}, ValueError, "method"),
    ({"method": 1}, TypeError, "method"),
    ({"n_boot": 0}, ValueError, "n_boot"),
    ({"n_boot": 10.0}, TypeError, "n_boot"),
    ({"seed": -1}, ValueError, "seed"),
    ({"values": "0.8"}, TypeError, "values"),
    ({"values": 0.8}, TypeError, "values"),
    ({"values": ["a", "b"]}, TypeError, "values"),
    ({"values": [[0.8, 0.9], [0.7, 0.6]]}, ValueError, "values"),
    ({"values": [0.8, math.inf]}, ValueError, "values"),
])
def test_interval_bad_arguments_give_one_line_errors(kwargs: dict, error: type, name: str
                                                     ) -> None:
    args = {"values": A, **kwargs}
    with pytest.raises(error) as info:
        interval(**args)
    assert str(info.value).startswith(name) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ Holm


def test_holm_on_hand_checked_examples() -> None:
    np.testing.assert_allclose(holm_bonferroni([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    # m = 3 (the NaN is not a test): 0.01*3, 0.04*2, then max(0.2*1, 0.08).
    np.testing.assert_allclose(holm_bonferroni([0.2, 0.01, math.nan, 0.04]),
                               [0.2, 0.03, math.nan, 0.08])
    # capped at 1, and never below an earlier adjusted value
    np.testing.assert_allclose(holm_bonferroni([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm_bonferroni([0.02, 0.02, 0.9]), [0.06, 0.06, 0.9])
    assert holm_bonferroni([]).shape == (0,)


def test_holm_adjusted_p_reproduces_holms_sequential_rejection() -> None:
    """p_holm < alpha rejects exactly what Holm's step-down procedure rejects."""

    def holm_rejects(p: np.ndarray, alpha: float) -> np.ndarray:
        rejected = np.zeros(p.size, dtype=bool)
        for j, i in enumerate(np.argsort(p)):  # stop at the first p(j) > alpha / (m - j)
            if p[i] > alpha / (p.size - j):
                break
            rejected[i] = True
        return rejected

    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 8)).round(3)
        for alpha in (0.01, 0.05, 0.1):
            np.testing.assert_array_equal(holm_bonferroni(p) <= alpha, holm_rejects(p, alpha))


@pytest.mark.parametrize(("p", "error"), [
    ([0.1, 1.5], ValueError), ([-0.1], ValueError), ("0.1", TypeError), (["x"], TypeError),
])
def test_holm_bad_input(p: object, error: type) -> None:
    with pytest.raises(error, match="^p_values"):
        holm_bonferroni(p)


# -------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize("test", ["t", "wilcoxon"])
def test_paired_p_values_equal_scipy_on_the_same_pairs(test: str) -> None:
    table = paired_comparisons(frame({"A": A, "B": B, "C": C}), best=None, baseline="B",
                               test=test, alpha=0.1)
    assert tuple(table.columns) == COMPARISON_COLUMNS
    scipy_test = sps.ttest_rel if test == "t" else sps.wilcoxon
    for arm, kind, ref_values, arm_values in [("B", "best", A, B), ("C", "best", A, C),
                                              ("C", "baseline", B, C), ("A", "baseline", B, A)]:
        row = row_of(table, arm, kind)
        expected = scipy_test(arm_values, ref_values)
        assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert row["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
        d = np.subtract(arm_values, ref_values)
        assert row["n_pairs"] == 5 and row["mean_diff"] == pytest.approx(d.mean())
        ci = interval(d, 0.9)
        assert (row["diff_low"], row["diff_high"]) == pytest.approx((ci.low, ci.high))
        assert row["test"] == test


def test_pairing_uses_only_the_seeds_both_arms_ran() -> None:
    # C has no seed 2 and a failed (NaN) seed 4: only seeds 0, 1, 3 pair with A.
    values = frame({"A": A, "C": [0.79, 0.83, 0.80, math.nan]},
                   seeds={"C": [0, 1, 3, 4]})
    row = row_of(paired_comparisons(values, best="A", baseline=None), "C", "best")
    shared_a, shared_c = [A[0], A[1], A[3]], [0.79, 0.83, 0.80]
    assert row["n_pairs"] == 3
    assert row["p_value"] == pytest.approx(sps.ttest_rel(shared_c, shared_a).pvalue, rel=1e-12)
    assert row["mean_diff"] == pytest.approx(np.mean(np.subtract(shared_c, shared_a)))
    assert "1 seed run by only one" in row["note"] and "1 seed with a NaN" in row["note"]


def test_too_few_shared_seeds_give_nan_and_stay_out_of_holm() -> None:
    values = frame({"A": A, "B": B, "D": [0.6, 0.9]}, seeds={"D": [4, 7]})
    table = paired_comparisons(values, best="A", baseline=None)
    d = row_of(table, "D", "best")
    assert d["n_pairs"] == 1 and math.isnan(d["p_value"]) and math.isnan(d["p_holm"])
    assert not d["significant"] and "not tested" in d["note"]
    assert math.isnan(d["diff_low"]) and d["mean_diff"] == pytest.approx(0.6 - A[4])
    b = row_of(table, "B", "best")
    assert b["p_holm"] == pytest.approx(b["p_value"])  # m = 1: D's comparison is no test
    assert verdict(d) == "? best"


@pytest.mark.parametrize("test", ["t", "wilcoxon"])
def test_identical_arms_give_p_one_with_a_note_and_no_warning(test: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = paired_comparisons(frame({"A": A, "A2": list(A)}), best="A", baseline=None,
                                   test=test)
    row = row_of(table, "A2", "best")
    assert (row["p_value"], row["mean_diff"]) == (1.0, 0.0)
    assert "all differences are zero" in row["note"] and verdict(row) == "≈ best"


def test_wilcoxon_says_when_it_cannot_reach_alpha() -> None:
    five = paired_comparisons(frame({"A": A, "B": B}), best="A", baseline=None,
                              test="wilcoxon")
    assert row_of(five, "B", "best")["p_value"] == pytest.approx(0.0625)  # 2 / 2**5
    assert "cannot reach p < 0.05" in row_of(five, "B", "best")["note"]
    six = paired_comparisons(frame({"A": [*A, 0.84], "B": [*B, 0.73]}), best="A",
                             baseline=None, test="wilcoxon")
    assert row_of(six, "B", "best")["note"] == ""
    assert verdict(row_of(six, "B", "best")) == "< best"  # 2 / 2**6 < 0.05, one test


def test_holm_counts_each_pair_of_arms_once() -> None:
    table = paired_comparisons(frame({"A": A, "B": B, "C": C}), best="A", baseline="C")
    assert not (table["arm"] == table["reference"]).any()
    assert list(zip(table["arm"], table["reference_kind"])) == [
        ("A", "baseline"), ("B", "best"), ("B", "baseline"), ("C", "best")]
    # A-vs-C and C-vs-A are one hypothesis: the family is {A,B}, {B,C}, {A,C}.
    p = {arm: row_of(table, arm, "best")["p_value"] for arm in ("B", "C")}
    assert row_of(table, "A", "baseline")["p_value"] == pytest.approx(p["C"])
    expected = dict(zip(["B-A", "B-C", "C-A"],
                        holm_bonferroni([p["B"], row_of(table, "B", "baseline")["p_value"],
                                         p["C"]])))
    assert row_of(table, "B", "best")["p_holm"] == pytest.approx(expected["B-A"])
    assert row_of(table, "B", "baseline")["p_holm"] == pytest.approx(expected["B-C"])
    assert row_of(table, "C", "best")["p_holm"] == pytest.approx(expected["C-A"])
    assert row_of(table, "A", "baseline")["p_holm"] == pytest.approx(expected["C-A"])
    assert (table["significant"] == (table["p_holm"] < 0.05)).all()


def test_best_is_picked_by_mode_and_can_be_named() -> None:
    values = frame({"A": A, "B": B, "C": C})
    assert set(paired_comparisons(values, best=None, baseline=None)["reference"]) == {"A"}
    assert set(paired_comparisons(values, best=None, baseline=None, mode="min")["reference"]
               ) == {"B"}
    named = paired_comparisons(values, best="C", baseline=None)
    assert set(named["reference"]) == {"C"} and set(named["arm"]) == {"A", "B"}
    only = paired_comparisons(frame({"A": A}), best=None, baseline=None)
    assert only.empty and tuple(only.columns) == COMPARISON_COLUMNS


# -------------------------------------------------------------------------------- verdict


def test_verdict_labels_from_a_max_study() -> None:
    table = paired_comparisons(frame({"A": A, "B": B, "C": C}), best=None, baseline="B")
    assert verdict(row_of(table, "B", "best")) == "< best"
    assert verdict(row_of(table, "C", "best")) == "≈ best"
    assert verdict(row_of(table, "A", "baseline")) == "> baseline"
    assert verdict(row_of(table, "C", "baseline")) == "> baseline"
    assert verdict({"arm": "A", "reference": "A", "reference_kind": "best"}) == "best"
    assert verdict({"arm": "B", "reference": "B", "reference_kind": "baseline"}) == "baseline"


def test_verdict_labels_from_a_min_study() -> None:
    # Forgetting (lower is better): B forgets least, A most.
    forgetting = frame({"A": [0.30, 0.34, 0.31, 0.35, 0.33], "B": [0.05, 0.08, 0.06, 0.07, 0.04],
                        "C": [0.06, 0.07, 0.08, 0.05, 0.05]})
    table = paired_comparisons(forgetting, best=None, baseline="A", mode="min")
    assert verdict(row_of(table, "A", "best")) == "> best"
    assert verdict(row_of(table, "C", "best")) == "≈ best"
    assert verdict(row_of(table, "B", "baseline")) == "< baseline"


@pytest.mark.parametrize(("row", "error"), [
    ("B", TypeError),
    ({"arm": "B", "reference": "A"}, ValueError),
    ({"arm": "B", "reference": "A", "reference_kind": "worst"}, ValueError),
    ({"arm": "B", "reference": "A", "reference_kind": "best"}, ValueError),
])
def test_verdict_bad_rows(row: object, error: type) -> None:
    with pytest.raises(error, match="^row"):
        verdict(row)  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "kwargs", "error", "name"), [
    ([("A", 0, 0.8)], {}, TypeError, "values"),
    (pd.DataFrame({"arm": ["A"], "value": [0.8]}), {}, ValueError, "values"),
    (frame({"A": [0.8, 0.9]}, seeds={"A": [0, 0]}), {}, ValueError, "values"),
    (frame({"A": ["x", "y"]}), {}, TypeError, "values['value']"),
    (frame({"A": A}), {"best": "Z"}, ValueError, "best"),
    (frame({"A": A}), {"baseline": 3}, TypeError, "baseline"),
    (frame({"A": A}), {"mode": "maximize"}, ValueError, "mode"),
    (frame({"A": A}), {"test": "mannwhitney"}, ValueError, "test"),
    (frame({"A": A}), {"alpha": 0.0}, ValueError, "alpha"),
    (frame({"A": [math.nan]}), {}, ValueError, "values"),
])
def test_paired_comparisons_bad_arguments(values: object, kwargs: dict, error: type,
                                          name: str) -> None:
    args = {"best": None, "baseline": None, **kwargs}
    with pytest.raises(error) as info:
        paired_comparisons(values, **args)  # type: ignore[arg-type]
    assert str(info.value).startswith(name) and "\n" not in str(info.value)


def test_arm_order_follows_the_input() -> None:
    values = frame({"C": C, "B": B, "A": A})
    table = paired_comparisons(values, best=None, baseline=None)
    assert list(table["arm"]) == ["C", "B"]
    assert all(isinstance(x, str) for x in itertools.chain(table["arm"], table["note"]))

