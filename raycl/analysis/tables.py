"""Tables computed from a study's results: summaries, best configurations, derived metrics.

Conventions shared by every function here:

- A *run* is one training run: one (study, trial_id, seed) (plus ``trial_key`` where present),
  so a trial that trains several seeds still yields one run per seed.
- A *config* is one point of an arm's search space: the values of the ``param_<name>`` columns
  that arm sets. A config's score is the mean of the metric over its seeds.
- Only TERMINATED trials that ran every experience count as results; ERROR trials (and trials a
  scheduler stopped early) are counted, never plotted or ranked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

PARAM_PREFIX = "param_"
_KEY_CANDIDATES = ("study", "trial_id", "trial_key", "seed")


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def _require(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table} table lacks column(s) {missing}; it has {list(frame.columns)}")


def run_keys(*frames: pd.DataFrame) -> list[str]:
    """The columns that identify one run, among those every given frame has."""
    return [c for c in _KEY_CANDIDATES if all(c in f.columns for f in frames)]


def param_columns(trials: pd.DataFrame) -> list[str]:
    """The ``param_<name>`` columns that are set (non-missing) for at least one trial."""
    return [c for c in trials.columns
            if c.startswith(PARAM_PREFIX) and trials[c].notna().any()]


def arm_labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's arm label: the arm name, or ``study:arm`` when several studies are mixed."""
    if "study" in frame.columns and frame["study"].nunique(dropna=True) > 1:
        return frame["study"].astype(str) + ":" + frame["arm"].astype(str)
    return frame["arm"].astype(str)


def _python_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def format_value(value: Any) -> str:
    """A parameter value for display: 4 significant digits for floats, as-is otherwise."""
    value = _python_value(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_config(config: Mapping[str, Any] | None) -> str:
    """``name=value, ...`` for a config dict; "-" when there is none (no parameters, no result)."""
    if config is None:
        return "-"
    if not config:
        return "(no parameters)"
    return ", ".join(f"{k}={format_value(v)}" for k, v in config.items())


def completed_trials(trials: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """TERMINATED trials that ran as many experiences as their study's longest trial.

    With ``metric``, trials whose metric is missing are dropped too. A scheduler such as ASHA
    ends poor trials early with status TERMINATED; their final metrics cover fewer experiences
    and would not compare with full runs, so they are left out here.
    """
    _require(trials, ["status"], "trials")
    done = trials[trials["status"] == "TERMINATED"]
    if metric is not None:
        _require(trials, [metric], "trials")
        done = done[done[metric].notna()]
    if "experiences_done" in done.columns and done["experiences_done"].notna().any():
        group = done["study"] if "study" in done.columns else pd.Series(0, index=done.index)
        longest = done.groupby(group)["experiences_done"].transform("max")
        done = done[done["experiences_done"] >= longest]
    return done


def config_table(trials: pd.DataFrame, metric: str = "final_avg_accuracy") -> pd.DataFrame:
    """One row per (study, arm, config) of completed trials: mean, std and count over seeds.

    Columns: study, arm, the arm's ``param_<name>`` columns, ``mean``, ``std`` (sample standard
    deviation, NaN with one seed), ``n_seeds``.
    """
    _require(trials, ["arm", metric], "trials")
    done = completed_trials(trials, metric)
    parts = []
    for (study, arm), group in done.groupby(_study_arm_keys(done), sort=True, dropna=False):
        params = param_columns(group)
        if params:
            stats = group.groupby(params, dropna=False, sort=True)[metric].agg(
                mean="mean", std="std", n_seeds="count").reset_index()
        else:
            stats = pd.DataFrame({"mean": [group[metric].mean()], "std": [group[metric].std()],
                                  "n_seeds": [int(group[metric].count())]})
        stats.insert(0, "arm", arm)
        stats.insert(0, "study", study)
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=["study", "arm", "mean", "std", "n_seeds"])
    return pd.concat(parts, ignore_index=True)


def _study_arm_keys(frame: pd.DataFrame) -> list[Any]:
    study = frame["study"] if "study" in frame.columns else pd.Series("", index=frame.index)
    return [study, frame["arm"]]


def _best_config_row(configs: pd.DataFrame, mode: str) -> pd.Series | None:
    if configs.empty or configs["mean"].notna().sum() == 0:
        return None
    # Ties go to the config with more seeds (more evidence), then to the first in sorted order.
    ranked = configs.assign(_neg_n=-configs["n_seeds"]).sort_values(
        ["mean", "_neg_n"], ascending=[mode == "min", True], kind="stable")
    return ranked.iloc[0]


def _config_of(row: pd.Series, params: Sequence[str]) -> dict[str, Any]:
    return {p[len(PARAM_PREFIX):]: _python_value(row[p]) for p in params}


def summary(trials: pd.DataFrame, metric: str = "final_avg_accuracy",
            mode: str = "max") -> pd.DataFrame:
    """Per arm: the best config, the metric's mean and std over its seeds, trial counts.

    The best config is the one whose mean over seeds is highest (``mode="max"``) or lowest
    (``"min"``) among completed trials. Columns: ``study``, ``arm``, ``best_config`` (dict of
    parameter name without the ``param_`` prefix -> value; None when the arm has no result),
    ``mean``, ``std`` (over the best config's seeds; NaN with one seed), ``n_seeds``,
    ``n_configs`` (configs with a result), ``n_trials`` (all rows), ``n_errored`` (status ERROR),
    ``n_stopped`` (TERMINATED but not completed, e.g. stopped early by a scheduler). Rows are sorted
    best arm first within each study; ``attrs`` records the metric and mode.
    """
    _check_mode(mode)
    _require(trials, ["arm", "status", metric], "trials")
    trials = trials.reset_index(drop=True)
    configs = config_table(trials, metric)
    done = completed_trials(trials, metric)
    rows = []
    for (study, arm), group in trials.groupby(_study_arm_keys(trials), sort=True, dropna=False):
        arm_configs = configs[(configs["study"] == study) & (configs["arm"] == arm)]
        params = [c for c in arm_configs.columns
                  if c.startswith(PARAM_PREFIX) and arm_configs[c].notna().any()]
        best = _best_config_row(arm_configs, mode)
        n_errored = int((group["status"] == "ERROR").sum())
        n_done = int(group.index.isin(done.index).sum())
        rows.append({
            "study": study,
            "arm": arm,
            "best_config": None if best is None else _config_of(best, params),
            "mean": math.nan if best is None else float(best["mean"]),
            "std": math.nan if best is None else float(best["std"]),
            "n_seeds": 0 if best is None else int(best["n_seeds"]),
            "n_configs": int(len(arm_configs)),
            "n_trials": int(len(group)),
            "n_errored": n_errored,
            "n_stopped": int(((group["status"] == "TERMINATED").sum()) - n_done),
        })
    table = pd.DataFrame(rows, columns=["study", "arm", "best_config", "mean", "std", "n_seeds",
                                        "n_configs", "n_trials", "n_errored", "n_stopped"])
    table = table.sort_values(["study", "mean"], ascending=[True, mode == "min"],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.attrs.update(metric=metric, mode=mode)
    return table


def best_trials(trials: pd.DataFrame, metric: str = "final_avg_accuracy",
                mode: str = "max") -> pd.DataFrame:
    """The completed trials (one per seed) of each arm's best config, with a ``label`` column."""
    trials = trials.reset_index(drop=True)
    table = summary(trials, metric, mode)
    done = completed_trials(trials, metric)
    keep = pd.Series(False, index=done.index)
    for row in table.itertuples(index=False):
        if row.best_config is None:
            continue
        mask = done["arm"] == row.arm
        if "study" in done.columns:
            mask &= done["study"] == row.study
        for name, value in row.best_config.items():
            column = done[PARAM_PREFIX + name]
            mask &= column.isna() if _is_missing(value) else column == value
        keep |= mask
    result = done[keep].copy()
    result["label"] = arm_labels(trials).loc[result.index]
    return result


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def select_runs(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``frame`` (matrix/curves) that belong to the runs listed in ``runs`` (trials)."""
    keys = run_keys(frame, runs)
    extra = [c for c in ("label",) if c in runs.columns and c not in frame.columns]
    return frame.merge(runs[keys + extra].drop_duplicates(keys), on=keys, how="inner")


def accuracy_matrix(matrix: pd.DataFrame, trial_id: str, seed: int | None = None,
                    value: str = "accuracy") -> pd.DataFrame:
    """The accuracy matrix of one run: rows ``trained_exp``, columns ``eval_exp``.

    ``trial_id`` matches the ``trial_id`` column (or ``trial_key``). A trial that trained several
    seeds needs ``seed``. ``value`` picks another column of the long table, e.g. ``"loss"``.
    Raises ValueError when nothing or more than one run matches.
    """
    _require(matrix, ["trial_id", "trained_exp", "eval_exp", value], "matrix")
    mask = matrix["trial_id"].astype(str) == str(trial_id)
    if "trial_key" in matrix.columns:
        mask |= matrix["trial_key"].astype(str) == str(trial_id)
    rows = matrix[mask]
    if seed is not None and "seed" in rows.columns:
        rows = rows[rows["seed"] == seed]
    if rows.empty:
        raise ValueError(f"no matrix rows for trial {trial_id!r}"
                         + ("" if seed is None else f" and seed {seed}"))
    keys = run_keys(rows)
    n_runs = len(rows.drop_duplicates(keys)) if keys else 1
    if n_runs > 1:
        seeds = sorted(rows["seed"].unique().tolist()) if "seed" in rows.columns else []
        raise ValueError(f"trial {trial_id!r} holds {n_runs} runs (seeds {seeds}); "
                         "pass seed= or a trial_key")
    # A trial restored from a checkpoint may have re-reported an experience: keep the last.
    rows = rows.drop_duplicates(["trained_exp", "eval_exp"], keep="last")
    table = rows.pivot(index="trained_exp", columns="eval_exp", values=value)
    return table.sort_index().sort_index(axis=1).astype(float)


def mean_accuracy_matrix(matrix: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The accuracy matrix averaged over the given runs (rows of trials): trained x eval exp."""
    rows = select_runs(matrix, runs)
    if rows.empty:
        return pd.DataFrame(dtype=float)
    keys = run_keys(rows)
    rows = rows.drop_duplicates([*keys, "trained_exp", "eval_exp"], keep="last")
    table = rows.pivot_table(index="trained_exp", columns="eval_exp", values="accuracy",
                             aggfunc="mean")
    return table.sort_index().sort_index(axis=1).astype(float)


def average_accuracy_per_experience(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per run and trained experience t: the mean accuracy over experiences 0..t (seen so far).

    Columns: the run keys, any ``label``, ``trained_exp``, ``avg_accuracy``.
    """
    _require(matrix, ["trained_exp", "eval_exp", "accuracy"], "matrix")
    keys = run_keys(matrix) + [c for c in ("arm", "label") if c in matrix.columns]
    seen = matrix[matrix["eval_exp"] <= matrix["trained_exp"]]
    seen = seen.drop_duplicates([*keys, "trained_exp", "eval_exp"], keep="last")
    return (seen.groupby([*keys, "trained_exp"], dropna=False)["accuracy"].mean()
            .rename("avg_accuracy").reset_index())


def forgetting_per_experience(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per run and experience j: forgetting at the end of training.

    Forgetting of j is the best accuracy on j after learning it and before the last experience,
    minus the accuracy on j after the last experience (Chaudhry et al. 2018, eq. 1 of "Riemannian
    Walk"): ``max_{j <= t < T} A[t, j] - A[T, j]``. The last experience has none and is omitted.
    Columns: the run keys, any ``label``, ``eval_exp``, ``forgetting``.
    """
    _require(matrix, ["trained_exp", "eval_exp", "accuracy"], "matrix")
    keys = run_keys(matrix) + [c for c in ("arm", "label") if c in matrix.columns]
    rows = matrix.drop_duplicates([*keys, "trained_exp", "eval_exp"], keep="last")
    last = rows.groupby(keys, dropna=False)["trained_exp"].transform("max")
    final = rows[rows["trained_exp"] == last][[*keys, "eval_exp", "accuracy"]]
    past = rows[(rows["trained_exp"] >= rows["eval_exp"]) & (rows["trained_exp"] < last)]
    best = past.groupby([*keys, "eval_exp"], dropna=False)["accuracy"].max().rename("best")
    merged = final.merge(best.reset_index(), on=[*keys, "eval_exp"], how="inner")
    merged["forgetting"] = merged["best"] - merged["accuracy"]
    return merged[[*keys, "eval_exp", "forgetting"]].reset_index(drop=True)


def pareto_front(frame: pd.DataFrame, cost: str, metric: str = "final_avg_accuracy",
                 mode: str = "max") -> pd.Series:
    """Which rows are Pareto-optimal: no other row has lower-or-equal cost and a better-or-equal
    metric (``mode="max"``: higher is better) with at least one of the two strictly better.

    Rows where either value is missing are never on the front. Returns a boolean Series aligned
    with ``frame``.
    """
    _check_mode(mode)
    _require(frame, [cost, metric], "trials")
    result = pd.Series(False, index=frame.index)
    valid = frame[[cost, metric]].dropna()
    if valid.empty:
        return result
    score = valid[metric] if mode == "max" else -valid[metric]
    best_so_far = -math.inf
    # Visit costs in increasing order; a point survives if it beats everything cheaper and is the
    # best among points of the same cost (equal points are all kept: neither dominates).
    for _, group in score.groupby(valid[cost], sort=True):
        top = group.max()
        if top > best_so_far:
            result.loc[group.index[group == top]] = True
            best_so_far = top
    return result
