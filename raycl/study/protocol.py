"""Selection protocols: which trials a study runs, phase by phase, and which config each arm gets.

A study never reports a figure that its configs were chosen on (unless it asks to, with
``selection="test"``, and then says so). The protocols (``Study.selection``):

* ``valid`` / ``test``: phase ``search`` runs every sampled config with every seed on the whole
  stream; each arm's config with the best mean of the metric on the validation (or test) split
  is chosen; phase ``confirm`` reruns it on ``confirm_seeds``, which no selection saw. Reported:
  the confirmation runs' test values (the search runs' test values without confirmation).
* ``first_tasks`` (Chaudhry et al., "Efficient Lifelong Learning with A-GEM", ICLR 2019, sec. 5):
  phase ``tune`` searches on experiences ``[0, k)`` only, ranked on their validation data;
  phase ``final`` trains each arm's chosen config from scratch on experiences ``[k, T)`` with
  every seed. Reported: the final runs only, on experiences no tuning saw.
* ``first_task`` (Lee et al., "Hyperparameter selection in continual learning", 2024): phase
  ``tune`` searches on experience 0; phase ``final`` runs the chosen values on the whole stream
  with every seed.
* ``per_experience`` (De Lange et al., "A continual learning survey: Defying forgetting in
  classification tasks", TPAMI 2021, sec. 4): for each (arm, seed) a chain of learners; at
  experience t, phase ``plasticity`` fine-tunes the chain's learner on t at every learning rate
  of the grid with the stability hyperparameter at 0 (A* = best validation accuracy on t), then
  phase ``stability`` trains with the stability hyperparameter at ``start * alpha**r``,
  r = 0, 1, ... until the validation accuracy on t reaches ``(1 - p) A*``; the chain continues
  from that learner. Only data of experience t are used at step t. Reported: the chains' final
  test values.

Everything here is a pure function of the study and its trials table: a resumed run derives the
same phases and choices from the rows already written, so nothing is rerun or chosen twice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from raycl.study.schema import (
    ARM,
    CHECKPOINT,
    CHOSEN_CONFIG,
    CONFIG,
    CONFIG_KEY,
    CONFIGS_SEARCHED,
    CONFIGS_UNRANKED,
    CONFIRM,
    CONFIRM_MEAN,
    CONFIRM_N,
    CONFIRM_STD,
    EXPERIENCE,
    FINAL,
    INTERVAL,
    INTRANSIGENCE,
    PHASE,
    PLASTICITY,
    PROTOCOL,
    REPORTED_HIGH,
    REPORTED_LOW,
    REPORTED_MEAN,
    REPORTED_METRIC,
    REPORTED_N,
    REPORTED_PHASE,
    REPORTED_SEEDS,
    REPORTED_STD,
    SCHEMA_VERSION,
    SCHEMA_VERSION_COLUMN,
    SEARCH,
    SEARCH_SEEDS,
    SEARCH_TEST_MEAN,
    SEARCH_TEST_STD,
    SEED,
    SELECTION_HEAD,
    SELECTION_METRIC,
    SELECTION_SPLIT,
    SELECTION_TAIL,
    SELECTION_VALUE,
    STABILITY,
    STATUS,
    STUDY,
    TERMINATED,
    TEST,
    TRIAL_KEY,
    TUNE,
    VALID,
    VERDICT,
    accuracy_column,
    is_param_column,
    metric_column,
    param_column,
)
from raycl.study.space import arm_rng, is_domain, is_grid, sample_configs
from raycl.study.spec import Arm, Study, TrialSpec, make_trial
from raycl.study.stats import COMPARISON_COLUMNS, interval, paired_comparisons, verdict

__all__ = ["PROTOCOLS", "Batch", "Choice", "choices", "confirm_seeds", "first_trials",
           "keep_final_checkpoint",
           "next_batch", "rank_column", "report_column", "reported_phase", "reported_rows",
           "search_phase", "selection_frame", "trial_where", "comparisons_frame"]

#: The values of ``Study.selection``.
PROTOCOLS: tuple[str, ...] = ("valid", "test", "first_tasks", "first_task", "per_experience")


@dataclass(frozen=True)
class Batch:
    """Trials to run next, all of one phase."""

    phase: str
    trials: list[TrialSpec] | None
    """None: an Optuna search picks them (``budget`` configs per arm)."""
    note: str
    """What the batch is, for the progress output."""


@dataclass(frozen=True)
class Choice:
    """The config chosen for one arm."""

    arm: str
    params: dict[str, Any]
    """The chosen config (for 'per_experience': the last experience's)."""
    value: float
    """Mean of the ranking column over the config's seeds."""
    configs: int
    """Configs ranked (see :attr:`unranked`)."""
    seeds: list[int]
    """Seeds the ranking saw."""
    per_experience: list[dict[str, Any]] | None = None
    """'per_experience': the chosen config of each experience (first seed's chain)."""
    unranked: int = 0
    """Configs left out of the ranking: fewer than ``min_seeds`` of their seeds finished."""
    failed: int = 0
    """Seeds of the chosen config that did not finish (possible with ``min_seeds``)."""


# ---- what is ranked and what is reported --------------------------------------------------------
def rank_column(study: Study) -> str:
    """The column configs are ranked on: the study's metric on the validation split, or on the
    test split when the study selects on 'test'."""
    return metric_column(study.metric, TEST if study.selection == "test" else VALID)


def report_column(study: Study) -> str:
    """The column reported for each arm: the study's metric on the test split."""
    return metric_column(study.metric, TEST)


def searches(study: Study) -> bool:
    """Whether some arm has more than one config to choose from."""
    return any(is_domain(v) or is_grid(v) for arm in study.arms for v in arm.space.values())


def confirm_seeds(study: Study) -> list[int]:
    """Seeds of the confirmation runs ('valid' and 'test' selection only)."""
    if study.selection not in ("valid", "test"):
        return []
    if study.confirm_seeds is not None:
        return list(study.confirm_seeds)
    if not searches(study):
        return []
    top = max(study.seeds)
    return [top + 1, top + 2, top + 3]


def keep_final_checkpoint(study: Study) -> bool:
    """Whether a finished trial keeps its last checkpoint: when the study asks, and always for
    'per_experience', whose every step continues a chosen trial's learner."""
    return bool(study.keep_final_checkpoint) or study.selection == "per_experience"


def search_phase(study: Study) -> str:
    """The phase whose trials are the search."""
    return {"first_tasks": TUNE, "first_task": TUNE,
            "per_experience": PLASTICITY}.get(study.selection, SEARCH)


def reported_phase(study: Study) -> str:
    """The phase whose trials give the reported figures."""
    if study.selection in ("first_tasks", "first_task"):
        return FINAL
    if study.selection == "per_experience":
        return STABILITY
    return CONFIRM if confirm_seeds(study) else SEARCH


def _tune_stream(study: Study) -> tuple[int, int] | None:
    k = {"first_tasks": study.tuning_experiences, "first_task": 1}.get(study.selection)
    return None if k is None else (0, k)


def _final_stream(study: Study) -> tuple[int, int] | None:
    if study.selection == "first_tasks":
        return (study.tuning_experiences, study.benchmark.n_experiences)
    return None


def trial_where(study: Study) -> dict[str, Any]:
    """The ``make_trial`` keywords of the search phase's trials (Optuna builds them too)."""
    return {"phase": search_phase(study), "stream": _tune_stream(study)}


def first_trials(study: Study, smoke: bool = False) -> list[TrialSpec] | None:
    """The search phase's trials, arm by arm, config by config, seed by seed (None for Optuna,
    which picks configs as results arrive; 'per_experience' starts with :func:`next_batch`).
    ``smoke`` keeps each arm's first config and forces one epoch."""
    if study.search == "optuna":
        return None
    if study.selection == "per_experience":
        return []
    where = trial_where(study)
    trials = []
    for arm in study.arms:
        configs = sample_configs(arm.space, study.num_samples,
                                 arm_rng(study.search_seed, arm.name), study.search)
        if smoke:
            configs = [{**c, **({"train_epochs": 1} if "train_epochs" in c else {})}
                       for c in configs[:1]]
        for config in configs:
            for seed in study.seeds:
                trials.append(make_trial(arm.name, config, seed, **where))
    return trials


# ---- choosing ------------------------------------------------------------------------------------
def _finished(trials: pd.DataFrame, phase: str) -> pd.DataFrame:
    if trials.empty or PHASE not in trials.columns:
        return trials.iloc[:0]
    return trials[(trials[PHASE] == phase) & (trials[STATUS] == TERMINATED)]


def choices(study: Study, trials: pd.DataFrame, curves: pd.DataFrame) -> dict[str, Choice]:
    """Each arm's chosen config from the search phase's trials (arms with no rankable config
    are left out). A config is ranked only when at least ``study.min_seeds`` (default: all) of
    its seeds finished with a value of :func:`rank_column` (an ERROR, diverged or early-stopped
    seed does not count), so it is never chosen on the seeds that survived. Its score is the
    mean over those seeds; ties go to the config with more seeds, then to the first in key
    order."""
    if study.selection == "per_experience":
        return {c.arm: c for c in _chain_choices(study, trials, curves)}
    column = rank_column(study)
    search = trials[trials[PHASE] == search_phase(study)] if len(trials) else trials
    need = study.min_seeds or len(study.seeds)
    out = {}
    for arm, rows in search.groupby(ARM, sort=True):
        values = rows[column] if column in rows.columns else pd.Series(math.nan, rows.index)
        ok = (rows[STATUS] == TERMINATED) & values.notna()
        stats = rows.assign(_value=values.where(ok), _ok=ok).groupby(CONFIG_KEY).agg(
            mean=("_value", "mean"), n=("_ok", "sum"), runs=(SEED, "count"),
            config=(CONFIG, "first"))
        ranked = stats[stats["n"] >= need]
        if ranked.empty:
            continue
        ranked = ranked.assign(neg_n=-ranked["n"]).sort_values(
            ["mean", "neg_n"], ascending=[study.mode == "min", True], kind="stable")
        best = ranked.iloc[0]
        out[str(arm)] = Choice(str(arm), json.loads(best["config"]), float(best["mean"]),
                               int(len(ranked)), sorted(int(s) for s in rows[SEED].unique()),
                               unranked=int(len(stats) - len(ranked)),
                               failed=int(best["runs"] - best["n"]))
    return out


# ---- the next batch ------------------------------------------------------------------------------
def next_batch(study: Study, trials: pd.DataFrame, curves: pd.DataFrame,
               tried: Iterable[str] = (), planned: list[TrialSpec] | None = None
               ) -> Batch | None:
    """The trials to run next, given the trials table so far (None: the study is complete).

    A trial counts as done when its row is TERMINATED, or when this run already tried it
    (``tried``: keys; an ERROR row is not retried within a run, and a phase's choice is made
    from what finished). ``planned`` is the search phase's list when it was already planned.
    """
    tried = set(tried)
    done = set(trials.loc[trials[STATUS] == TERMINATED, TRIAL_KEY]) if len(trials) else set()

    def pending(specs: list[TrialSpec]) -> list[TrialSpec]:
        return [t for t in specs if t.trial_key not in done and t.trial_key not in tried]

    if study.selection == "per_experience":
        return _per_experience_batch(study, trials, curves, pending)
    phase = search_phase(study)
    first = planned if planned is not None else first_trials(study)
    if first is None:  # Optuna: one searcher run per process, for what is left of its budget
        if f"optuna:{phase}" not in tried:
            return Batch(phase, None, f"{phase}: Optuna search")
    else:
        todo = pending(first)
        if todo:
            return Batch(phase, todo, f"{phase}: {len(todo)} trials")
    chosen = choices(study, trials, curves)
    if study.selection in ("first_tasks", "first_task"):
        final = [make_trial(c.arm, c.params, seed, phase=FINAL, stream=_final_stream(study))
                 for c in chosen.values() for seed in study.seeds]
        todo = pending(final)
        return Batch(FINAL, todo, f"{FINAL}: each arm's chosen config from scratch, "
                                  f"{len(todo)} trials") if todo else None
    confirm = [make_trial(c.arm, c.params, seed, phase=CONFIRM)
               for c in chosen.values() for seed in confirm_seeds(study)]
    todo = pending(confirm)
    return Batch(CONFIRM, todo, f"{CONFIRM}: each arm's chosen config on fresh seeds "
                                f"{confirm_seeds(study)}, {len(todo)} trials") if todo else None


# ---- per-experience selection (De Lange et al. 2021) ---------------------------------------------
def _fixed(arm: Arm) -> dict[str, Any]:
    """The constants of an arm's space (per-experience selection searches no other values)."""
    return {k: v for k, v in arm.space.items() if not (is_domain(v) or is_grid(v))}


@dataclass
class _Step:
    """One experience of one chain: the candidates run and the one chosen."""

    chosen: pd.Series | None = None
    waiting: TrialSpec | None = None  # the next candidate still to run
    failed: bool = False


def _row(trials: pd.DataFrame, spec: TrialSpec) -> pd.Series | None:
    if trials.empty:
        return None
    rows = trials[(trials[TRIAL_KEY] == spec.trial_key) & (trials[STATUS] == TERMINATED)]
    return None if rows.empty else rows.iloc[-1]


def _valid_accuracy(row: pd.Series | None, t: int) -> float:
    if row is None:
        return math.nan
    value = row.get(accuracy_column(t, VALID))
    return float(value) if value is not None and not pd.isna(value) else math.nan


def _chain_step(study: Study, arm: Arm, seed: int, t: int, init: str | None,
                trials: pd.DataFrame, curves_acc: dict[str, float], pending: Any) -> _Step:
    """Where one chain stands at experience ``t``."""
    pe = study.per_experience
    base = _fixed(arm)
    off = {arm.stability: 0.0} if arm.stability else {}
    plastic = [make_trial(arm.name, {**base, **off, "lr": lr}, seed, phase=PLASTICITY,
                          init=init, steps=1) for lr in pe.lr_grid]
    todo = pending(plastic)
    if todo:
        return _Step(waiting=todo[0])
    scored = [(curves_acc.get(s.trial_key, math.nan), s) for s in plastic]
    scored = [(a, s) for a, s in scored if not math.isnan(a)]
    if not scored:
        return _Step(failed=True)
    a_star, best = max(scored, key=lambda pair: pair[0])
    if not arm.stability:
        return _Step(chosen=_row(trials, best))
    lr = best.params["lr"]
    for r in range(pe.max_decays + 1):
        value = float(arm.stability_start) * pe.alpha ** r
        spec = make_trial(arm.name, {**base, arm.stability: value, "lr": lr}, seed,
                          phase=STABILITY, init=init, steps=1)
        if pending([spec]):
            return _Step(waiting=spec)
        acc = curves_acc.get(spec.trial_key, math.nan)
        if (not math.isnan(acc) and acc >= (1 - pe.p) * a_star) or r == pe.max_decays:
            row = _row(trials, spec)
            return _Step(chosen=row, failed=row is None)
    raise AssertionError("unreachable")


def _last_valid_accuracies(curves: pd.DataFrame) -> dict[str, float]:
    """trial_key -> validation accuracy on the experience its last report trained."""
    if curves.empty:
        return {}
    last = curves.sort_values(EXPERIENCE).groupby(TRIAL_KEY).tail(1)
    return {row[TRIAL_KEY]: _valid_accuracy(row, int(row[EXPERIENCE]))
            for _, row in last.iterrows()}


def _chains(study: Study, trials: pd.DataFrame, curves: pd.DataFrame, pending: Any
            ) -> Iterable[tuple[Arm, int, list[pd.Series], _Step | None]]:
    """Each (arm, seed) chain: the rows chosen so far and the step it waits at (None when it
    is complete or failed)."""
    accs = _last_valid_accuracies(curves)
    for arm in study.arms:
        for seed in study.seeds:
            chosen: list[pd.Series] = []
            init = None
            step = None
            for t in range(study.benchmark.n_experiences):
                step = _chain_step(study, arm, seed, t, init, trials, accs, pending)
                if step.chosen is None:
                    break
                chosen.append(step.chosen)
                checkpoint = step.chosen.get(CHECKPOINT)
                last = t == study.benchmark.n_experiences - 1
                if not last and (checkpoint is None or pd.isna(checkpoint)):  # no learner left
                    step = _Step(failed=True)
                    break
                init = str(checkpoint)
                step = None
            yield arm, seed, chosen, step


def _per_experience_batch(study: Study, trials: pd.DataFrame, curves: pd.DataFrame,
                          pending: Any) -> Batch | None:
    waiting = [step.waiting for _, _, _, step in _chains(study, trials, curves, pending)
               if step is not None and step.waiting is not None]
    if not waiting:
        return None
    phases = sorted({t.phase for t in waiting})
    return Batch(phases[0] if len(phases) == 1 else STABILITY, waiting,
                 f"per-experience step: {len(waiting)} candidate(s)")


def _chain_choices(study: Study, trials: pd.DataFrame, curves: pd.DataFrame) -> list[Choice]:
    out = []
    by_arm: dict[str, list[list[pd.Series]]] = {}
    for arm, _seed, chosen, step in _chains(study, trials, curves, _nothing_pending):
        if step is None and len(chosen) == study.benchmark.n_experiences:
            by_arm.setdefault(arm.name, []).append(chosen)
    column = rank_column(study)
    for arm, chains in by_arm.items():
        finals = [chain[-1] for chain in chains]
        values = [float(r[column]) for r in finals if column in r and not pd.isna(r[column])]
        out.append(Choice(arm, json.loads(finals[0][CONFIG]),
                          sum(values) / len(values) if values else math.nan,
                          configs=len(study.per_experience.lr_grid),
                          seeds=sorted(int(r[SEED]) for r in finals),
                          per_experience=[json.loads(r[CONFIG]) for r in chains[0]]))
    return out


def _nothing_pending(specs: list[TrialSpec]) -> list[TrialSpec]:
    return []


def reported_rows(study: Study, trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The trials rows behind each arm's reported figures: the confirmation (or search) runs of
    the chosen config, the final runs, or the last step of every complete chain."""
    chosen = choices(study, trials, curves)
    if study.selection == "per_experience":
        keys = set()
        for _arm, _seed, rows, step in _chains(study, trials, curves, _nothing_pending):
            if step is None and len(rows) == study.benchmark.n_experiences:
                keys.add(rows[-1][TRIAL_KEY])
        return trials[trials[TRIAL_KEY].isin(keys)]
    phase = reported_phase(study)
    done = _finished(trials, phase)
    wanted = {(c.arm, json.dumps(c.params, sort_keys=True)) for c in chosen.values()}
    mask = pd.Series([(a, c) in wanted for a, c in zip(done[ARM], done[CONFIG], strict=True)],
                     index=done.index, dtype=bool)
    return done[mask]


def _stats(rows: pd.DataFrame, column: str) -> tuple[float, float, int]:
    values = rows[column].dropna() if column in rows.columns else pd.Series(dtype=float)
    n = int(len(values))
    mean = float(values.mean()) if n else math.nan
    std = float(values.std()) if n > 1 else math.nan
    return mean, std, n


def _baseline(study: Study) -> str | None:
    return next((a.name for a in study.arms if a.baseline), None)


def comparisons_frame(study: Study, trials: pd.DataFrame, curves: pd.DataFrame
                      ) -> pd.DataFrame:
    """comparisons.parquet: every arm's reported runs against the best arm's and the baseline
    arm's, paired over their shared seeds (``study.paired_test``, Holm-corrected across the
    table; see :func:`raycl.study.stats.paired_comparisons`)."""
    reported = reported_rows(study, trials, curves)
    report = report_column(study)
    values = pd.DataFrame({"arm": reported[ARM].astype(str) if len(reported) else [],
                           "seed": reported[SEED] if len(reported) else [],
                           "value": reported[report] if report in reported else []})
    values = values.dropna()
    if values["arm"].nunique() < 2:
        return pd.DataFrame(columns=[STUDY, *COMPARISON_COLUMNS])
    baseline = _baseline(study)
    frame = paired_comparisons(values, best=None,
                               baseline=baseline if baseline in set(values["arm"]) else None,
                               mode=study.mode, test=study.paired_test)
    frame.insert(0, STUDY, study.name)
    return frame


def _verdicts(comparisons: pd.DataFrame) -> dict[str, str]:
    """arm -> its labels against the best arm and the baseline ("best", "≈ best; > baseline")."""
    labels: dict[str, list[str]] = {}
    for row in comparisons.to_dict("records"):
        labels.setdefault(row["arm"], []).append(verdict(row))
    for kind in ("best", "baseline"):  # the reference arms themselves
        for arm in set(comparisons.loc[comparisons["reference_kind"] == kind, "reference"]):
            parts = labels.setdefault(arm, [])
            if kind == "best":
                parts.insert(0, kind)
            else:
                parts.append(kind)
    return {arm: "; ".join(parts) for arm, parts in labels.items()}


def _diagonal(curves: pd.DataFrame, keys: pd.Series) -> dict[int, float]:
    """Mean over the given trials of R[k][k] (test accuracy on k right after learning k)."""
    if curves.empty:
        return {}
    rows = curves[curves[TRIAL_KEY].isin(set(keys))]
    out: dict[int, list[float]] = {}
    for row in rows.to_dict("records"):
        k = int(row[EXPERIENCE])
        value = row.get(accuracy_column(k, TEST))
        if value is not None and not pd.isna(value):
            out.setdefault(k, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in out.items()}


def _intransigence(study: Study, reported: pd.DataFrame, curves: pd.DataFrame
                   ) -> dict[str, float]:
    """arm -> mean over seeds shared with the joint arm of mean_k (joint R[k][k] - arm
    R[k][k]) (Chaudhry et al. 2018); empty without a joint arm."""
    joint = next((a.name for a in study.arms if a.joint), None)
    if joint is None or reported.empty:
        return {}
    by_seed = {int(s): rows for s, rows in reported[reported[ARM] == joint].groupby(SEED)}
    out: dict[str, float] = {}
    for arm, rows in reported.groupby(ARM):
        values = []
        for seed, mine in rows.groupby(SEED):
            if int(seed) not in by_seed:
                continue
            ref = _diagonal(curves, by_seed[int(seed)][TRIAL_KEY])
            own = _diagonal(curves, mine[TRIAL_KEY])
            gaps = [ref[k] - own[k] for k in own if k in ref]
            if gaps:
                values.append(sum(gaps) / len(gaps))
        out[str(arm)] = sum(values) / len(values) if values else math.nan
    return out


def selection_frame(study: Study, trials: pd.DataFrame, curves: pd.DataFrame,
                    comparisons: pd.DataFrame | None = None) -> pd.DataFrame:
    """selection.parquet: one row per arm with a choice (see ``raycl.study.schema``): the
    chosen config, the value it was chosen on, the reported figure with its confidence
    interval, and its verdict from the paired comparisons (``comparisons``: the
    :func:`comparisons_frame` of the same tables when the caller has it already)."""
    chosen = choices(study, trials, curves)
    reported = reported_rows(study, trials, curves)
    if comparisons is None:
        comparisons = comparisons_frame(study, trials, curves)
    verdicts = _verdicts(comparisons)
    intransigence = _intransigence(study, reported, curves)
    rank, report = rank_column(study), report_column(study)
    search = _finished(trials, search_phase(study))
    rows = []
    for arm, choice in chosen.items():
        config = json.dumps(choice.per_experience if choice.per_experience is not None
                            else choice.params, sort_keys=True)
        mine = reported[reported[ARM] == arm]
        ci = interval(mine[report] if report in mine else [], method=study.interval)
        same = search[(search[ARM] == arm)
                      & (search[CONFIG] == json.dumps(choice.params, sort_keys=True))]
        s_mean, s_std, _ = _stats(same, report)
        confirm = reported_phase(study) == CONFIRM
        row = {
            STUDY: study.name, ARM: arm, PROTOCOL: study.selection,
            SELECTION_SPLIT: TEST if study.selection == "test" else VALID,
            SELECTION_METRIC: rank, SELECTION_VALUE: choice.value,
            CONFIGS_SEARCHED: choice.configs, CONFIGS_UNRANKED: choice.unranked,
            SEARCH_SEEDS: json.dumps(choice.seeds), CHOSEN_CONFIG: config,
            **{param_column(k): v for k, v in choice.params.items()},
            REPORTED_PHASE: reported_phase(study), REPORTED_METRIC: report,
            REPORTED_MEAN: ci.mean, REPORTED_STD: ci.std, REPORTED_N: ci.n,
            REPORTED_LOW: ci.low, REPORTED_HIGH: ci.high,
            INTERVAL: f"{ci.confidence:.0%} {ci.method}", VERDICT: verdicts.get(arm, ""),
            INTRANSIGENCE: intransigence.get(arm, math.nan),
            REPORTED_SEEDS: json.dumps(sorted(int(s) for s in mine[SEED])),
            SEARCH_TEST_MEAN: s_mean, SEARCH_TEST_STD: s_std,
            CONFIRM_MEAN: ci.mean if confirm else math.nan,
            CONFIRM_STD: ci.std if confirm else math.nan, CONFIRM_N: ci.n if confirm else 0,
        }
        rows.append(row)
    params = sorted({k for r in rows for k in r if is_param_column(k)})
    columns = [*SELECTION_HEAD, *params, *SELECTION_TAIL]
    frame = pd.DataFrame(rows, columns=columns)
    frame[SCHEMA_VERSION_COLUMN] = SCHEMA_VERSION
    # best reported figure first
    return frame.sort_values(REPORTED_MEAN, ascending=study.mode == "min", na_position="last",
                             kind="stable").reset_index(drop=True)
