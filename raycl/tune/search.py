"""Optuna search where every suggested config runs with every seed.

Tune's ``OptunaSearch`` suggests one config per trial and cannot take the seeds as a grid. This
searcher keeps one Optuna study (TPE sampler, seeded) per arm, turns each config Optuna asks for
into one Tune trial per seed, and tells Optuna the mean of the metric over those seeds once all
of them have finished (a config whose seeds all errored is told as failed). Arms take turns, so
all arms progress together. Trials stay (arm, config, seed) as in random and grid studies, and
the results tables look the same.

Resuming: trials already done are given back as ``previous``; configs whose seeds all finished
are added to the arm's Optuna study as completed, and the missing seeds of a partly done config
are run first.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from raycl.study.plan import TrialSpec, make_trial
from raycl.study.space import is_domain, to_plain
from raycl.tune.compat import TRIAL_CONFIG, tune_config

__all__ = ["SeededOptunaSearch"]


@dataclass
class _Group:
    """One config of one arm and the seeds it still has to run."""

    arm: str
    params: dict[str, Any]
    ot_trial: Any  # optuna.trial.Trial, or None for an arm with nothing to search
    pending: set[int]
    values: list[float] = field(default_factory=list)


class SeededOptunaSearch(Searcher):
    """Per-arm Optuna TPE search, each config run once per seed.

    Args:
        arms: ``{arm name: search space}`` (Tune domains and constants).
        seeds: the study's seeds.
        budget: configs per arm.
        metric, mode: what Optuna optimises (mean over seeds).
        seed: seeds the samplers (each arm's sampler gets its own derived seed).
        previous: finished trials of earlier runs: dicts with ``arm``, ``params``, ``seed``
            and ``value`` (the metric, NaN if the trial errored).
        where: ``make_trial`` keywords of the trials it suggests (phase, stream).
    """

    def __init__(self, arms: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
                 budget: Mapping[str, int], metric: str, mode: str, seed: int = 0,
                 previous: Sequence[Mapping[str, Any]] = (),
                 where: Mapping[str, Any] | None = None) -> None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        # metric/mode are kept here, not given to Searcher: Tune would then demand the metric in
        # every report, while final_avg_accuracy comes with the last experience only.
        super().__init__(metric=None, mode=None)
        self._target = metric
        self._where = dict(where or {})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna = optuna
        self._seeds = [int(s) for s in seeds]
        self._arms = list(arms)
        self._remaining = {a: int(budget[a]) for a in self._arms}
        self._constants: dict[str, dict[str, Any]] = {}
        self._dists: dict[str, dict[str, Any]] = {}
        self._studies: dict[str, Any] = {}
        direction = "maximize" if mode == "max" else "minimize"
        for name, space in arms.items():
            self._constants[name] = {k: to_plain(v) for k, v in space.items()
                                     if not is_domain(v)}
            domains = {k: v for k, v in space.items() if is_domain(v)}
            self._dists[name] = OptunaSearch.convert_search_space(domains) if domains else {}
            sampler = optuna.samplers.TPESampler(seed=(seed * 1_000_003
                                                       + zlib.crc32(name.encode())) % 2**32)
            self._studies[name] = optuna.create_study(direction=direction, sampler=sampler)
        self._queue: list[tuple[TrialSpec, int]] = []  # (trial, index of its group)
        self._groups: list[_Group] = []
        self._by_trial: dict[str, tuple[_Group, int]] = {}
        self._turn = 0
        self._restore(previous)

    # ---- resume -----------------------------------------------------------------------------
    def _restore(self, previous: Sequence[Mapping[str, Any]]) -> None:
        by_config: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in previous:
            if row["arm"] in self._studies:
                key = (row["arm"], json.dumps(dict(row["params"]), sort_keys=True, default=str))
                by_config.setdefault(key, []).append(row)
        for (arm, _), rows in by_config.items():
            if self._remaining[arm] <= 0:
                continue
            params = dict(rows[0]["params"])
            values = [float(r["value"]) for r in rows if _finite(r.get("value"))]
            missing = set(self._seeds) - {int(r["seed"]) for r in rows}
            searched = {k: v for k, v in params.items() if k in self._dists[arm]}
            study = self._studies[arm]
            try:
                if not missing:
                    study.add_trial(self._optuna.trial.create_trial(
                        params=searched, distributions=self._dists[arm],
                        value=_mean(values) if values else None,
                        state=(self._optuna.trial.TrialState.COMPLETE if values
                               else self._optuna.trial.TrialState.FAIL)))
                else:
                    study.enqueue_trial(searched)
                    ot_trial = study.ask(self._dists[arm]) if self._dists[arm] else None
                    self._start_group(_Group(arm, params, ot_trial, missing, values))
            except ValueError:
                continue  # the space changed since: that config is not in it any more
            self._remaining[arm] -= 1

    # ---- Searcher API -----------------------------------------------------------------------
    def _start_group(self, group: _Group) -> None:
        self._groups.append(group)
        for s in sorted(group.pending):
            self._queue.append((make_trial(group.arm, group.params, s, **self._where),
                                len(self._groups) - 1))

    def _next_arm(self) -> str | None:
        for i in range(len(self._arms)):
            arm = self._arms[(self._turn + i) % len(self._arms)]
            if self._remaining[arm] > 0:
                self._turn = (self._turn + i + 1) % len(self._arms)
                return arm
        return None

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next (arm, config, seed); asks Optuna for a new config when the queue is empty."""
        if not self._queue:
            arm = self._next_arm()
            if arm is None:
                return Searcher.FINISHED
            self._remaining[arm] -= 1
            ot_trial = None
            params = dict(self._constants[arm])
            if self._dists[arm]:
                ot_trial = self._studies[arm].ask(self._dists[arm])
                params.update({k: to_plain(v) for k, v in ot_trial.params.items()})
            self._start_group(_Group(arm, params, ot_trial, set(self._seeds)))
        trial, index = self._queue.pop(0)
        self._by_trial[trial_id] = (self._groups[index], trial.seed)
        return {TRIAL_CONFIG: tune_config(trial)}

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """Collect the seed's metric; tell Optuna once every seed of the config is in."""
        if trial_id not in self._by_trial:
            return
        group, seed = self._by_trial.pop(trial_id)
        failed = error or not result or result.get("diverged")
        value = None if failed else result.get(self._target)
        if _finite(value):
            group.values.append(float(value))
        group.pending.discard(seed)
        if group.pending or group.ot_trial is None:
            return
        study = self._studies[group.arm]
        if group.values:
            study.tell(group.ot_trial, _mean(group.values))
        else:
            study.tell(group.ot_trial, state=self._optuna.trial.TrialState.FAIL)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a resumed study rebuilds this searcher from its Parquet tables."""

    def restore(self, checkpoint_path: str) -> None:
        """See :meth:`save`."""

    def told(self, arm: str) -> int:
        """Configs of ``arm`` Optuna has a final value for (completed or failed)."""
        states = self._optuna.trial.TrialState
        return sum(t.state in (states.COMPLETE, states.FAIL)
                   for t in self._studies[arm].get_trials(deepcopy=False))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))
