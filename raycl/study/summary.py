"""What the CLI prints before and after a study: the trial list (``--dry-run``) and the per-arm
table of the best configs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from raycl.study.schema import (
    ARM,
    CHOSEN_CONFIG,
    CONFIGS_UNRANKED,
    ERRORED,
    INTERVAL,
    PROTOCOL,
    REPORTED_HIGH,
    REPORTED_LOW,
    REPORTED_MEAN,
    REPORTED_METRIC,
    REPORTED_N,
    REPORTED_PHASE,
    SELECTION_METRIC,
    SELECTION_SPLIT,
    SELECTION_VALUE,
    STATUS,
    TEST,
    VERDICT,
)
from raycl.study.selection import format_config
from raycl.study.spec import Study, TrialSpec

__all__ = ["describe", "header", "resources_text", "summary_lines"]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def resources_text(study: Study, gpus: float | None = None) -> str:
    """What each trial asks for; ``gpus`` None: as the study says, before Ray is asked."""
    cpus = study.resources.cpus_per_trial
    if gpus is None:
        g = study.resources.gpus_per_trial
        gpu_text = "1 GPU if the cluster has GPUs, else 0" if g is None else f"{g:g} GPU"
    else:
        gpu_text = f"{gpus:g} GPU"
    return f"{cpus:g} CPU, {gpu_text}"


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


def describe(study: Study, trials: Sequence[TrialSpec] | None,
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
    lines.append(f"{len(trials)} trials in the first phase:")
    width = max([len(t.arm) for t in trials] + [3])
    lines.append(f"  {'#':>4}  {'arm':<{width}}  {'seed':>4}  {'trial_key':<16}  params")
    for i, t in enumerate(trials):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()) or "-"
        lines.append(f"  {i:>4}  {t.arm:<{width}}  {t.seed:>4}  {t.trial_key:<16}  {params}")
    return lines + protocol_lines(study)


def protocol_lines(study: Study) -> list[str]:
    """How the study chooses each arm's config and what it reports, in words."""
    from raycl.study.protocol import confirm_seeds, rank_column, report_column, reported_phase

    rank, report = rank_column(study), report_column(study)
    text = {
        "valid": f"configs ranked on {rank}",
        "test": f"configs ranked on {rank} (the TEST stream: optimistic, asked for)",
        "first_tasks": f"configs searched on experiences 0-{study.tuning_experiences - 1} and "
                       f"ranked on {rank}; then each arm's chosen config trained from scratch "
                       f"on experiences {study.tuning_experiences}-"
                       f"{study.benchmark.n_experiences - 1} with every seed",
        "first_task": f"configs searched on experience 0 and ranked on {rank}; then each arm's "
                      f"chosen config run on the whole stream with every seed",
        "per_experience": "per experience: a learning-rate search with the stability parameter "
                          "off, then the stability parameter decayed until the new "
                          "experience's validation accuracy is within p of the best",
    }[study.selection]
    seeds = confirm_seeds(study)
    need = study.min_seeds or len(study.seeds)
    lines = [f"selection ({study.selection}): {text}; a config is ranked only when {need} of "
             f"its {len(study.seeds)} seeds finished"]
    if study.scheduler == "asha":
        lines.append("ASHA stops seeds early: a stopped seed has no final metric and counts as "
                     "not finished, so a config with a stopped seed is not ranked unless "
                     "min_seeds allows it")
    if seeds:
        lines.append(f"confirmation: each arm's chosen config rerun on fresh seeds {seeds} "
                     f"(adds {len(study.arms) * len(seeds)} trials)")
    lines.append(f"reported: {report} of the '{reported_phase(study)}' runs")
    return lines


def _mean_interval(r: dict[str, Any]) -> str:
    if pd.isna(r[REPORTED_MEAN]):
        return "-"
    if pd.isna(r[REPORTED_LOW]):
        return f"{r[REPORTED_MEAN]:.4f}"
    return f"{r[REPORTED_MEAN]:.4f} [{r[REPORTED_LOW]:.4f}, {r[REPORTED_HIGH]:.4f}]"


def summary_lines(selection: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """The per-arm table: the chosen config, the value it was chosen on, the reported test
    figure (mean and confidence interval over the reported runs' seeds), the paired verdict
    against the best arm and the baseline, and trial counts; then which data chose and which
    data report, in words."""
    if selection.empty:
        return ["no arm has a finished trial to choose from"]
    first = selection.iloc[0]
    rows = [("arm", "chosen config", f"chosen on {first[SELECTION_METRIC]}",
             f"{first[REPORTED_METRIC]} mean [{first[INTERVAL]} interval]", "seeds",
             "vs best / baseline (paired)", "trials", "errored")]
    for r in selection.to_dict("records"):
        mine = trials[trials[ARM] == r[ARM]]
        config = json.loads(r[CHOSEN_CONFIG])
        shown = (format_config(config) if isinstance(config, dict)
                 else f"per experience: {'; '.join(format_config(c) for c in config)}")
        if r[CONFIGS_UNRANKED]:
            shown += f" ({r[CONFIGS_UNRANKED]} config(s) unranked: seeds missing)"
        rows.append((str(r[ARM]), shown, f"{r[SELECTION_VALUE]:.4f}", _mean_interval(r),
                     str(r[REPORTED_N]), str(r[VERDICT] or "-"), str(len(mine)),
                     str(int((mine[STATUS] == ERRORED).sum()))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if first[SELECTION_SPLIT] == TEST:
        lines.append("WARNING: configs were chosen on the test stream (selection='test'): the "
                     "reported figures are optimistic")
    lines.append(f"configs chosen on the {first[SELECTION_SPLIT]} split "
                 f"({first[PROTOCOL]} protocol); reported figures: {first[REPORTED_METRIC]} of "
                 f"the '{first[REPORTED_PHASE]}' runs")
    return lines
