"""Tables computed from a study's results: summaries, chosen configs, derived metrics.

Conventions shared by every function here:

- A *run* is one training run: one (study, trial_id, seed) (plus ``trial_key`` and ``phase``
  where present), so a trial that trains several seeds still yields one run per seed.
- Configs, completed trials and the best config of an arm are as :mod:`raycl.study.selection`
  defines them (the study's own table uses the same code); they are re-exported here.
- Accuracy metrics are read on the test split by default (``test_final_avg_accuracy``):
  reported figures are measured there. Functions of the accuracy matrix take ``split``
  (``"test"`` or ``"valid"``) and use only that split's rows.
- *The config of an arm* is the one the study chose (``selection.parquet``, passed as
  ``selection``): chosen on the validation split, so the test figures shown for it are not the
  ones it was chosen on. Without a selection table it is the best config by ``metric`` among the
  search-phase trials.
- A spread over seeds is a confidence interval of the mean (:func:`mean_intervals`: the
  Student-t interval of :func:`raycl.study.stats.interval`), never ±1 std.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from raycl.study import selection as _selection
from raycl.study.schema import (
    ACCURACY,
    ARM,
    AVG_ACCURACY,
    CHOSEN_CONFIG,
    EVAL_EXP,
    FINAL_AVG_ACCURACY,
    INFO_FIELDS,
    PEAK_MEMORY_MB,
    PHASE,
    REPORTED_PHASE,
    SEARCH,
    SEED,
    SPLIT,
    SPLITS,
    STUDY,
    TEST,
    TRAINED_EXP,
    TRIAL_ID,
    TRIAL_KEY,
    TUNE,
    is_param_column,
    param_column,
    param_name,
    split_column,
)
from raycl.study.selection import (
    check_mode,
    completed_trials,
    format_config,
    format_value,
    param_columns,
    require_columns,
)

__all__ = ["DEFAULT_METRIC", "INTERVAL_CONFIDENCE", "SEARCH_PHASES", "accuracy_matrix",
           "arm_labels", "average_accuracy_per_experience", "best_trials", "chosen_configs",
           "completed_per_phase", "completed_trials", "config_table",
           "forgetting_per_experience", "format_config", "format_value", "higher_is_better",
           "matched_params", "matrix_split", "mean_accuracy_matrix", "mean_intervals",
           "param_columns", "pareto_front", "per_trial_memory", "run_keys", "search_trials",
           "select_runs", "summary"]

#: The metric figures and tables rank and show by default: final average accuracy on the test
#: split.
DEFAULT_METRIC = split_column(TEST, FINAL_AVG_ACCURACY)
#: The phases whose trials are a study's search (configs tried, one per point of the space):
#: ``search``, and ``tune`` of the two-phase protocols.
SEARCH_PHASES: tuple[str, ...] = (SEARCH, TUNE)

#: The confidence of the intervals the figures draw (Student-t over seeds).
INTERVAL_CONFIDENCE = 0.95

_KEY_CANDIDATES = (STUDY, TRIAL_ID, TRIAL_KEY, PHASE, SEED)

# The trials column naming the device a trial trained on: the schema lists it first among the
# INFO_FIELDS and has no constant of its own.
_DEVICE = INFO_FIELDS[0]
# The device type whose peak memory is the trial's own (torch.device("cuda").type).
_CUDA = "cuda"


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of the metric column is better: true but for forgetting and
    losses (how a reported figure, whose study's mode the selection table does not record, is
    ranked)."""
    return not any(word in metric for word in ("forgetting", "loss"))


def summary(trials: pd.DataFrame, metric: str = DEFAULT_METRIC,
            mode: str = "max") -> pd.DataFrame:
    """Per arm: the best config by ``metric`` (default: the test split's final average accuracy)
    and its mean and std over seeds, as :func:`raycl.study.selection.summary` computes it.

    It ranks every row it is given: pass :func:`search_trials` to rank the search only (a
    study's own choice is in ``selection.parquet``).
    """
    return _selection.summary(trials, metric=metric, mode=mode)


def config_table(trials: pd.DataFrame, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
    """One row per (study, arm, config) of completed trials: mean, std and count of ``metric``
    (default: the test split's final average accuracy) over seeds, as
    :func:`raycl.study.selection.config_table` computes it."""
    return _selection.config_table(trials, metric=metric)


def run_keys(*frames: pd.DataFrame) -> list[str]:
    """The columns that identify one run, among those every given frame has."""
    return [c for c in _KEY_CANDIDATES if all(c in f.columns for f in frames)]


def arm_labels(frame: pd.DataFrame) -> pd.Series:
    """Each row's arm label: the arm name, or ``study:arm`` when several studies are mixed."""
    if STUDY in frame.columns and frame[STUDY].nunique(dropna=True) > 1:
        return frame[STUDY].astype(str) + ":" + frame[ARM].astype(str)
    return frame[ARM].astype(str)


def search_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of the search (phases :data:`SEARCH_PHASES`), index kept.

    A table without a ``phase`` column (written by hand) is all search.
    """
    if PHASE not in trials.columns:
        return trials
    return trials[trials[PHASE].isin(SEARCH_PHASES)]


def completed_per_phase(trials: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """:func:`completed_trials` of each phase on its own, index kept.

    Phases train different lengths (``tune`` trials see the first experiences only), so "ran as
    many experiences as the longest trial" is judged within a phase.
    """
    if PHASE not in trials.columns or trials[PHASE].nunique(dropna=False) <= 1:
        return completed_trials(trials, metric)
    parts = [completed_trials(group, metric)
             for _, group in trials.groupby(trials[PHASE].fillna(""), sort=False)]
    return pd.concat(parts).sort_index()


def _config_from_json(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def chosen_configs(selection: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """Each arm's chosen config from a selection table: ``(study, arm) -> {name: value}``.

    The config is read from the table's ``param_<name>`` columns (the values the trials table
    holds), or from the ``chosen_config`` JSON when the row sets none. An arm whose chosen config
    is not one point of the space (a per-experience schedule, a JSON list) maps to ``{}``.
    """
    params = [c for c in selection.columns if is_param_column(c)]
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for row in selection.to_dict("records"):
        config = {param_name(c): _plain(row[c]) for c in params if not _is_missing(row[c])}
        if not config:
            config = _config_from_json(row.get(CHOSEN_CONFIG)) or {}
        result[(str(row.get(STUDY, "")), str(row[ARM]))] = config
    return result


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _same_config(frame: pd.DataFrame, config: Mapping[str, Any],
                 params: list[str]) -> pd.Series:
    """Rows of ``frame`` whose ``params`` columns hold ``config`` (missing where it lacks one)."""
    mask = pd.Series(True, index=frame.index)
    for column in params:
        name = param_name(column)
        values = frame[column]
        if name not in config or _is_missing(config[name]):
            mask &= values.isna()
        elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
                and isinstance(config[name], (int, float)) and not isinstance(config[name], bool):
            # Parquet round trips keep floats exact; isclose only forgives a JSON re-encoding.
            mask &= pd.Series(np.isclose(values.to_numpy(dtype=float), float(config[name]),
                                         rtol=1e-9, atol=0.0), index=frame.index)
        else:
            mask &= values.astype(object) == config[name]
    return mask


_KEY_SEPARATOR = "\x1f"  # cannot occur in a study or arm name


def _arm_key(study: Any, arm: Any, with_study: bool) -> str:
    return f"{study if with_study else ''}{_KEY_SEPARATOR}{arm}"


def _arm_keys(frame: pd.DataFrame, with_study: bool) -> pd.Series:
    """Each row's study and arm as one string (the study left out when ``with_study`` is
    false)."""
    study = frame[STUDY].astype(str) if with_study else ""
    return study + _KEY_SEPARATOR + frame[ARM].astype(str)


def best_trials(trials: pd.DataFrame, metric: str = DEFAULT_METRIC, mode: str = "max",
                selection: pd.DataFrame | None = None) -> pd.DataFrame:
    """The completed runs of each arm's config (one row per seed), with a ``label`` column.

    With a ``selection`` table (``StudyResults.selection``) the config of an arm is the one the
    study chose, and the runs are those of its reported phase (``reported_phase``: the
    confirmation or final runs, so that their test figures are not the ones the config was
    chosen on); in a search phase, only the runs of the chosen config (also when the reported
    phase has no completed run, e.g. a study stopped before it). Arms the selection table
    lacks (and every arm without one) get the best config by ``metric``/``mode`` among the
    search-phase trials (:func:`summary`), and its search runs.
    """
    check_mode(mode)
    trials = trials.reset_index(drop=True)
    require_columns(trials, [ARM, metric], "trials")
    done = completed_per_phase(trials, metric)
    searched = pd.Series(done.index.isin(search_trials(done).index), index=done.index)
    has_selection = selection is not None and len(selection) > 0
    with_study = STUDY in trials.columns and (not has_selection or STUDY in selection.columns)
    keys = _arm_keys(done, with_study)
    keep = pd.Series(False, index=done.index)
    chosen: dict[str, dict[str, Any]] = {}
    if has_selection:
        assert selection is not None
        configs = chosen_configs(selection)
        for row in selection.to_dict("records"):
            key = _arm_key(row.get(STUDY), row[ARM], with_study)
            chosen[key] = configs[(str(row.get(STUDY, "")), str(row[ARM]))]
            phase = row.get(REPORTED_PHASE)
            phase = SEARCH if _is_missing(phase) else str(phase)
            arm = keys == key
            rows = arm & (done[PHASE] == phase) if PHASE in done.columns else arm
            if PHASE in done.columns and not rows.any():
                # Stopped before its reported phase ran: the chosen config's search runs.
                phase, rows = SEARCH, arm & searched
            if phase in SEARCH_PHASES or PHASE not in done.columns:
                # Only a search phase ran other configs than the chosen one.
                rows &= _same_config(done, chosen[key], param_columns(done[rows]))
            keep |= rows
    table = summary(search_trials(trials), metric, mode)
    for row in table.to_dict("records"):
        key = _arm_key(row[STUDY], row[ARM], with_study)
        if key in chosen or row["best_config"] is None:
            continue
        config = row["best_config"]
        keep |= (keys == key) & searched & _same_config(
            done, config, [param_column(name) for name in config])
    result = done[keep].copy()
    result["label"] = arm_labels(trials).loc[result.index]
    return result


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array is a value, not a missing one
        return False


def select_runs(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``frame`` (matrix/curves) that belong to the runs listed in ``runs`` (trials)."""
    keys = run_keys(frame, runs)
    extra = [c for c in ("label",) if c in runs.columns and c not in frame.columns]
    return frame.merge(runs[keys + extra].drop_duplicates(keys), on=keys, how="inner")


def matrix_split(matrix: pd.DataFrame, split: str = TEST) -> pd.DataFrame:
    """The rows of the long accuracy matrix measured on ``split`` (``"test"`` or ``"valid"``).

    A matrix without a ``split`` column (written by hand, or upgraded from schema version 1) is
    all test rows. Raises ValueError for another split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if SPLIT not in matrix.columns:
        return matrix if split == TEST else matrix.iloc[:0]
    return matrix[matrix[SPLIT] == split]


def accuracy_matrix(matrix: pd.DataFrame, trial_id: str, seed: int | None = None,
                    value: str = ACCURACY, split: str = TEST) -> pd.DataFrame:
    """The accuracy matrix of one run on ``split``: rows ``trained_exp``, columns ``eval_exp``.

    ``trial_id`` matches the ``trial_id`` column (or ``trial_key``). A trial that trained several
    seeds needs ``seed``. ``value`` picks another column of the long table, e.g. ``"loss"``.
    Raises ValueError when nothing or more than one run matches.
    """
    require_columns(matrix, [TRIAL_ID, TRAINED_EXP, EVAL_EXP, value], "matrix")
    matrix = matrix_split(matrix, split)
    mask = matrix[TRIAL_ID].astype(str) == str(trial_id)
    if TRIAL_KEY in matrix.columns:
        mask |= matrix[TRIAL_KEY].astype(str) == str(trial_id)
    rows = matrix[mask]
    if seed is not None and SEED in rows.columns:
        rows = rows[rows[SEED] == seed]
    if rows.empty:
        raise ValueError(f"no matrix rows for trial {trial_id!r}"
                         + ("" if seed is None else f" and seed {seed}")
                         + f" on the {split} split")
    keys = run_keys(rows)
    n_runs = len(rows.drop_duplicates(keys)) if keys else 1
    if n_runs > 1:
        seeds = sorted(rows[SEED].unique().tolist()) if SEED in rows.columns else []
        raise ValueError(f"trial {trial_id!r} holds {n_runs} runs (seeds {seeds}); "
                         "pass seed= or a trial_key")
    # A trial restored from a checkpoint may have re-reported an experience: keep the last.
    rows = rows.drop_duplicates([TRAINED_EXP, EVAL_EXP], keep="last")
    table = rows.pivot(index=TRAINED_EXP, columns=EVAL_EXP, values=value)
    return table.sort_index().sort_index(axis=1).astype(float)


def mean_accuracy_matrix(matrix: pd.DataFrame, runs: pd.DataFrame,
                         split: str = TEST) -> pd.DataFrame:
    """The accuracy matrix on ``split`` averaged over the given runs (rows of trials): trained x
    eval exp."""
    rows = select_runs(matrix_split(matrix, split), runs)
    if rows.empty:
        return pd.DataFrame(dtype=float)
    keys = run_keys(rows)
    rows = rows.drop_duplicates([*keys, TRAINED_EXP, EVAL_EXP], keep="last")
    table = rows.pivot_table(index=TRAINED_EXP, columns=EVAL_EXP, values=ACCURACY,
                             aggfunc="mean")
    return table.sort_index().sort_index(axis=1).astype(float)


def average_accuracy_per_experience(matrix: pd.DataFrame, split: str = TEST) -> pd.DataFrame:
    """Per run and trained experience t: the mean accuracy on ``split`` over experiences 0..t
    (seen so far).

    Columns: the run keys, any ``label``, ``trained_exp``, ``avg_accuracy``.
    """
    require_columns(matrix, [TRAINED_EXP, EVAL_EXP, ACCURACY], "matrix")
    matrix = matrix_split(matrix, split)
    keys = run_keys(matrix) + [c for c in (ARM, "label") if c in matrix.columns]
    seen = matrix[matrix[EVAL_EXP] <= matrix[TRAINED_EXP]]
    seen = seen.drop_duplicates([*keys, TRAINED_EXP, EVAL_EXP], keep="last")
    return (seen.groupby([*keys, TRAINED_EXP], dropna=False)[ACCURACY].mean()
            .rename(AVG_ACCURACY).reset_index())


def forgetting_per_experience(matrix: pd.DataFrame, split: str = TEST) -> pd.DataFrame:
    """Per run and experience j: forgetting on ``split`` at the end of training.

    Forgetting of j is the best accuracy on j after learning it and before the last experience,
    minus the accuracy on j after the last experience (Chaudhry et al. 2018, eq. 1 of "Riemannian
    Walk"): ``max_{j <= t < T} A[t, j] - A[T, j]``. The last experience has none and is omitted.
    Columns: the run keys, any ``label``, ``eval_exp``, ``forgetting``.
    """
    require_columns(matrix, [TRAINED_EXP, EVAL_EXP, ACCURACY], "matrix")
    matrix = matrix_split(matrix, split)
    keys = run_keys(matrix) + [c for c in (ARM, "label") if c in matrix.columns]
    rows = matrix.drop_duplicates([*keys, TRAINED_EXP, EVAL_EXP], keep="last")
    last = rows.groupby(keys, dropna=False)[TRAINED_EXP].transform("max")
    final = rows[rows[TRAINED_EXP] == last][[*keys, EVAL_EXP, ACCURACY]]
    past = rows[(rows[TRAINED_EXP] >= rows[EVAL_EXP]) & (rows[TRAINED_EXP] < last)]
    best = past.groupby([*keys, EVAL_EXP], dropna=False)[ACCURACY].max().rename("best")
    merged = final.merge(best.reset_index(), on=[*keys, EVAL_EXP], how="inner")
    merged["forgetting"] = merged["best"] - merged[ACCURACY]
    return merged[[*keys, EVAL_EXP, "forgetting"]].reset_index(drop=True)


def pareto_front(frame: pd.DataFrame, cost: str, metric: str = DEFAULT_METRIC,
                 mode: str = "max") -> pd.Series:
    """Which rows are Pareto-optimal: no other row has lower-or-equal cost and a better-or-equal
    metric (``mode="max"``: higher is better) with at least one of the two strictly better.

    Rows where either value is missing are never on the front. Returns a boolean Series aligned
    with ``frame``.
    """
    check_mode(mode)
    require_columns(frame, [cost, metric], "trials")
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


def mean_intervals(frame: pd.DataFrame, by: str | list[str], column: str,
                   confidence: float = INTERVAL_CONFIDENCE) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``column`` over the group's rows (one per seed) and its
    Student-t confidence interval, as :func:`raycl.study.stats.interval` computes it.

    Returns one row per group (sorted by ``by``, missing keys kept), indexed by ``by``, with
    columns ``n`` (non-missing values), ``mean``, ``std`` (sample, ``ddof=1``), ``low`` and
    ``high`` (NaN when ``n < 2``: one seed says nothing about its spread).
    """
    # scipy (behind raycl.study.stats) is imported when an interval is computed.
    from raycl.study.stats import interval

    keys = [by] if isinstance(by, str) else list(by)
    require_columns(frame, [*keys, column], "frame")
    rows = []
    index = []
    for key, values in frame.groupby(keys, sort=True, dropna=False)[column]:
        ci = interval(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float),
                      confidence, "t")
        index.append(key[0] if len(keys) == 1 else key)
        rows.append({"n": ci.n, "mean": ci.mean, "std": ci.std, "low": ci.low,
                     "high": ci.high})
    if len(keys) == 1:
        result_index = pd.Index(index, name=keys[0])
    elif index:
        result_index = pd.MultiIndex.from_tuples(index, names=keys)
    else:
        result_index = pd.MultiIndex.from_arrays([[] for _ in keys], names=keys)
    result = pd.DataFrame(rows, index=result_index,
                          columns=["n", "mean", "std", "low", "high"])
    return result.astype({"n": int, "mean": float, "std": float, "low": float,
                          "high": float})


def matched_params(trials: pd.DataFrame, max_values: int = 8) -> list[str]:
    """The ``param_<name>`` columns that set arms side by side: each arm that has the parameter
    holds it constant (one value over all its trials), at least two arms have it, and it takes
    between 2 and ``max_values`` distinct values across arms.

    Such a parameter is part of what an arm *is* rather than what it searches, e.g. the memory
    of ``gem_m16``/``agem_m16``/``gem_m32``...: arms with the same value compare at a matched
    budget. Arms are told apart by study too when several are mixed.
    """
    if ARM not in trials.columns or trials.empty:
        return []
    with_study = STUDY in trials.columns and trials[STUDY].nunique(dropna=True) > 1
    keys = _arm_keys(trials, with_study)
    found = []
    for column in param_columns(trials):
        values = trials[column]
        present = values.notna()
        per_arm = values[present].astype(str).groupby(keys[present]).nunique()
        if len(per_arm) < 2 or (per_arm != 1).any():
            continue
        distinct = values[present].astype(str).nunique()
        if 2 <= distinct <= max_values:
            found.append(column)
    return found


def per_trial_memory(trials: pd.DataFrame) -> pd.Series:
    """``peak_memory_mb`` where it is the trial's own peak, NaN elsewhere (aligned with
    ``trials``).

    On CUDA the column is ``torch.cuda.max_memory_allocated``, reset when the trial starts: the
    trial's own peak. On CPU it is the peak resident set size (``ru_maxrss``) of the worker
    process, which keeps the highest value since the process started; a Ray worker runs several
    trials in turn, so the figure grows with the trials that ran before in the same process
    (over the search trials of one run of the default study: correlation 0.95 with the order
    they started in), not with
    what the trial needed: those rows, and rows whose device is not recorded, are NaN.
    """
    if PEAK_MEMORY_MB not in trials.columns:
        return pd.Series(np.nan, index=trials.index, dtype=float, name=PEAK_MEMORY_MB)
    values = pd.to_numeric(trials[PEAK_MEMORY_MB], errors="coerce").astype(float)
    if _DEVICE not in trials.columns:
        return values.where(False)
    on_cuda = trials[_DEVICE].astype(str).str.lower().str.startswith(_CUDA)
    return values.where(on_cuda)
