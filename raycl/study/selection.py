"""Which configuration of each arm is best, from a study's trials table.

The rule the study's command-line table, the report and the notebooks share:

- A *config* is one point of an arm's search space: the values of the ``param_<name>`` columns
  that arm sets. A config's score is the mean of the metric over its seeds.
- Only TERMINATED trials that ran every experience count as results; ERROR trials (and trials a
  scheduler stopped early) are counted, never ranked.

It works on DataFrames of ``trials.parquet`` (see :mod:`raycl.study.schema`) and needs pandas only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raycl.study.schema import (
    ARM,
    ERRORED,
    EXPERIENCES_DONE,
    FINAL_AVG_ACCURACY,
    STATUS,
    STUDY,
    TERMINATED,
    is_param_column,
    param_name,
)

__all__ = ["check_mode", "completed_trials", "config_table", "format_config", "format_value",
           "param_columns", "require_columns", "summary"]


def check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def require_columns(frame: pd.DataFrame, columns: Sequence[str], table: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table} table lacks column(s) {missing}; it has {list(frame.columns)}")


def param_columns(trials: pd.DataFrame) -> list[str]:
    """The ``param_<name>`` columns that are set (non-missing) for at least one trial."""
    return [c for c in trials.columns if is_param_column(c) and trials[c].notna().any()]


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
    require_columns(trials, [STATUS], "trials")
    done = trials[trials[STATUS] == TERMINATED]
    if metric is not None:
        require_columns(trials, [metric], "trials")
        done = done[done[metric].notna()]
    if EXPERIENCES_DONE in done.columns and done[EXPERIENCES_DONE].notna().any():
        group = done[STUDY] if STUDY in done.columns else pd.Series(0, index=done.index)
        longest = done.groupby(group)[EXPERIENCES_DONE].transform("max")
        done = done[done[EXPERIENCES_DONE] >= longest]
    return done


def config_table(trials: pd.DataFrame, metric: str = FINAL_AVG_ACCURACY) -> pd.DataFrame:
    """One row per (study, arm, config) of completed trials: mean, std and count over seeds.

    Columns: study, arm, the arm's ``param_<name>`` columns, ``mean``, ``std`` (sample standard
    deviation, NaN with one seed), ``n_seeds``.
    """
    require_columns(trials, [ARM, metric], "trials")
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
        stats.insert(0, ARM, arm)
        stats.insert(0, STUDY, study)
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=[STUDY, ARM, "mean", "std", "n_seeds"])
    return pd.concat(parts, ignore_index=True)


def _study_arm_keys(frame: pd.DataFrame) -> list[Any]:
    study = frame[STUDY] if STUDY in frame.columns else pd.Series("", index=frame.index)
    return [study, frame[ARM]]


def _best_config_row(configs: pd.DataFrame, mode: str) -> pd.Series | None:
    if configs.empty or configs["mean"].notna().sum() == 0:
        return None
    # Ties go to the config with more seeds (more evidence), then to the first in sorted order.
    ranked = configs.assign(_neg_n=-configs["n_seeds"]).sort_values(
        ["mean", "_neg_n"], ascending=[mode == "min", True], kind="stable")
    return ranked.iloc[0]


def _config_of(row: pd.Series, params: Sequence[str]) -> dict[str, Any]:
    return {param_name(p): _python_value(row[p]) for p in params}


def summary(trials: pd.DataFrame, metric: str = FINAL_AVG_ACCURACY,
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
    check_mode(mode)
    require_columns(trials, [ARM, STATUS, metric], "trials")
    trials = trials.reset_index(drop=True)
    configs = config_table(trials, metric)
    done = completed_trials(trials, metric)
    rows = []
    for (study, arm), group in trials.groupby(_study_arm_keys(trials), sort=True, dropna=False):
        arm_configs = configs[(configs[STUDY] == study) & (configs[ARM] == arm)]
        params = param_columns(arm_configs)
        best = _best_config_row(arm_configs, mode)
        n_errored = int((group[STATUS] == ERRORED).sum())
        n_done = int(group.index.isin(done.index).sum())
        rows.append({
            STUDY: study,
            ARM: arm,
            "best_config": None if best is None else _config_of(best, params),
            "mean": math.nan if best is None else float(best["mean"]),
            "std": math.nan if best is None else float(best["std"]),
            "n_seeds": 0 if best is None else int(best["n_seeds"]),
            "n_configs": int(len(arm_configs)),
            "n_trials": int(len(group)),
            "n_errored": n_errored,
            "n_stopped": int(((group[STATUS] == TERMINATED).sum()) - n_done),
        })
    table = pd.DataFrame(rows, columns=[STUDY, ARM, "best_config", "mean", "std", "n_seeds",
                                        "n_configs", "n_trials", "n_errored", "n_stopped"])
    table = table.sort_values([STUDY, "mean"], ascending=[True, mode == "min"],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.attrs.update(metric=metric, mode=mode)
    return table
