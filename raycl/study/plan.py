"""The trials a study runs: CLI overrides, the deterministic trial list, the settings trials get.

For 'random' and 'grid' search the whole trial list is known before Ray starts: each arm's
configs (sampled with a generator seeded from ``study.search_seed`` and the arm name) crossed with
every seed. The list is the same on every run of the same study file and options, which is what
lets ``--resume`` skip the trials already done and ``--dry-run`` print exactly what would run.
Optuna studies choose configs as results arrive; only their budget is known up front.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raycl.study.spec import Benchmark, Model, Optimizer, Resources, Study
from raycl.study.trial import make_trial

__all__ = ["apply_overrides", "apply_settings", "arm_budget", "plan_trials", "settings_of"]

_SPECS = {"benchmark": Benchmark, "model": Model, "optimizer": Optimizer, "resources": Resources}


def apply_overrides(study: Study, *, num_samples: int | None = None,
                    max_concurrent: int | None = None, gpus_per_trial: float | None = None,
                    cpus_per_trial: float | None = None, smoke: bool = False) -> Study:
    """A copy of ``study`` with the CLI's options applied.

    ``smoke`` gives one sample per arm, the first seed only and one epoch per experience, under
    the name ``<name>-smoke`` so a check never mixes with the real results.
    """
    changes: dict[str, Any] = {}
    if num_samples is not None:
        changes["num_samples"] = num_samples
    if max_concurrent is not None:
        changes["max_concurrent"] = max_concurrent
    if gpus_per_trial is not None or cpus_per_trial is not None:
        r = study.resources
        changes["resources"] = Resources(
            gpus_per_trial=r.gpus_per_trial if gpus_per_trial is None else gpus_per_trial,
            cpus_per_trial=r.cpus_per_trial if cpus_per_trial is None else cpus_per_trial)
    if smoke:
        changes.update(name=f"{study.name}-smoke", num_samples=1, seeds=list(study.seeds[:1]),
                       train_epochs=1)
    return dataclasses.replace(study, **changes)


def plan_trials(study: Study, smoke: bool = False) -> list[dict[str, Any]]:
    """Every trial of a 'random' or 'grid' study, in run order: arm by arm, config by config,
    seed by seed. ``smoke`` keeps each arm's first config and forces one epoch."""
    from raycl.tune.space import arm_rng, sample_configs

    if study.search == "optuna":
        raise ValueError("search='optuna' chooses its configs while the study runs")
    trials = []
    for arm in study.arms:
        configs = sample_configs(arm.space, study.num_samples,
                                 arm_rng(study.search_seed, arm.name), study.search)
        if smoke:
            configs = [{**c, **({"train_epochs": 1} if "train_epochs" in c else {})}
                       for c in configs[:1]]
        for config in configs:
            for seed in study.seeds:
                trials.append(make_trial(arm.name, config, seed))
    return trials


def arm_budget(study: Study) -> dict[str, int]:
    """Configs each arm runs under 'optuna' (a baseline with an empty space runs one)."""
    return {arm.name: (1 if not arm.space else study.num_samples) for arm in study.arms}


def settings_of(study: Study) -> dict[str, Any]:
    """The study's plain settings (every field but the arms), to send to the trials."""
    return {f.name: (dataclasses.asdict(getattr(study, f.name))
                     if f.name in _SPECS else getattr(study, f.name))
            for f in dataclasses.fields(study) if f.name != "arms"}


def apply_settings(study: Study, settings: dict[str, Any]) -> Study:
    """``study`` (as loaded from its file in a trial) with the driver's settings, so overrides
    and anything the file computed on the driver (environment variables) hold in every trial."""
    changes = {k: (_SPECS[k](**v) if k in _SPECS else v) for k, v in settings.items()}
    return dataclasses.replace(study, **changes)
