"""The search of each arm on its own: parameter importance, parallel coordinates, and a map of
two parameters against each other.

:func:`raycl.analysis.plot_sensitivity` shows one parameter at a time; an arm that searches two
(online EWC: ``ewc_lambda`` and ``decay_factor``) varies the other one under every panel's
points. The views here read an arm's configs whole:

- :func:`param_importance`: how much of the metric's variation over an arm's configs each
  parameter accounts for: scikit-learn's permutation importance of a random forest fitted to the
  configs, normalised to sum to 1 per arm (what Optuna's importance plot shows, computed here
  without Optuna). An arm with one parameter gets 1 without a fit (say so, do not plot it); an
  arm with fewer than :data:`MIN_CONFIGS` configs gets none (a forest fitted to a handful of
  points ranks noise).
- :func:`plot_param_importance`, :func:`plot_parallel_coordinates` (one line per config, mean
  over seeds, coloured by the metric) and :func:`plot_param_pairs` (arms with exactly two
  searched parameters: one against the other, coloured by the metric).

All of them describe the search, so they read the metric the study *chose configs on*
(:func:`selection_metric`: the validation split under the default protocol, from
``selection.parquet`` or ``study.json``), and each figure and table says which split that is.
A config is one point of the arm's searched parameters, its value the mean of the metric over
its completed search-phase seeds. Parameters searched on a log scale (``study.json``'s
``log_scale``) are fitted and drawn in log space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycl.analysis.colors import arm_colors
from raycl.analysis.plots import (
    _empty,
    _exclusion_note,
    _has_rows,
    _is_categorical,
    _labels_like,
    _log_axis,
    _new_figure,
    _ordered_labels,
    _searched_columns,
    _settings_by_study,
    _split_of,
    _suptitle,
    arm_settings,
    metric_label,
    metric_name,
    param_log_scale,
)
from raycl.analysis.tables import (
    _same_config,
    arm_labels,
    chosen_configs,
    completed_per_phase,
    higher_is_better,
    search_trials,
)
from raycl.study.schema import (
    FINAL_AVG_ACCURACY,
    SELECTION_METRIC,
    TEST,
    VALID,
    metric_column,
    param_name,
    split_column,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["MIN_CONFIGS", "SearchConfigs", "param_importance", "plot_param_importance",
           "plot_param_pairs", "plot_parallel_coordinates", "search_configs",
           "selection_metric", "two_parameter_arms"]

#: The fewest configs of an arm that :func:`param_importance` fits a model to. Seeds of one
#: config add no information about the parameters, so configs are counted, not trials.
MIN_CONFIGS = 8

# How param_importance labels each row (the ``status`` column).
COMPUTED = "computed"
ONE_PARAMETER = "one parameter"
TOO_FEW = "too few configs"
NO_SIGNAL = "no signal"

_SPLIT_WORDS = {VALID: "validation", TEST: "test"}
# The colour map of the metric in every view here (the accuracy heatmaps use it too).
_CMAP = "viridis"


# --------------------------------------------------------------------------- which metric


def selection_metric(trials: pd.DataFrame, selection: pd.DataFrame | None = None,
                     settings: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """``(column, mode)``: the trials column the study ranked configs on, and whether higher
    (``"max"``) or lower is better.

    The column is ``selection.parquet``'s ``selection_metric`` when the study chose configs;
    else ``study.json``'s metric on the split its protocol ranks on (validation, or test for a
    study that selects on 'test'); else ``valid_final_avg_accuracy`` when the trials have it
    (the default protocol's), else the test split's. The mode is ``study.json``'s, else judged
    by the metric's name. Raises ValueError when mixed studies ranked on different columns.
    """
    by_study = _settings_by_study(settings)
    modes = {str(s.get("mode")) for s in by_study.values() if s.get("mode") in ("max", "min")}
    columns: set[str] = set()
    if _has_rows(selection) and SELECTION_METRIC in selection.columns:  # type: ignore[union-attr]
        columns = set(selection[SELECTION_METRIC].dropna().astype(str))  # type: ignore[index]
    if not columns:
        for values in by_study.values():
            if values.get("metric"):
                split = TEST if values.get("selection") == TEST else VALID
                columns.add(metric_column(str(values["metric"]), split))
    if not columns:
        valid = split_column(VALID, FINAL_AVG_ACCURACY)
        has_valid = valid in trials.columns and trials[valid].notna().any()
        columns = {valid if has_valid else split_column(TEST, FINAL_AVG_ACCURACY)}
    if len(columns) > 1:
        raise ValueError(f"the studies ranked configs on different metrics {sorted(columns)}: "
                         "pass metric= to compare them on one")
    column = columns.pop()
    mode = modes.pop() if len(modes) == 1 else ("max" if higher_is_better(column) else "min")
    return column, mode


def _split_phrase(metric: str) -> str:
    """Which data a metric is measured on, for titles: ``validation split``."""
    split = _split_of(metric)[0]
    return f"{_SPLIT_WORDS[split]} split" if split else "no split (a cost)"


def _chosen_phrase(metric: str, selection: pd.DataFrame | None,
                   settings: Mapping[str, Any] | None) -> str:
    known = (_has_rows(selection) and SELECTION_METRIC in selection.columns  # type: ignore[union-attr]
             ) or any(s.get("metric") for s in _settings_by_study(settings).values())
    return ("the metric the study chose configs on" if known
            else "no selection.parquet or study.json: the validation metric when recorded")


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SearchConfigs:
    """One arm's search as configs: what the views here draw.

    ``configs`` has one row per config: its ``param_<name>`` columns (``params``), ``value``
    (the mean of ``metric`` over its completed search seeds) and ``n`` (those seeds); ``log``
    holds the parameters drawn and fitted in log space, ``chosen`` the row index of the config
    the study chose (or the best by ``metric``; None when there is none).
    """

    label: str
    params: tuple[str, ...]
    log: frozenset[str]
    configs: pd.DataFrame
    n_trials: int
    chosen: int | None


def search_configs(trials: pd.DataFrame, metric: str, mode: str = "max",
                   selection: pd.DataFrame | None = None,
                   settings: Mapping[str, Any] | None = None) -> dict[str, SearchConfigs]:
    """Each searching arm's configs (by arm label, best arm first): its completed search-phase
    trials grouped by the parameters it searches (declared in ``study.json``, or varying over
    its trials), the mean of ``metric`` over each config's seeds. Arms that search nothing (a
    baseline) are left out."""
    trials = trials.reset_index(drop=True)
    search = search_trials(trials)
    done = completed_per_phase(search, metric)
    labels = arm_labels(trials)
    spaces = arm_settings(trials, settings)
    chosen_by_label: dict[str, dict[str, Any]] = {}
    if _has_rows(selection):
        assert selection is not None
        # chosen_configs keeps the selection's row order: its keys line up with the labels.
        chosen_by_label = dict(zip(_labels_like(trials, selection),
                                   chosen_configs(selection).values(), strict=True))
    result: dict[str, SearchConfigs] = {}
    for label in _ordered_labels(trials, metric, mode, selection):
        rows = done[labels.loc[done.index] == label]
        params = _searched_columns(search[labels.loc[search.index] == label],
                                   spaces.get(label), None)
        params = [p for p in params if p in rows.columns and rows[p].notna().any()]
        if not params or rows.empty:
            continue
        configs = (rows.groupby(params, dropna=False, sort=True)[metric]
                   .agg(value="mean", n="count").reset_index())
        configs = configs[configs["n"] > 0].reset_index(drop=True)
        log = frozenset(p for p in params if not _is_categorical(configs[p]) and
                        param_log_scale(param_name(p), configs[p], spaces.get(label)))
        best: int | None = None
        if label in chosen_by_label and chosen_by_label[label]:
            match = np.flatnonzero(_same_config(configs, chosen_by_label[label], params))
            best = int(match[0]) if match.size else None
        elif len(configs) and configs["value"].notna().any():
            best = int(configs["value"].idxmax() if mode == "max" else configs["value"].idxmin())
        result[label] = SearchConfigs(label, tuple(params), log, configs, len(rows), best)
    return result


def two_parameter_arms(trials: pd.DataFrame, settings: Mapping[str, Any] | None = None,
                       metric: str | None = None) -> list[str]:
    """The labels of the arms that search exactly two parameters (what
    :func:`plot_param_pairs` draws)."""
    column = metric or selection_metric(trials, None, settings)[0]
    return [label for label, arm in search_configs(trials, column, settings=settings).items()
            if len(arm.params) == 2]


def _axis_values(arm: SearchConfigs, column: str) -> np.ndarray:
    """A parameter's values as numbers: log10 where searched on a log scale, category codes (in
    sorted order) for a choice of strings or booleans."""
    values = arm.configs[column]
    if _is_categorical(values):
        categories = sorted(values.astype(str).unique())
        return values.astype(str).map({c: i for i, c in enumerate(categories)}).to_numpy(
            dtype=float)
    array = values.to_numpy(dtype=float)
    return np.log10(array) if column in arm.log else array


# --------------------------------------------------------------------------- importance


def param_importance(trials: pd.DataFrame, selection: pd.DataFrame | None = None,
                     settings: Mapping[str, Any] | None = None, metric: str | None = None,
                     mode: str | None = None, min_configs: int = MIN_CONFIGS,
                     n_repeats: int = 10, random_state: int = 0,
                     configs: Mapping[str, SearchConfigs] | None = None) -> pd.DataFrame:
    """Per searching arm and parameter: the share of the metric's variation over the arm's
    configs the parameter accounts for.

    ``metric`` defaults to the one the study chose configs on (:func:`selection_metric`: the
    validation split under the default protocol). For an arm with two or more parameters and at
    least ``min_configs`` configs, a random forest (scikit-learn) is fitted to the configs
    (parameters in log space where searched on a log scale, the mean metric over seeds as the
    target); a parameter's importance is its permutation importance (the drop in the fit's R²
    when its values are shuffled, ``n_repeats`` times), clipped at 0 and divided by the arm's
    total so that an arm's importances sum to 1. In-sample, as Optuna's evaluators compute it:
    it says what the forest uses, not what predicts unseen configs.

    Returns one row per (arm, parameter): ``arm`` (the arm label), ``parameter``,
    ``importance`` and ``importance_std`` (over the repeats, same scale; NaN when not
    computed), ``status`` (``computed``; ``one parameter``: importance 1 by definition, no fit;
    ``too few configs``: fewer than ``min_configs``, NaN; ``no signal``: no shuffle changed the
    fit, NaN), ``n_configs``, ``n_trials``, ``metric`` and ``split``. ``attrs`` hold
    ``metric``, ``split`` and ``min_configs``. ``configs`` reuses a :func:`search_configs`
    result for the same metric.
    """
    column, chosen_mode = selection_metric(trials, selection, settings)
    if metric is not None:
        column, chosen_mode = metric, ("max" if higher_is_better(metric) else "min")
    mode = mode or chosen_mode
    split = _split_of(column)[0] or ""
    rows = []
    if configs is None:
        configs = search_configs(trials, column, mode, selection, settings)
    for label, arm in configs.items():
        known = arm.configs[arm.configs["value"].notna()].reset_index(drop=True)
        base = {"arm": label, "n_configs": len(known), "n_trials": arm.n_trials,
                "metric": column, "split": split}
        if len(arm.params) == 1:
            rows.append({**base, "parameter": param_name(arm.params[0]), "importance": 1.0,
                         "importance_std": 0.0, "status": ONE_PARAMETER})
            continue
        scores = (_permutation_importance(arm, known, n_repeats, random_state)
                  if len(known) >= min_configs else None)
        for k, param in enumerate(arm.params):
            if scores is None:
                status, value, std = TOO_FEW, math.nan, math.nan
            elif not np.isfinite(scores[0][k]):
                status, value, std = NO_SIGNAL, math.nan, math.nan
            else:
                status, value, std = COMPUTED, float(scores[0][k]), float(scores[1][k])
            rows.append({**base, "parameter": param_name(param), "importance": value,
                         "importance_std": std, "status": status})
    table = pd.DataFrame(rows, columns=["arm", "parameter", "importance", "importance_std",
                                        "status", "n_configs", "n_trials", "metric", "split"])
    table.attrs.update(metric=column, split=split, min_configs=min_configs)
    return table


def _permutation_importance(arm: SearchConfigs, configs: pd.DataFrame, n_repeats: int,
                            random_state: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised permutation importances (mean, std) of the arm's parameters; NaN when no
    shuffle changed the fit (a metric constant over the configs)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    view = SearchConfigs(arm.label, arm.params, arm.log, configs, arm.n_trials, None)
    x = np.column_stack([_axis_values(view, p) for p in arm.params])
    y = configs["value"].to_numpy(dtype=float)
    nan = np.full(len(arm.params), math.nan)
    if np.ptp(y) == 0:
        return nan, nan
    # Deep trees on a few dozen configs: the forest's averaging is the only smoothing, as in
    # Optuna's fANOVA and mean-decrease-impurity evaluators (64 trees there too).
    forest = RandomForestRegressor(n_estimators=64, random_state=random_state, n_jobs=1)
    forest.fit(x, y)
    found = permutation_importance(forest, x, y, n_repeats=n_repeats,
                                   random_state=random_state, n_jobs=1)
    mean = np.clip(found.importances_mean, 0.0, None)
    total = mean.sum()
    if total <= 0:
        return nan, nan
    return mean / total, found.importances_std / total


# --------------------------------------------------------------------------- figures


def _status_lines(table: pd.DataFrame, min_configs: int) -> list[str]:
    """One line per arm whose importance is not drawn, saying why."""
    lines = []
    for label, rows in table.groupby("arm", sort=False):
        status = rows["status"].iloc[0]
        if status == ONE_PARAMETER:
            lines.append(f"{label}: one parameter ({rows['parameter'].iloc[0]}): its importance "
                         "is 1 by definition")
        elif status == TOO_FEW:
            lines.append(f"{label}: {int(rows['n_configs'].iloc[0])} configs, fewer than "
                         f"{min_configs}: too few to rank its parameters")
        elif status == NO_SIGNAL:
            lines.append(f"{label}: the metric does not change over its configs")
    return lines


def plot_param_importance(trials: pd.DataFrame, selection: pd.DataFrame | None = None,
                          settings: Mapping[str, Any] | None = None, metric: str | None = None,
                          mode: str | None = None, min_configs: int = MIN_CONFIGS,
                          importance: pd.DataFrame | None = None) -> Figure:
    """A horizontal bar chart of :func:`param_importance` per arm that has one (bars in the
    arm's colour, error bars: the std over the shuffles), the title naming the metric and its
    split; arms with one parameter or too few configs are listed under the title with the
    reason, not drawn. ``importance`` reuses a table already computed."""
    table = importance if importance is not None else param_importance(
        trials, selection, settings, metric, mode, min_configs)
    min_configs = int(table.attrs.get("min_configs", min_configs))
    column = table.attrs.get("metric") or selection_metric(trials, selection, settings)[0]
    drawn = table[table["status"] == COMPUTED]
    labels = list(dict.fromkeys(drawn["arm"]))
    colors = arm_colors(arm_labels(trials).unique())
    ncols = min(max(len(labels), 1), 3)
    nrows = max(math.ceil(len(labels) / ncols), 1)
    most = max((int((drawn["arm"] == lab).sum()) for lab in labels), default=1)
    fig = _new_figure(max(4.2 * ncols + 0.6, 8.0), (0.45 * most + 1.6) * nrows + 1.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, label in zip(axes.ravel(), labels, strict=False):
        rows = drawn[drawn["arm"] == label].sort_values("importance")
        ax.barh(rows["parameter"], rows["importance"], xerr=rows["importance_std"],
                color=colors.get(label, "0.5"), capsize=3, error_kw={"elinewidth": 0.8})
        # Wide enough for the error bars too: an importance near 1 can have a wide spread.
        ax.set_xlim(0, max(1.05, float((rows["importance"] + rows["importance_std"]).max())
                           * 1.03))
        ax.set_xlabel("importance (share of the arm's total)")
        ax.set_title(f"{label} ({int(rows['n_configs'].iloc[0])} configs)",
                     color=colors.get(label, "black"))
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(labels):]:
        ax.set_visible(False)
    if not labels:
        axes[0, 0].set_visible(True)
        _empty(axes[0, 0], "no arm with two or more parameters and enough configs")
    notes = [f"computed on {metric_name(column)} ({column}, {_split_phrase(column)}: "
             f"{_chosen_phrase(column, selection, settings)})",
             "permutation importance of a random forest fitted to the configs (mean over "
             "seeds), normalised per arm; log-scale parameters in log space; error bars: std "
             "over the shuffles"]
    notes += _status_lines(table, min_configs)
    _suptitle(fig, "Parameter importance per arm (search trials)", "\n".join(notes), wrap=True)
    return fig


def _metric_norm(arms: Sequence[SearchConfigs]) -> Any:
    """One colour scale over every drawn config, so that a colour means the same value in
    every panel."""
    from matplotlib.colors import Normalize

    values = pd.concat([a.configs["value"] for a in arms]) if arms else pd.Series(dtype=float)
    values = values.dropna()
    if values.empty:
        return Normalize(0.0, 1.0)
    low, high = float(values.min()), float(values.max())
    return Normalize(low, high if high > low else low + 1e-9)


def _tick_text(value: Any) -> str:
    """A parameter's value for an axis end: 3 significant digits, no exponent from 1 to 10^6
    (4610, not 4.61e+03)."""
    if isinstance(value, (float, np.floating, int, np.integer)) and not isinstance(value, bool):
        number = float(value)
        if 100 <= abs(number) < 1e6:
            return f"{number:.0f}"
        return f"{number:.3g}"
    return str(value)


def _draw_parallel(ax: Axes, arm: SearchConfigs, norm: Any, cmap: Any, mode: str,
                   metric: str) -> None:
    """One arm's parallel coordinates: an axis per parameter and one for the metric, each
    scaled to its own range, one line per config."""
    columns = list(arm.params)
    configs = arm.configs
    raw = [_axis_values(arm, p) for p in columns] + [configs["value"].to_numpy(dtype=float)]
    scaled = []
    for values in raw:
        low, high = np.nanmin(values), np.nanmax(values)
        scaled.append((values - low) / (high - low) if high > low else np.full_like(values, 0.5))
    ys = np.column_stack(scaled)
    x = np.arange(len(raw))
    # Best drawn last, on top: the lines that matter are not hidden by the others.
    order = np.argsort(configs["value"].to_numpy(dtype=float))
    if mode == "min":
        order = order[::-1]
    for i in order:
        if not np.isfinite(configs["value"].iat[i]):
            continue
        ax.plot(x, ys[i], color=cmap(norm(configs["value"].iat[i])), linewidth=1.8,
                alpha=0.9, marker="o", markersize=3)
    if arm.chosen is not None:
        ax.plot(x, ys[arm.chosen], color="black", linewidth=3.6, zorder=4, solid_capstyle="round")
        ax.plot(x, ys[arm.chosen], color=cmap(norm(configs["value"].iat[arm.chosen])),
                linewidth=2.0, zorder=5)
    # Each vertical axis is labelled with its own range (the lines are scaled per axis).
    for k, column in enumerate([*columns, None]):
        ax.axvline(k, color="0.3", linewidth=1.0, zorder=1)
        if column is not None and _is_categorical(configs[column]):
            categories = sorted(configs[column].astype(str).unique())
            spots = [(i / max(len(categories) - 1, 1), c) for i, c in enumerate(categories)]
        else:
            source = configs[column] if column is not None else configs["value"]
            low, high = source.min(), source.max()
            spots = [(0.0, _tick_text(low)), (1.0, _tick_text(high))] if high != low else [
                (0.5, _tick_text(low))]
        for y, text in spots:
            # Outside the lines' range (above the top, below the bottom) so no line hides it.
            outside = y + (0.035 if y >= 1.0 else -0.035 if y <= 0.0 else 0.0)
            ax.text(k, outside, text, fontsize=8, ha="center", color="0.1",
                    va="bottom" if y >= 1.0 else "top" if y <= 0.0 else "center",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    names = [param_name(c) + ("\n(log)" if c in arm.log else "") for c in columns]
    ax.set_xticks(x, [*names, metric_name(metric).replace(" ", "\n", 1)])
    ax.set_xlim(-0.1, len(raw) - 0.6)
    ax.set_ylim(-0.14, 1.14)
    ax.set_yticks([0, 1], ["min", "max"])
    ax.set_xlabel("each searched parameter, then the metric")


def plot_parallel_coordinates(trials: pd.DataFrame, selection: pd.DataFrame | None = None,
                              settings: Mapping[str, Any] | None = None,
                              metric: str | None = None, mode: str | None = None,
                              configs: Mapping[str, SearchConfigs] | None = None) -> Figure:
    """Parallel coordinates of each searching arm's configs: a vertical axis per searched
    parameter (log where searched on a log scale) and one for the metric, one line per config
    (mean over its seeds) coloured by the metric on one scale for every panel; the thick
    outlined line is the chosen config (the best by the metric without ``selection``).
    ``metric`` defaults to the one the study chose configs on (:func:`selection_metric`);
    ``configs`` reuses a :func:`search_configs` result for it."""
    column, chosen_mode = selection_metric(trials, selection, settings)
    if metric is not None:
        column, chosen_mode = metric, ("max" if higher_is_better(metric) else "min")
    mode = mode or chosen_mode
    if configs is None:
        configs = search_configs(trials, column, mode, selection, settings)
    arms = list(configs.values())
    colors = arm_colors(arm_labels(trials).unique())
    ncols = min(max(len(arms), 1), 3)
    nrows = max(math.ceil(len(arms) / ncols), 1)
    widest = max((len(a.params) for a in arms), default=1)
    fig = _new_figure(max((1.6 * widest + 2.2) * ncols + 1.2, 8.0), 3.9 * nrows + 1.7)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    norm = _metric_norm(arms)
    for index, (ax, arm) in enumerate(zip(axes.ravel(), arms, strict=False)):
        _draw_parallel(ax, arm, norm, cmap, mode, column)
        if index % ncols == 0:
            ax.set_ylabel("each axis scaled to its own range")
        ax.set_title(f"{arm.label} ({len(arm.configs)} configs)", color=colors.get(arm.label))
    for ax in axes.ravel()[len(arms):]:
        ax.set_visible(False)
    if not arms:
        axes[0, 0].set_visible(True)
        _empty(axes[0, 0], "no arm searches a parameter")
    else:
        from matplotlib.cm import ScalarMappable

        values = pd.concat([a.configs["value"] for a in arms])
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                     shrink=0.85, label=metric_label(column, values))
    better = "higher" if mode == "max" else "lower"
    notes = [f"colour: {column} ({_split_phrase(column)}, "
             f"{_chosen_phrase(column, selection, settings)}; {better} is better), mean over "
             "seeds; thick outlined line: "
             + ("the chosen config" if _has_rows(selection) else "the best config")]
    if note := _exclusion_note(search_trials(trials), column):
        notes.append(note)
    _suptitle(fig, "Parallel coordinates of each arm's configs (search trials)",
              "\n".join(notes), wrap=True)
    return fig


def plot_param_pairs(trials: pd.DataFrame, selection: pd.DataFrame | None = None,
                     settings: Mapping[str, Any] | None = None, metric: str | None = None,
                     mode: str | None = None,
                     configs: Mapping[str, SearchConfigs] | None = None) -> Figure:
    """For each arm that searches exactly two parameters: one against the other, a dot per
    config coloured (and labelled) by the metric's mean over its seeds, one colour scale for
    every panel; the star is the chosen config (the best without ``selection``). Axes are log
    where the parameter is searched on a log scale. ``metric`` defaults to the one the study
    chose configs on (:func:`selection_metric`); ``configs`` reuses a :func:`search_configs`
    result for it."""
    column, chosen_mode = selection_metric(trials, selection, settings)
    if metric is not None:
        column, chosen_mode = metric, ("max" if higher_is_better(metric) else "min")
    mode = mode or chosen_mode
    if configs is None:
        configs = search_configs(trials, column, mode, selection, settings)
    arms = [a for a in configs.values() if len(a.params) == 2]
    colors = arm_colors(arm_labels(trials).unique())
    ncols = min(max(len(arms), 1), 2)
    nrows = max(math.ceil(len(arms) / ncols), 1)
    fig = _new_figure(max(5.6 * ncols + 1.4, 8.0), 4.6 * nrows + 1.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    from matplotlib import colormaps

    cmap = colormaps[_CMAP]
    norm = _metric_norm(arms)
    for ax, arm in zip(axes.ravel(), arms, strict=False):
        _draw_pair(ax, arm, norm, cmap)
        ax.set_title(f"{arm.label} ({len(arm.configs)} configs)", color=colors.get(arm.label))
    for ax in axes.ravel()[len(arms):]:
        ax.set_visible(False)
    if not arms:
        axes[0, 0].set_visible(True)
        _empty(axes[0, 0], "no arm searches exactly two parameters")
    else:
        from matplotlib.cm import ScalarMappable

        values = pd.concat([a.configs["value"] for a in arms])
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                     shrink=0.85, label=metric_label(column, values))
    better = "higher" if mode == "max" else "lower"
    star = "the chosen config" if _has_rows(selection) else "the best config"
    notes = [f"colour and numbers: {column} ({_split_phrase(column)}, "
             f"{_chosen_phrase(column, selection, settings)}; {better} is better), mean over "
             f"seeds; star: {star}"]
    if note := _exclusion_note(search_trials(trials), column):
        notes.append(note)
    _suptitle(fig, "Two parameters at once: arms that search exactly two (search trials)",
              "\n".join(notes), wrap=True)
    return fig


def _draw_pair(ax: Axes, arm: SearchConfigs, norm: Any, cmap: Any) -> None:
    first, second = arm.params
    configs = arm.configs
    xy = []
    for column in (first, second):
        values = configs[column]
        if _is_categorical(values):
            categories = sorted(values.astype(str).unique())
            xy.append(values.astype(str).map({c: i for i, c in enumerate(categories)})
                      .to_numpy(dtype=float))
        else:
            xy.append(values.to_numpy(dtype=float))
    x, y = xy
    value = configs["value"].to_numpy(dtype=float)
    ax.scatter(x, y, c=value, cmap=cmap, norm=norm, s=90, edgecolors="black", linewidths=0.6,
               zorder=3)
    if arm.chosen is not None:
        ax.scatter([x[arm.chosen]], [y[arm.chosen]], marker="*", s=420, c=[value[arm.chosen]],
                   cmap=cmap, norm=norm, edgecolors="black", linewidths=1.0, zorder=4)
    if len(configs) <= 30:  # the value beside each dot, while they do not crowd each other
        for xi, yi, vi in zip(x, y, value, strict=True):
            if np.isfinite(vi):
                ax.annotate(f"{vi:.3f}", (xi, yi), textcoords="offset points", xytext=(7, 5),
                            fontsize=8, color="0.15")
    for column, axis in ((first, "x"), (second, "y")):
        values = configs[column]
        name = param_name(column)
        log = column in arm.log
        if _is_categorical(values):
            categories = sorted(values.astype(str).unique())
            getattr(ax, f"set_{axis}ticks")(range(len(categories)), categories)
        elif log:
            _log_axis(ax, values, axis)
        getattr(ax, f"set_{axis}label")(name + (" (log scale)" if log else ""))
    ax.grid(alpha=0.3)
