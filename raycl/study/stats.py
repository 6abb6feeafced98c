"""Statistics for reporting a metric over a few seeds: intervals, paired tests, Holm correction.

A study reports, per arm, one value of a metric per seed, and the seeds are few (3 to 10). A
mean ± std says nothing about whether two arms differ; this module gives what a reviewer asks
for instead:

- :func:`interval`: a confidence interval of an arm's mean, the Student-t interval (Student,
  1908) or the percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*,
  1993, ch. 13);
- :func:`paired_comparisons`: every arm against the best arm and against a baseline arm, paired
  over the seeds both arms ran (the paired t-test or the Wilcoxon signed-rank test, Wilcoxon
  1945), with the Holm-Bonferroni step-down correction across the table (Holm, "A simple
  sequentially rejective multiple test procedure", Scand. J. Statist. 6, 1979, 65-70);
- :func:`holm_bonferroni`: that correction on its own;
- :func:`verdict`: a short label for one comparison, for a CLI table.

Pure functions of pandas, numpy and scipy: nothing here starts Ray or imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from raycl.checks import check_choice, check_int, check_number, check_seed

__all__ = [
    "COMPARISON_COLUMNS",
    "INTERVAL_METHODS",
    "Interval",
    "PAIRED_TESTS",
    "holm_bonferroni",
    "interval",
    "paired_comparisons",
    "verdict",
]

INTERVAL_METHODS = ("t", "bootstrap")
"""The ``method`` values :func:`interval` accepts."""

PAIRED_TESTS = ("t", "wilcoxon")
"""The ``test`` values :func:`paired_comparisons` accepts."""

COMPARISON_COLUMNS = (
    "arm", "reference", "reference_kind", "n_pairs", "mean_diff", "diff_low", "diff_high",
    "statistic", "p_value", "p_holm", "test", "significant", "note",
)
"""The columns of :func:`paired_comparisons`' table, in order."""

_INPUT_COLUMNS = ("arm", "seed", "value")
_BEST, _BASELINE = "best", "baseline"


@dataclass(frozen=True)
class Interval:
    """A confidence interval of the mean of ``n`` values.

    ``std`` is the sample standard deviation (``ddof=1``), NaN for ``n < 2``; ``low`` and
    ``high`` are NaN for ``n < 2`` (one value says nothing about its spread), ``mean`` is NaN
    for ``n == 0``. ``confidence`` is the nominal coverage, ``method`` ``"t"`` or
    ``"bootstrap"``.
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    confidence: float
    method: str

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN when it has no bounds)."""
        return (self.high - self.low) / 2.0

    def __str__(self) -> str:
        return (f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}] "
                f"({self.confidence:.0%} {self.method}, n={self.n})")


def _as_values(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float array without its NaNs (a missing run is not a value)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (Iterable, np.ndarray)):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got "
                        f"{type(values).__name__}")
    try:
        array = np.asarray(list(values) if not hasattr(values, "__array__") else values,
                           dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a 1-D sequence of numbers (None or NaN for a missing "
                        f"value), got a non-numeric entry") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {array.shape}")
    array = array[~np.isnan(array)]
    if np.isinf(array).any():
        raise ValueError(f"{name} must be finite numbers or NaN, got an infinite value")
    return array


def interval(values: Any, confidence: float = 0.95, method: str = "t", *,
             n_boot: int = 10_000, seed: int | None = 0) -> Interval:
    """A ``confidence`` interval of the mean of ``values`` (NaNs dropped first).

    ``method="t"``: the Student-t interval ``mean ± t_{n-1,(1+c)/2} · std / sqrt(n)``, with the
    quantile from ``scipy.stats.t.ppf``; exact when the values are normal, and at n = 3 already
    ``4.303 · std / sqrt(3) ≈ 2.48 std`` wide on each side at 95 %, the honest price of three
    seeds.

    ``method="bootstrap"``: the percentile bootstrap of the mean (Efron & Tibshirani 1993,
    ch. 13), written here with a ``numpy.random.Generator`` seeded by ``seed`` (``None``: fresh
    entropy): ``n_boot`` resamples of ``n`` values with replacement, bounds the ``(1-c)/2`` and
    ``(1+c)/2`` quantiles (``numpy.quantile``, linear) of the resampled means. It assumes no
    distribution but under-covers at the small n of a study (at n = 3 it cannot reach beyond
    the sample's range); prefer ``"t"`` below ~10 seeds.

    ``n == 0``: every number NaN; ``n == 1``: the mean, NaN std and bounds. Values that are all
    equal give ``low == high == mean`` with either method.

    Raises:
        TypeError: ``values`` is not a sequence of numbers, or an argument has the wrong type.
        ValueError: ``values`` is not 1-D or holds an infinity, ``confidence`` not in (0, 1),
            ``method`` not ``"t"``/``"bootstrap"``, ``n_boot < 1`` or ``seed < 0``.
    """
    confidence = check_number("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    method = check_choice("method", method, INTERVAL_METHODS)
    n_boot = check_int("n_boot", n_boot, minimum=1)
    seed = check_seed("seed", seed)
    x = _as_values("values", values)
    n = int(x.size)
    nan = math.nan
    if n == 0:
        return Interval(0, nan, nan, nan, nan, confidence, method)
    mean = float(x.mean())
    if n == 1:
        return Interval(1, mean, nan, nan, nan, confidence, method)
    std = float(x.std(ddof=1))
    if np.all(x == x[0]):
        # No spread: the interval is the point (and no resampled mean may differ by an ulp).
        return Interval(n, mean, 0.0, mean, mean, confidence, method)
    if method == "t":
        half = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(
            means, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0]))
    return Interval(n, mean, std, low, high, confidence, method)


def holm_bonferroni(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the order given.

    Step-down: with the ``m`` p-values sorted ascending, ``p_adj(i) = max_{j<=i} min(1,
    (m - j + 1) · p(j))``; rejecting where ``p_adj < alpha`` is Holm's procedure at family-wise
    error rate ``alpha``. NaN entries (comparisons that could not be tested) stay NaN and do
    not count in ``m``.

    Raises:
        TypeError: ``p_values`` is not a sequence of numbers.
        ValueError: ``p_values`` is not 1-D or has a value outside [0, 1].
    """
    if isinstance(p_values, (str, bytes)) or not isinstance(p_values, (Iterable, np.ndarray)):
        raise TypeError(f"p_values must be a 1-D sequence of numbers, got "
                        f"{type(p_values).__name__}")
    try:
        p = np.array(list(p_values) if not hasattr(p_values, "__array__") else p_values,
                     dtype=float)
    except (TypeError, ValueError):
        raise TypeError("p_values must be a 1-D sequence of numbers, got a non-numeric "
                        "entry") from None
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got an array of shape {p.shape}")
    tested = ~np.isnan(p)
    if ((p[tested] < 0.0) | (p[tested] > 1.0)).any():
        raise ValueError("p_values must be in [0, 1] (or NaN), got "
                         f"{float(p[tested][(p[tested] < 0) | (p[tested] > 1)][0])!r}")
    adjusted = np.full(p.shape, np.nan)
    index = np.flatnonzero(tested)
    m = index.size
    if m == 0:
        return adjusted
    order = index[np.argsort(p[index], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):  # rank j - 1: the multiplier is m - j + 1 = m - rank
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def _check_arm(name: str, value: Any, arms: list[Any]) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be None or an arm name (str), got {value!r} "
                        f"({type(value).__name__})")
    if value not in arms:
        raise ValueError(f"{name} must be None or one of the arms {arms}, got {value!r}")
    return value


def _check_values_frame(values: Any) -> pd.DataFrame:
    """``values``' ``arm``, ``seed``, ``value`` columns, validated; ``value`` as float."""
    if not isinstance(values, pd.DataFrame):
        raise TypeError(f"values must be a pandas DataFrame with columns arm, seed, value, got "
                        f"{type(values).__name__}")
    missing = [c for c in _INPUT_COLUMNS if c not in values.columns]
    if missing:
        raise ValueError(f"values must have columns arm, seed, value; missing {missing}")
    frame = values.loc[:, list(_INPUT_COLUMNS)].copy()
    if frame["arm"].isna().any() or frame["seed"].isna().any():
        raise ValueError("values must have an arm and a seed on every row, got a missing one")
    try:
        frame["value"] = pd.to_numeric(frame["value"], errors="raise").astype(float)
    except (TypeError, ValueError):
        raise TypeError("values['value'] must be numbers (NaN for a failed run), got a "
                        "non-numeric entry") from None
    if np.isinf(frame["value"].to_numpy()).any():
        raise ValueError("values['value'] must be finite or NaN, got an infinite value")
    duplicated = frame.duplicated(["arm", "seed"])
    if duplicated.any():
        arm, seed = frame.loc[duplicated, ["arm", "seed"]].iloc[0]
        raise ValueError(f"values must have one row per arm and seed, got arm {arm!r} seed "
                         f"{seed!r} more than once")
    return frame


def _pick_best(means: pd.Series, mode: str) -> Any:
    """The arm with the highest (``max``) or lowest (``min``) mean; ties: the first listed."""
    ranked = means.dropna()
    if ranked.empty:
        raise ValueError("values has no non-NaN value, so no arm can be the best")
    return ranked.idxmax() if mode == "max" else ranked.idxmin()


def _compare(a: np.ndarray, r: np.ndarray, test: str, alpha: float) -> dict[str, Any]:
    """One paired comparison of the values ``a`` against ``r`` (aligned by seed)."""
    n = int(a.size)
    d = a - r
    notes: list[str] = []
    row: dict[str, Any] = {"n_pairs": n, "mean_diff": float(d.mean()) if n else math.nan,
                           "statistic": math.nan, "p_value": math.nan}
    ci = interval(d, 1.0 - alpha, "t")
    row["diff_low"], row["diff_high"] = ci.low, ci.high
    if n < 2:
        notes.append(f"{n} shared seed{'' if n == 1 else 's'}: not tested (needs 2)")
    elif np.all(d == 0.0):
        # Both tests are 0/0 here; identical results are no evidence of a difference.
        row["statistic"], row["p_value"] = 0.0, 1.0
        notes.append("all differences are zero")
    elif test == "t":
        result = sps.ttest_rel(a, r)
        row["statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
        if np.all(d == d[0]):
            notes.append("differences have zero variance")
    else:
        result = sps.wilcoxon(a, r)
        row["statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
        # The signed-rank test has a floor on p at small n (2 / 2^n exactly): the p of the
        # most extreme signs these magnitudes allow. Say so when it cannot reach alpha.
        floor = float(sps.wilcoxon(np.abs(d)).pvalue)
        if floor >= alpha:
            notes.append(f"wilcoxon cannot reach p < {alpha:g} with these {n} pairs "
                         f"(smallest p {floor:.3g})")
    row["_notes"] = notes
    return row


def paired_comparisons(values: pd.DataFrame, *, best: str | None, baseline: str | None,
                       mode: str = "max", test: str = "t", alpha: float = 0.05) -> pd.DataFrame:
    """Each arm against the best arm and against the baseline arm, paired over shared seeds.

    ``values`` has columns ``arm``, ``seed``, ``value`` (others are ignored), one row per arm
    and seed; a NaN value is a failed run and counts as missing. ``best=None`` picks the arm
    with the highest (``mode="max"``) or lowest (``mode="min"``) mean over its own seeds (ties:
    the first listed); ``baseline=None`` makes no baseline comparisons.

    Every arm but the reference is compared with it over the seeds both ran (an inner join on
    ``seed``): ``test="t"`` is the paired t-test (``scipy.stats.ttest_rel``), ``test=
    "wilcoxon"`` the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zero differences
    dropped, exact at small n), both two-sided. Fewer than 2 shared seeds: NaN statistic and
    p-value, and a note. All differences zero: statistic 0, p-value 1, and a note.

    ``p_holm`` is :func:`holm_bonferroni` across the table's tested comparisons, one hypothesis
    per unordered pair of arms: the best-vs-baseline comparison appears twice (as the baseline
    against the best and the best against the baseline, the same two-sided test) but counts
    once. ``significant`` is ``p_holm < alpha``.

    Returns one row per comparison, the arms in the order they first appear in ``values``,
    each arm's comparison with the best before its comparison with the baseline, columns
    :data:`COMPARISON_COLUMNS`: ``arm``, ``reference`` (the arm compared with),
    ``reference_kind`` (``"best"`` or ``"baseline"``), ``n_pairs`` (shared seeds),
    ``mean_diff`` (mean of ``arm - reference`` over the pairs), ``diff_low``, ``diff_high``
    (the t interval of those differences at confidence ``1 - alpha``), ``statistic``,
    ``p_value``, ``p_holm``, ``test``, ``significant``, ``note`` (``""`` when nothing to say).

    Raises:
        TypeError: ``values`` is not a DataFrame or its ``value`` column is not numeric, or an
            argument has the wrong type.
        ValueError: a column is missing, an (arm, seed) appears twice, ``best``/``baseline``
            is not an arm, ``mode`` not ``"max"``/``"min"``, ``test`` not ``"t"``/
            ``"wilcoxon"``, ``alpha`` not in (0, 1), or ``best=None`` and no value is
            non-NaN.
    """
    mode = check_choice("mode", mode, ("max", "min"))
    test = check_choice("test", test, PAIRED_TESTS)
    alpha = check_number("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    frame = _check_values_frame(values)
    arms = list(pd.unique(frame["arm"]))
    best = _check_arm("best", best, arms)
    baseline = _check_arm("baseline", baseline, arms)
    valid = frame.dropna(subset=["value"])
    if best is None:
        means = valid.groupby("arm", sort=False)["value"].mean().reindex(arms)
        best = _pick_best(means, mode)

    per_arm = {arm: valid.loc[valid["arm"] == arm, ["seed", "value"]] for arm in arms}
    seeds = {arm: set(frame.loc[frame["arm"] == arm, "seed"]) for arm in arms}
    rows: list[dict[str, Any]] = []
    for arm in arms:
        for kind, reference in ((_BEST, best), (_BASELINE, baseline)):
            if reference is None or reference == arm:
                continue
            pairs = per_arm[arm].merge(per_arm[reference], on="seed", suffixes=("_a", "_r"))
            row = _compare(pairs["value_a"].to_numpy(), pairs["value_r"].to_numpy(),
                           test, alpha)
            unpaired = len(seeds[arm] ^ seeds[reference])
            failed = len(seeds[arm] & seeds[reference]) - row["n_pairs"]
            if unpaired:
                row["_notes"].append(f"{unpaired} seed{'' if unpaired == 1 else 's'} run by "
                                     "only one of the two arms left out")
            if failed:
                row["_notes"].append(f"{failed} seed{'' if failed == 1 else 's'} with a NaN "
                                     "value left out")
            row.update(arm=arm, reference=reference, reference_kind=kind, test=test,
                       note="; ".join(row.pop("_notes")))
            rows.append(row)

    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    # One hypothesis per unordered pair of arms: adjust the distinct pairs, then map back.
    pairs = [frozenset((a, r)) for a, r in zip(table["arm"], table["reference"])]
    distinct = list(dict.fromkeys(pairs))
    first_p: dict[frozenset[Any], float] = {}
    for pair, p in zip(pairs, table["p_value"]):
        first_p.setdefault(pair, p)
    adjusted = dict(zip(distinct, holm_bonferroni([first_p[pair] for pair in distinct])))
    table["p_holm"] = np.array([adjusted[pair] for pair in pairs], dtype=float)
    table["significant"] = np.asarray(table["p_holm"] < alpha, dtype=bool)  # NaN: False
    return table.astype({"n_pairs": int, "statistic": float, "p_value": float,
                         "mean_diff": float, "diff_low": float, "diff_high": float})


def verdict(row: Mapping[str, Any] | pd.Series) -> str:
    """A short label for one row of :func:`paired_comparisons`, for a CLI table.

    ``"best"`` / ``"baseline"`` for a row of the reference arm itself (``arm == reference``,
    which a caller listing every arm may pass); ``"≈ best"`` when the arm is not
    distinguishable from the best at the Holm-corrected level (``significant`` false);
    otherwise ``"< best"`` or ``"> best"`` by the sign of ``mean_diff``, i.e. whether the arm's
    metric is lower or higher than the reference's, so with ``mode="max"`` an arm that differs
    reads ``"< best"`` and with ``mode="min"`` ``"> best"``. The same with ``"baseline"``.
    ``"? best"`` when the comparison could not be tested (NaN ``p_holm``: too few shared
    seeds).

    Raises:
        TypeError: ``row`` is not a mapping or a Series.
        ValueError: ``row`` lacks a needed field or has an unknown ``reference_kind``.
    """
    if not isinstance(row, (Mapping, pd.Series)):
        raise TypeError(f"row must be a mapping or a pandas Series (a row of "
                        f"paired_comparisons), got {type(row).__name__}")
    needed = ("arm", "reference", "reference_kind")
    missing = [k for k in needed if k not in row]
    if missing:
        raise ValueError(f"row must have fields {list(needed)}; missing {missing}")
    kind = row["reference_kind"]
    if kind not in (_BEST, _BASELINE):
        raise ValueError(f"row['reference_kind'] must be 'best' or 'baseline', got {kind!r}")
    if row["arm"] == row["reference"]:
        return str(kind)
    missing = [k for k in ("p_holm", "significant", "mean_diff") if k not in row]
    if missing:
        raise ValueError(f"row must have fields p_holm, significant, mean_diff; missing "
                         f"{missing}")
    if pd.isna(row["p_holm"]):
        return f"? {kind}"
    if not bool(row["significant"]):
        return f"≈ {kind}"
    diff = float(row["mean_diff"])
    if diff > 0:
        return f"> {kind}"
    if diff < 0:
        return f"< {kind}"
    return f"≠ {kind}"  # a rank test can reject with a zero mean difference
