"""Figures of a study's results; every function returns a :class:`matplotlib.figure.Figure`.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: nothing global is
touched, any backend (Agg for the report, inline in Jupyter) renders them, and a figure returned
as a notebook cell's value is shown once. matplotlib is imported inside the functions so that
``import raycl.analysis`` stays light.

Shared rules: arms keep one colour everywhere (:func:`raycl.analysis.colors.arm_colors`); only
completed TERMINATED trials are drawn and the subtitle says how many were left out; curves,
heatmaps and forgetting show each arm's best config (by ``metric``/``mode``) over its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycl.analysis.colors import arm_colors
from raycl.analysis.tables import (
    PARAM_PREFIX,
    accuracy_matrix,
    arm_labels,
    average_accuracy_per_experience,
    best_trials,
    completed_trials,
    config_table,
    forgetting_per_experience,
    mean_accuracy_matrix,
    param_columns,
    pareto_front,
    select_runs,
    summary,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_METRIC_NAMES: dict[str, str] = {
    "final_avg_accuracy": "final average accuracy",
    "avg_forgetting": "average forgetting",
    "bwt": "backward transfer (BWT)",
    "fwt": "forward transfer (FWT)",
    "accuracy": "accuracy",
    "avg_accuracy": "average accuracy",
    "train_time_s": "training time (s)",
    "peak_memory_mb": "peak memory (MB)",
}
# Metrics measured in accuracy units, labelled "(0-1)" or "(%)" by the scale of their values.
_ACCURACY_LIKE = ("accuracy", "forgetting", "bwt", "fwt")
_COST_COLUMNS: dict[str, str] = {"train_time_s": "training time (s)",
                                 "peak_memory_mb": "peak memory (MB)"}


# --------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=100)


def accuracy_is_percent(values: Iterable[float]) -> bool:
    """Whether accuracy-like values are in percent (any value above 1.5) rather than 0-1."""
    array = np.asarray(list(values), dtype=float)
    array = array[np.isfinite(array)]
    return bool(array.size) and bool(np.abs(array).max() > 1.5)


def _unit(values: Iterable[float]) -> str:
    return "%" if accuracy_is_percent(values) else "0–1"


def metric_label(metric: str, values: Iterable[float] = ()) -> str:
    """A readable axis label for a metric column, with its unit (``(0–1)``, ``(%)``, s, MB)."""
    name = _METRIC_NAMES.get(metric, metric.replace("_", " "))
    if any(word in metric for word in _ACCURACY_LIKE) and "(" not in name:
        return f"{name} ({_unit(values)})"
    if any(word in metric for word in _ACCURACY_LIKE):
        return f"{name[:-1]}, {_unit(values)})"
    return name


def infer_log_scale(values: Iterable[Any]) -> bool:
    """Whether a searched parameter reads better on a log axis, judged from its values alone.

    True when the values are positive numbers spanning more than two decades, or spanning at least
    one decade with a median that sits mid-range on a log axis rather than on a linear one (what
    a log-uniform or geometric grid space produces).
    """
    series = pd.Series(list(values))
    if series.empty or not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(
            series):
        return False
    array = series.dropna().to_numpy(dtype=float)
    distinct = np.unique(array)
    if distinct.size < 2 or distinct.min() <= 0:
        return False
    low, high = distinct.min(), distinct.max()
    ratio = high / low
    if ratio > 100:
        return True
    if ratio < 10 or distinct.size < 3:
        return False
    median = float(np.median(array))
    linear_position = (median - low) / (high - low)
    log_position = (math.log10(median) - math.log10(low)) / math.log10(ratio)
    return abs(log_position - 0.5) < abs(linear_position - 0.5)


def _is_categorical(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _ordered_labels(trials: pd.DataFrame, metric: str, mode: str) -> list[str]:
    """Arm labels in summary order (best first), then arms without any result."""
    table = summary(trials, metric, mode)
    labels = arm_labels(table)
    return list(dict.fromkeys(labels.tolist()))


def _exclusion_note(trials: pd.DataFrame, metric: str) -> str:
    done = completed_trials(trials, metric)
    errored = int((trials["status"] == "ERROR").sum())
    other = len(trials) - len(done) - errored
    parts = []
    if errored:
        parts.append(f"{errored} errored trial{'s' * (errored != 1)}")
    if other:
        parts.append(f"{other} incomplete trial{'s' * (other != 1)}")
    return f"excluded: {' and '.join(parts)}" if parts else ""


def _max_seeds(best: pd.DataFrame) -> int:
    """The largest number of seeds behind one arm's best config (rows of best_trials)."""
    return int(best.groupby("label").size().max()) if len(best) else 0


def _suptitle(fig: Figure, title: str, note: str = "") -> None:
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=12)


def _colors_for(trials: pd.DataFrame) -> dict[str, str]:
    return arm_colors(arm_labels(trials).unique())


def _figure_and_axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new ``width`` x ``height`` figure with one axes."""
    if ax is None:
        fig = _new_figure(width, height)
        return fig, fig.add_subplot()
    return _figure_of(ax), ax


def _figure_of(ax: Axes) -> Figure:
    """The top-level figure an axes is drawn in (also through subfigures)."""
    from matplotlib.figure import Figure

    figure: Any = ax.figure
    while figure is not None and not isinstance(figure, Figure):
        figure = figure.figure  # a SubFigure's parent chain ends at the Figure
    if figure is None:
        raise ValueError("the axes belong to no figure")
    return figure


def _in_order(handles: dict[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """Legend entries with the arms first, in ``order``, then everything else as added."""
    first = {label: handles[label] for label in order if label in handles}
    return first | {key: value for key, value in handles.items() if key not in first}


def _integer_ticks(ax: Axes, values: Sequence[int]) -> None:
    ax.set_xticks(list(values))


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_heatmap(ax: Axes, table: pd.DataFrame, title: str, annotate: bool = True) -> Any:
    percent = accuracy_is_percent(table.to_numpy().ravel())
    vmax = 100.0 if percent else 1.0
    image = ax.imshow(table.to_numpy(dtype=float), vmin=0.0, vmax=vmax, cmap="viridis",
                      aspect="equal")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel("evaluated experience")
    ax.set_ylabel("trained up to experience")
    ax.set_title(title, fontsize=10)
    if annotate and max(table.shape) <= 12:
        size = 9 if max(table.shape) <= 6 else 7
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                value = table.iat[i, j]
                if not np.isfinite(value):
                    continue
                # viridis is dark at the bottom: white text there, black on the yellow end.
                color = "white" if value < 0.6 * vmax else "black"
                text = f"{value:.0f}" if percent else f"{value:.2f}"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size)
    return image


# --------------------------------------------------------------------------- figures


def plot_accuracy_matrix(matrix: pd.DataFrame, trial_id: str, seed: int | None = None,
                         ax: Axes | None = None, title: str | None = None) -> Figure:
    """Annotated heatmap of one run's accuracy matrix (rows: trained up to; columns: evaluated)."""
    table = accuracy_matrix(matrix, trial_id, seed=seed)
    fig, ax = _figure_and_axes(ax, 1.0 + 0.75 * table.shape[1], 0.9 + 0.7 * table.shape[0])
    if title is None:
        rows = matrix[matrix["trial_id"].astype(str) == str(trial_id)]
        arm = f"{rows['arm'].iloc[0]}, " if "arm" in rows.columns and len(rows) else ""
        title = f"Accuracy matrix ({arm}trial {trial_id}" + (
            f", seed {seed})" if seed is not None else ")")
    image = _draw_heatmap(ax, table, title)
    fig.colorbar(image, ax=ax, label=f"accuracy ({_unit(table.to_numpy().ravel())})",
                 shrink=0.9)
    return fig


def plot_accuracy_matrices(trials: pd.DataFrame, matrix: pd.DataFrame,
                           metric: str = "final_avg_accuracy", mode: str = "max") -> Figure:
    """One annotated accuracy-matrix heatmap per arm: its best config, averaged over seeds."""
    best = best_trials(trials, metric, mode)
    labels = [lab for lab in _ordered_labels(trials, metric, mode) if lab in set(best["label"])]
    n = max(len(labels), 1)
    # Four heatmaps side by side stay readable up to ~6 experiences; beyond that, two per row.
    ncols = min(n, 4 if int(matrix["eval_exp"].nunique() if len(matrix) else 1) <= 6 else 2)
    nrows = math.ceil(n / ncols)
    n_exp = int(matrix["eval_exp"].nunique()) if len(matrix) else 1
    side = max(2.6, 0.55 * n_exp + 0.9)
    fig = _new_figure(side * ncols + 1.0, side * nrows + 0.9)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for index, ax in enumerate(axes.ravel()):
        if index >= len(labels):
            ax.set_visible(index > 0 or bool(labels))
            if not labels:
                _empty(ax, "no completed trial")
                ax.set_visible(True)
            continue
        label = labels[index]
        runs = best[best["label"] == label]
        table = mean_accuracy_matrix(matrix, runs)
        if table.empty:
            _empty(ax, f"{label}: no matrix rows")
            continue
        seeds = len(runs)
        image = _draw_heatmap(ax, table, f"{label}\n(mean of {seeds} seed{'s' * (seeds > 1)})")
        ax.title.set_color(arm_colors(labels)[label])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                     label=f"accuracy ({_unit(matrix['accuracy'])})")
    _suptitle(fig, f"Accuracy matrices of each arm's best config (by {metric})",
              _exclusion_note(trials, metric))
    return fig


def plot_avg_accuracy_curves(trials: pd.DataFrame, matrix: pd.DataFrame,
                             metric: str = "final_avg_accuracy", mode: str = "max",
                             ax: Axes | None = None) -> Figure:
    """Average accuracy on the experiences seen so far, after each experience, per arm.

    One line per arm (its best config): the mean over seeds, with a band of ±1 standard deviation
    when there are several seeds.
    """
    best = best_trials(trials, metric, mode)
    curves = average_accuracy_per_experience(select_runs(matrix, best))
    fig, ax = _figure_and_axes(ax, 7.5, 4.8)
    colors = _colors_for(trials)
    percent = accuracy_is_percent(curves["avg_accuracy"]) if len(curves) else False
    for label in _ordered_labels(trials, metric, mode):
        rows = curves[curves["label"] == label]
        if rows.empty:
            continue
        stats = rows.groupby("trained_exp")["avg_accuracy"].agg(["mean", "std", "count"])
        n_seeds = int(stats["count"].max())
        x = stats.index.to_numpy()
        ax.plot(x, stats["mean"], marker="o", color=colors[label], linewidth=2,
                label=f"{label} ({n_seeds} seed{'s' * (n_seeds > 1)})")
        if n_seeds > 1:
            spread = stats["std"].fillna(0.0)
            ax.fill_between(x, stats["mean"] - spread, stats["mean"] + spread,
                            color=colors[label], alpha=0.2, linewidth=0)
    if curves.empty:
        _empty(ax, "no completed trial with an accuracy matrix")
    else:
        _integer_ticks(ax, sorted(curves["trained_exp"].unique()))
        ax.set_ylim(0, 105 if percent else 1.05)
        ax.legend(title="arm (best config)", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=9)
        ax.grid(alpha=0.3)
    ax.set_xlabel("last trained experience")
    ax.set_ylabel(f"average accuracy on seen experiences ({'%' if percent else '0–1'})")
    note = _exclusion_note(trials, metric)
    spread = ("band: ±1 std over seeds" if _max_seeds(best) > 1
              else "one seed per arm: no spread shown")
    ax.set_title("Average accuracy after each experience\n"
                 f"best config per arm by {metric}; {spread}"
                 + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def plot_forgetting(trials: pd.DataFrame, matrix: pd.DataFrame,
                    metric: str = "final_avg_accuracy", mode: str = "max",
                    ax: Axes | None = None) -> Figure:
    """Forgetting of each experience at the end of training, per arm (grouped bars).

    Forgetting of experience j: its best accuracy after learning it minus its final accuracy. Bars
    show the mean over the best config's seeds, error bars ±1 std; the last group is the mean over
    experiences (the trial's average forgetting).
    """
    best = best_trials(trials, metric, mode)
    table = forgetting_per_experience(select_runs(matrix, best))
    fig, ax = _figure_and_axes(ax, 8.0, 4.8)
    colors = _colors_for(trials)
    labels = [lab for lab in _ordered_labels(trials, metric, mode)
              if lab in set(table.get("label", pd.Series(dtype=str)))]
    if table.empty or not labels:
        _empty(ax, "no forgetting to show (fewer than two experiences?)")
    else:
        keys = [c for c in ("study", "trial_id", "trial_key", "seed") if c in table.columns]
        per_run_mean = (table.groupby([*keys, "label"], dropna=False)["forgetting"].mean()
                        .reset_index().assign(eval_exp="mean"))
        full = pd.concat([table.assign(eval_exp=table["eval_exp"].astype(int).astype(str)),
                          per_run_mean], ignore_index=True)
        groups = [str(e) for e in sorted(table["eval_exp"].unique())] + ["mean"]
        width = 0.8 / len(labels)
        for k, label in enumerate(labels):
            stats = (full[full["label"] == label].groupby("eval_exp")["forgetting"]
                     .agg(["mean", "std"]).reindex(groups))
            positions = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
            # One seed has no spread: no error bar rather than a misleading zero-length one.
            spread = stats["std"] if stats["std"].notna().any() else None
            ax.bar(positions, stats["mean"], width=width * 0.95, color=colors[label],
                   yerr=spread, capsize=2, label=label,
                   error_kw={"elinewidth": 0.8, "alpha": 0.7})
        ax.set_xticks(range(len(groups)), groups)
        ax.axvline(len(groups) - 1.5, color="0.6", linewidth=0.8, linestyle=":")
        ax.axhline(0.0, color="black", linewidth=0.8)
        # Outside the axes: tall bars would hide behind a legend anywhere inside.
        ax.legend(title="arm (best config)", fontsize=9, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
    ax.set_xlabel("experience (forgetting measured after the last one)")
    unit = _unit(matrix["accuracy"]) if len(matrix) else "0–1"
    ax.set_ylabel(f"forgetting: best past − final accuracy ({unit})")
    note = _exclusion_note(trials, metric)
    spread = ("error bars: ±1 std over seeds" if _max_seeds(best) > 1
              else "one seed per arm: no spread shown")
    ax.set_title("Forgetting per experience at the end of training\n"
                 f"best config per arm by {metric}; {spread}"
                 + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def plot_sensitivity(trials: pd.DataFrame, metric: str = "final_avg_accuracy",
                     mode: str = "max", params: Sequence[str] | None = None) -> Figure:
    """The metric against each searched parameter, one panel per parameter, arms by colour.

    Faint dots are single trials; large markers are configs (mean over seeds, ±1 std); a star marks
    each arm's best config. Arms that search nothing (a naive baseline) appear as a dashed line at
    their mean. The x-axis is logarithmic where :func:`infer_log_scale` says so.
    """
    done = completed_trials(trials, metric).copy()
    done["label"] = arm_labels(trials).loc[done.index]
    columns = [c if c.startswith(PARAM_PREFIX) else PARAM_PREFIX + c for c in params] if params \
        else param_columns(done)
    colors = _colors_for(trials)
    order = _ordered_labels(trials, metric, mode)
    configs = config_table(trials, metric)
    configs["label"] = arm_labels(configs)
    table = summary(trials, metric, mode)
    table["label"] = arm_labels(table)
    ncols = min(max(len(columns), 1), 3)
    nrows = max(math.ceil(len(columns) / ncols), 1)
    fig = _new_figure(4.6 * ncols + 0.4, 3.8 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    values = done[metric]
    handles: dict[str, Any] = {}
    # Baselines: arms that set none of the searched parameters.
    baselines = [lab for lab in order if lab in set(done["label"]) and not any(
        done.loc[done["label"] == lab, c].notna().any() for c in param_columns(done))]
    for ax, column in zip(axes, columns, strict=False):
        name = column[len(PARAM_PREFIX):]
        present = done[done[column].notna()] if column in done.columns else done.iloc[:0]
        if present.empty:
            _empty(ax, f"{name}: no completed trial")
            ax.set_title(name)
            continue
        categorical = _is_categorical(present[column])
        categories = sorted(present[column].astype(str).unique()) if categorical else []
        position = {c: i for i, c in enumerate(categories)}

        def to_x(series: pd.Series, position: dict[str, int] = position) -> np.ndarray:
            # Categorical values sit at 0, 1, ... in sorted order; numbers stay numbers.
            if position:
                return series.astype(str).map(position).to_numpy(dtype=float)
            return series.to_numpy(dtype=float)
        for label in order:
            rows = present[present["label"] == label]
            if rows.empty:
                continue
            color = colors[label]
            jitter = 0.0
            if categorical:  # spread arms sideways so they do not hide each other
                jitter = 0.12 * (order.index(label) - (len(order) - 1) / 2)
            ax.scatter(to_x(rows[column]) + jitter, rows[metric], s=14, color=color, alpha=0.35,
                       linewidths=0)
            arm_configs = configs[(configs["label"] == label) & configs[column].notna()] \
                if column in configs.columns else configs.iloc[:0]
            handle = ax.errorbar(to_x(arm_configs[column]) + jitter, arm_configs["mean"],
                                 yerr=arm_configs["std"].fillna(0.0), fmt="o", color=color,
                                 markersize=6, capsize=2, elinewidth=0.8, label=label)
            handles.setdefault(label, handle)
            best = table[table["label"] == label]["best_config"].iloc[0]
            if best and name in best:
                best_x = to_x(pd.Series([best[name]]))[0] + jitter
                best_y = table[table["label"] == label]["mean"].iloc[0]
                ax.scatter([best_x], [best_y], marker="*", s=220, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5)
        for label in baselines:
            mean = done.loc[done["label"] == label, metric].mean()
            line = ax.axhline(mean, color=colors[label], linestyle="--", linewidth=1.5)
            handles.setdefault(f"{label} (no parameters)", line)
        if categorical:
            ax.set_xticks(range(len(categories)), categories)
        elif infer_log_scale(present[column]):
            ax.set_xscale("log")
            # Under a few decades matplotlib labels every minor tick in 2x10^-1 style, and the
            # labels overlap: label 1-2-5 ticks in plain numbers instead.
            from matplotlib.ticker import FuncFormatter, LogLocator

            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(plain)
            ax.xaxis.set_major_formatter(plain)
        ax.set_xlabel(name + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel(metric_label(metric, values))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes[len(columns):]:
        ax.set_visible(False)
    if not columns:
        axes[0].set_visible(True)
        _empty(axes[0], "no searched parameter in this study")
    if handles:
        from matplotlib.lines import Line2D

        # The star in the legend is neutral: its colour in a panel is the arm's.
        handles = _in_order(handles, order)
        handles["best config of each arm"] = Line2D(
            [], [], marker="*", markersize=13, linestyle="none", markerfacecolor="white",
            markeredgecolor="black")
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 6), fontsize=9)
    _suptitle(fig, f"Sensitivity of {metric} to each searched parameter",
              ("dots: trials; circles: configs (mean ± std over seeds)"
               if configs["n_seeds"].max() > 1 else "one point per config (one seed each)")
              + (f"; {note}" if (note := _exclusion_note(trials, metric)) else ""))
    return fig


def plot_cost(trials: pd.DataFrame, metric: str = "final_avg_accuracy",
              mode: str = "max") -> Figure:
    """The metric against training time and against peak memory, Pareto front marked.

    One dot per completed trial, coloured by arm. Outlined dots joined by a black step line are
    the Pareto front: no other trial is both cheaper and at least as good. A cost the study did
    not record (e.g. ``peak_memory_mb`` on CPU) gets no panel; the subtitle says so.
    """
    done = completed_trials(trials, metric).copy()
    done["label"] = arm_labels(trials).loc[done.index]
    colors = _colors_for(trials)
    order = _ordered_labels(trials, metric, mode)
    recorded = {c: lab for c, lab in _COST_COLUMNS.items()
                if c in done.columns and done[c].notna().any()}
    missing = [lab for c, lab in _COST_COLUMNS.items() if c not in recorded]
    fig = _new_figure(5.6 * max(len(recorded), 1) + 0.4, 4.9)
    axes = fig.subplots(1, max(len(recorded), 1), squeeze=False).ravel()
    if not recorded:
        _empty(axes[0], "no cost column recorded by this study")
    handles: dict[str, Any] = {}
    for ax, (cost, cost_label) in zip(axes, recorded.items(), strict=False):
        points = done[done[cost].notna()]
        for label in order:
            rows = points[points["label"] == label]
            if rows.empty:
                continue
            handle = ax.scatter(rows[cost], rows[metric], s=30, color=colors[label], alpha=0.8,
                                linewidths=0)
            handles.setdefault(label, handle)
        front = points[pareto_front(points, cost, metric, mode)].sort_values(cost)
        line = ax.plot(front[cost], front[metric], color="black", linewidth=1.2,
                       drawstyle="steps-post", zorder=3)[0]
        ax.scatter(front[cost], front[metric], s=70, facecolors="none", edgecolors="black",
                   linewidths=1.4, zorder=4)
        handles.setdefault("Pareto front", line)
        if infer_log_scale(points[cost]) and points[cost].max() / points[cost].min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(metric_label(metric, done[metric]))
        ax.set_title(f"{_METRIC_NAMES.get(metric, metric)} vs {cost_label}")
        ax.grid(alpha=0.3)
    if handles:
        handles = _in_order(handles, order)
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 6), fontsize=9)
    direction = "higher" if mode == "max" else "lower"
    notes = [f"{lab} not recorded by this study" for lab in missing]
    if note := _exclusion_note(trials, metric):
        notes.append(note)
    _suptitle(fig, f"Cost of each trial: {metric} ({direction} is better) vs training cost",
              "; ".join(notes))
    return fig


def study_figures(trials: pd.DataFrame, matrix: pd.DataFrame,
                  metric: str = "final_avg_accuracy", mode: str = "max") -> dict[str, Figure]:
    """Every figure of the report, by file stem: accuracy_matrices, avg_accuracy, forgetting,
    sensitivity and cost."""
    return {
        "accuracy_matrices": plot_accuracy_matrices(trials, matrix, metric, mode),
        "avg_accuracy": plot_avg_accuracy_curves(trials, matrix, metric, mode),
        "forgetting": plot_forgetting(trials, matrix, metric, mode),
        "sensitivity": plot_sensitivity(trials, metric, mode),
        "cost": plot_cost(trials, metric, mode),
    }


