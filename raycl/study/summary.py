"""What the CLI prints before and after a study: the trial list (``--dry-run``) and the per-arm
table of the best configs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from raycl.study.spec import Study

__all__ = ["describe", "header", "metric_frame", "summary_lines"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def header(study: Study, resources: str = "") -> list[str]:
    """Lines naming the study, its benchmark, arms, seeds and search."""
    b = study.benchmark
    lines = [f"study {study.name}" + (f": {study.description}" if study.description else ""),
             f"  benchmark {b.name} ({b.resolved_scenario}-incremental, {b.n_experiences} "
             f"experiences), model {study.model.name}, {study.optimizer.name} "
             f"lr={study.optimizer.lr:g}, {study.train_epochs} epoch(s) per experience",
             f"  arms {', '.join(a.name for a in study.arms)}; seeds {list(study.seeds)}; "
             f"search {study.search}; metric {study.metric} ({study.mode})"
             + (f"; scheduler {study.scheduler}" if study.scheduler else "")]
    if resources:
        lines.append(f"  resources per trial: {resources}")
    return lines


def describe(study: Study, trials: Sequence[Mapping[str, Any]] | None,
             budget: Mapping[str, int] | None = None, resources: str = "") -> list[str]:
    """Lines describing a study and the trials it would run (``--dry-run``); ``trials`` None
    means Optuna, described by its ``budget`` of configs per arm."""
    lines = header(study, resources)
    if trials is None:
        total = sum(budget.values()) * len(study.seeds) if budget else 0
        lines.append(f"{total} trials: Optuna picks the configs while the study runs")
        for arm, n in (budget or {}).items():
            lines.append(f"  {arm}: {n} config(s) x {len(study.seeds)} seed(s)")
        return lines
    lines.append(f"{len(trials)} trials:")
    width = max([len(t["arm"]) for t in trials] + [3])
    lines.append(f"  {'#':>4}  {'arm':<{width}}  {'seed':>4}  {'trial_key':<16}  params")
    for i, t in enumerate(trials):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t["params"].items()) or "-"
        lines.append(f"  {i:>4}  {t['arm']:<{width}}  {t['seed']:>4}  {t['trial_key']:<16}  "
                     f"{params}")
    return lines


def metric_frame(trials: pd.DataFrame, curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``trials`` with a ``metric`` column (taken from each trial's last curves row when the
    metric is not a trials column, e.g. ``avg_accuracy``)."""
    if metric in trials.columns or trials.empty:
        return trials
    if metric not in curves.columns:
        return trials.assign(**{metric: float("nan")})
    last = (curves.sort_values("experience").groupby("trial_key")[metric].last())
    return trials.assign(**{metric: trials["trial_key"].map(last)})


def summary_lines(trials: pd.DataFrame, curves: pd.DataFrame, metric: str,
                  mode: str) -> list[str]:
    """The per-arm table: best config, mean ± std of the metric over its seeds, counts."""
    from raycl.analysis import format_config, summary

    if trials.empty:
        return ["no trial finished"]
    table = summary(metric_frame(trials, curves, metric), metric=metric, mode=mode)
    rows = [("arm", "best config", f"{metric} (mean ± std)", "seeds", "trials", "errored")]
    for r in table.itertuples():
        score = "-" if pd.isna(r.mean) else (
            f"{r.mean:.4f} ± {r.std:.4f}" if not pd.isna(r.std) else f"{r.mean:.4f}")
        rows.append((str(r.arm), format_config(r.best_config), score, str(r.n_seeds),
                     str(r.n_trials), str(r.n_errored)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
