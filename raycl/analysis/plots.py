"""Figures of a study's results; every function returns a :class:`matplotlib.figure.Figure`.

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot: nothing global is
touched, any backend (Agg for the report, inline in Jupyter) renders them, and a figure returned
as a notebook cell's value is shown once. matplotlib is imported inside the functions so that
``import raycl.analysis`` stays light.

Shared rules: arms keep one colour everywhere (:func:`raycl.analysis.colors.arm_colors`); only
completed TERMINATED trials are drawn and the subtitle says how many were left out. Accuracy is
the test split's unless ``split="valid"`` (matrix figures) or a ``valid_*`` metric is asked for,
and every figure says which split it plots.

- Curves, heatmaps and forgetting show each arm's config over its seeds: with ``selection``
  (``StudyResults.selection``) the config the study chose, on the runs its reported figures come
  from (:func:`raycl.analysis.tables.best_trials`); without, the best config by
  ``metric``/``mode`` among the search trials. A study that chose on the test data says so in
  the title.
- Sensitivity and cost plots describe the search: the search-phase trials only (the cost plot
  adds each arm's config, as the curves show it).
- A spread over seeds is always the 95 % Student-t confidence interval of the mean
  (:func:`raycl.analysis.tables.mean_intervals`, i.e. :func:`raycl.study.stats.interval`), and
  the title or legend says so ("95% t interval over 3 seeds"); one seed draws no interval.
- The sensitivity figure has a panel per arm and parameter; its x scale follows the study's
  declared search spaces (``study.json``) when it has them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycl.analysis.colors import arm_colors
from raycl.analysis.tables import (
    DEFAULT_METRIC,
    INTERVAL_CONFIDENCE,
    _same_config,
    accuracy_matrix,
    arm_labels,
    average_accuracy_per_experience,
    best_trials,
    chosen_configs,
    completed_per_phase,
    config_table,
    forgetting_per_experience,
    higher_is_better,
    matrix_split,
    mean_accuracy_matrix,
    mean_intervals,
    param_columns,
    pareto_front,
    per_trial_memory,
    run_keys,
    search_trials,
    select_runs,
    summary,
)
from raycl.study.schema import (
    ACCURACY,
    ARM,
    AVG_ACCURACY,
    AVG_FORGETTING,
    BWT,
    ERRORED,
    EVAL_EXP,
    EVAL_TIME_S,
    FINAL_AVG_ACCURACY,
    FWT,
    PEAK_MEMORY_MB,
    REPORTED_MEAN,
    REPORTED_METRIC,
    REPORTED_PHASE,
    SELECTION_METRIC,
    SELECTION_SPLIT,
    SPLITS,
    STATUS,
    STREAM_ACCURACY,
    STREAM_LOSS,
    STUDY,
    TEST,
    TRAIN_TIME_S,
    TRAINED_EXP,
    TRIAL_ID,
    VALID,
    is_param_column,
    param_column,
    param_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Display labels of the metrics (axis titles): text for people, keyed by the schema's names.
_METRIC_NAMES: dict[str, str] = {
    FINAL_AVG_ACCURACY: "final average accuracy",
    AVG_FORGETTING: "average forgetting",
    BWT: "backward transfer (BWT)",
    FWT: "forward transfer (FWT)",
    ACCURACY: "accuracy",
    AVG_ACCURACY: "average accuracy",
    STREAM_ACCURACY: "stream accuracy",
    STREAM_LOSS: "stream loss",
    TRAIN_TIME_S: "training time (s)",
    EVAL_TIME_S: "evaluation time (s)",
    PEAK_MEMORY_MB: "peak memory (MB)",
}
# How a split is named in labels.
_SPLIT_NAMES: dict[str, str] = {VALID: "validation", TEST: "test"}
# Metrics measured in accuracy units, labelled "(0-1)" or "(%)" by the scale of their values.
# These are words looked for inside any metric's name (a user's "val_accuracy" too), not columns.
_ACCURACY_LIKE = ("accuracy", "forgetting", "bwt", "fwt")
# The cost columns plot_cost draws, with their axis labels.
_COST_COLUMNS: dict[str, str] = {TRAIN_TIME_S: _METRIC_NAMES[TRAIN_TIME_S],
                                  PEAK_MEMORY_MB: "peak CUDA memory of the trial (MB)"}


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


def _split_of(metric: str) -> tuple[str | None, str]:
    """``(split, metric without it)`` of a column name; split None for a column without one."""
    for split in SPLITS:
        if metric.startswith(f"{split}_"):
            return split, metric[len(split) + 1:]
    return None, metric


def metric_name(metric: str) -> str:
    """A metric column in words, without unit: ``test final average accuracy``."""
    split, bare = _split_of(metric)
    name = _METRIC_NAMES.get(bare, bare.replace("_", " "))
    return f"{_SPLIT_NAMES[split]} {name}" if split else name


def metric_label(metric: str, values: Iterable[float] = ()) -> str:
    """A readable axis label for a metric column, with its split and unit: ``test final average
    accuracy (0–1)``, ``(%)``, s, MB."""
    name = metric_name(metric)
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


def _has_rows(selection: pd.DataFrame | None) -> bool:
    return selection is not None and len(selection) > 0


def _ordered_labels(trials: pd.DataFrame, metric: str, mode: str,
                    selection: pd.DataFrame | None = None) -> list[str]:
    """Arm labels best first: by reported figure where the study chose a config, else in summary
    order of the search trials; then arms without any result."""
    labels: list[str] = []
    if _has_rows(selection):
        assert selection is not None
        # Best reported figure first (the study's mode is not recorded: judged by the name).
        better = pd.Series([1.0 if higher_is_better(str(m)) else -1.0
                            for m in selection[REPORTED_METRIC]], index=selection.index)
        chosen = selection.assign(
            _label=_labels_like(trials, selection),
            _score=-better * pd.to_numeric(selection[REPORTED_MEAN], errors="coerce"))
        by = [STUDY, "_score"] if STUDY in chosen.columns else ["_score"]
        chosen = chosen.sort_values(by, na_position="last", kind="stable")
        labels += chosen["_label"].tolist()
    table = summary(search_trials(trials), metric, mode)
    labels += arm_labels(table).tolist() + arm_labels(trials).tolist()
    present = set(arm_labels(trials))
    return [label for label in dict.fromkeys(labels) if label in present]


def _labels_like(trials: pd.DataFrame, frame: pd.DataFrame) -> pd.Series:
    """The arm labels of ``frame``'s rows (a per-arm table), spelled as for ``trials``."""
    if STUDY in trials.columns and trials[STUDY].nunique(dropna=True) > 1 \
            and STUDY in frame.columns:
        return frame[STUDY].astype(str) + ":" + frame[ARM].astype(str)
    return frame[ARM].astype(str)


def _config_phrase(selection: pd.DataFrame | None, metric: str, mode: str) -> str:
    """How the figure's config of each arm was picked, for a title."""
    if not _has_rows(selection):
        return f"best config per arm by {metric} ({mode}) among search trials"
    assert selection is not None
    metrics = ", ".join(sorted(selection[SELECTION_METRIC].dropna().astype(str).unique()))
    phases = ", ".join(sorted(selection[REPORTED_PHASE].dropna().astype(str).unique()))
    text = f"config chosen per arm on {metrics or 'the selection split'}"
    if phases:
        text += f", {phases} runs"
    if (selection[SELECTION_SPLIT].astype(str) == TEST).any():
        text += "\nCHOSEN ON TEST DATA: these figures are optimistic"
    return text


def _legend_title(selection: pd.DataFrame | None) -> str:
    return "arm (chosen config)" if _has_rows(selection) else "arm (best config)"


def _exclusion_note(trials: pd.DataFrame, metric: str) -> str:
    done = completed_per_phase(trials, metric)
    errored = int((trials[STATUS] == ERRORED).sum())
    other = len(trials) - len(done) - errored
    parts = []
    if errored:
        parts.append(f"{errored} errored trial{'s' * (errored != 1)}")
    if other:
        parts.append(f"{other} incomplete trial{'s' * (other != 1)}")
    return f"excluded: {' and '.join(parts)}" if parts else ""


def _suptitle(fig: Figure, title: str, note: str = "", wrap: bool = False) -> None:
    """The figure's title, the note's lines under it; ``wrap`` breaks lines wider than the
    figure (at ~10 characters of the 12-point title per inch)."""
    text = title + (f"\n{note}" if note else "")
    if wrap:
        import textwrap

        width = max(int(fig.get_figwidth() * 10), 40)
        # Breaks at spaces only: column names and numbers stay whole.
        text = "\n".join(textwrap.fill(line, width, break_on_hyphens=False,
                                        break_long_words=False) for line in text.split("\n"))
    fig.suptitle(text, fontsize=12)


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


def _split_word(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_NAMES[split]


def plot_accuracy_matrix(matrix: pd.DataFrame, trial_id: str, seed: int | None = None,
                         ax: Axes | None = None, title: str | None = None,
                         split: str = TEST) -> Figure:
    """Annotated heatmap of one run's accuracy matrix on ``split`` (rows: trained up to;
    columns: evaluated)."""
    table = accuracy_matrix(matrix, trial_id, seed=seed, split=split)
    fig, ax = _figure_and_axes(ax, 1.0 + 0.75 * table.shape[1], 0.9 + 0.7 * table.shape[0])
    if title is None:
        rows = matrix[matrix[TRIAL_ID].astype(str) == str(trial_id)]
        arm = f"{rows[ARM].iloc[0]}, " if ARM in rows.columns and len(rows) else ""
        title = f"{_split_word(split).capitalize()} accuracy matrix ({arm}trial {trial_id}" + (
            f", seed {seed})" if seed is not None else ")")
    image = _draw_heatmap(ax, table, title)
    fig.colorbar(image, ax=ax, label=f"accuracy ({_unit(table.to_numpy().ravel())})",
                 shrink=0.9)
    return fig


def plot_accuracy_matrices(trials: pd.DataFrame, matrix: pd.DataFrame,
                           metric: str = DEFAULT_METRIC, mode: str = "max",
                           split: str = TEST,
                           selection: pd.DataFrame | None = None) -> Figure:
    """One annotated accuracy-matrix heatmap (on ``split``) per arm: its chosen config (or best,
    without ``selection``), averaged over seeds."""
    word = _split_word(split)
    matrix = matrix_split(matrix, split)
    best = best_trials(trials, metric, mode, selection=selection)
    labels = [lab for lab in _ordered_labels(trials, metric, mode, selection)
              if lab in set(best["label"])]
    n = max(len(labels), 1)
    n_exp = int(matrix[EVAL_EXP].nunique()) if len(matrix) else 1
    # Four heatmaps side by side stay readable up to ~6 experiences; beyond that, two per row.
    ncols = min(n, 4 if n_exp <= 6 else 2)
    nrows = math.ceil(n / ncols)
    side = max(2.6, 0.55 * n_exp + 0.9)
    fig = _new_figure(side * ncols + 1.0, side * nrows + 1.1)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for index, ax in enumerate(axes.ravel()):
        if index >= len(labels):
            # Panels past the last arm stay hidden; the first shows "no completed trial".
            ax.set_visible(index == 0 and not labels)
            if not labels:
                _empty(ax, "no completed trial")
                ax.set_visible(True)
            continue
        label = labels[index]
        runs = best[best["label"] == label]
        table = mean_accuracy_matrix(matrix, runs, split=split)
        if table.empty:
            _empty(ax, f"{label}: no {word} matrix rows")
            continue
        seeds = len(runs)
        image = _draw_heatmap(ax, table, f"{label}\n(mean of {seeds} seed{'s' * (seeds > 1)})")
        ax.title.set_color(arm_colors(labels)[label])
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8,
                     label=f"{word} accuracy ({_unit(matrix[ACCURACY])})")
    note = _exclusion_note(trials, metric)
    _suptitle(fig, f"{word.capitalize()} accuracy matrices of each arm's config",
              _config_phrase(selection, metric, mode) + (f"\n{note}" if note else ""))
    return fig


def _interval_phrase(counts: Iterable[int], what: str) -> str:
    """How a figure's spread is computed, for its title and legend: ``band: 95% t interval over
    3 seeds``; ``counts`` are the seeds behind each drawn mean."""
    present = [int(n) for n in counts if int(n) > 0]
    if not present or max(present) < 2:
        return "one seed per arm: no interval shown"
    low, high = min(present), max(present)
    seeds = f"{high} seeds" if low == high else f"{low}–{high} seeds"
    text = f"{what}: {INTERVAL_CONFIDENCE:.0%} t interval over {seeds}"
    return text + ("; none where there is one seed" if low < 2 else "")


def _errors(stats: pd.DataFrame) -> np.ndarray | None:
    """Error bar lengths (2 x N: below, above the mean) of :func:`mean_intervals` rows; None
    when no row has an interval (one seed each)."""
    if stats["low"].isna().all():
        return None
    return np.vstack([(stats["mean"] - stats["low"]).to_numpy(dtype=float),
                      (stats["high"] - stats["mean"]).to_numpy(dtype=float)])


def _settings_by_study(settings: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """``settings`` as study name -> settings: one study's settings (a dict with ``arms``, what
    ``StudyResults.settings`` holds) or already such a mapping (``StudyResults.study_settings``)."""
    if not settings:
        return {}
    if "arms" in settings:
        return {str(settings.get("name", "")): settings}
    return {str(k): v for k, v in settings.items() if isinstance(v, Mapping)}


def arm_settings(trials: pd.DataFrame, settings: Mapping[str, Any] | None
                 ) -> dict[str, Mapping[str, Any]]:
    """Each arm label's entry of ``study.json``'s ``arms`` (its ``space`` as text and its
    ``log_scale`` parameters), for the studies in ``trials``.

    ``settings`` is one study's settings (``StudyResults.settings``) or a mapping study name ->
    settings (``StudyResults.study_settings``). With one study in ``trials``, settings under
    another name still apply when they are the only ones given.
    """
    by_study = _settings_by_study(settings)
    if not by_study:
        return {}
    studies = (list(pd.unique(trials[STUDY].dropna().astype(str)))
               if STUDY in trials.columns else [])
    multi = len(studies) > 1
    if not multi:
        if studies and studies[0] in by_study:
            by_study = {studies[0]: by_study[studies[0]]}
        elif len(by_study) != 1:
            return {}
    result: dict[str, Mapping[str, Any]] = {}
    for study, values in by_study.items():
        for arm in values.get("arms") or []:
            if isinstance(arm, Mapping) and "name" in arm:
                label = f"{study}:{arm['name']}" if multi else str(arm["name"])
                result.setdefault(label, arm)
    return result


# How raycl.study.settings.space_text writes a search domain (anything else is a constant).
_DOMAIN_PREFIXES = ("uniform(", "loguniform(", "randn(", "randint(", "lograndint(", "choice(",
                    "grid_search(")
# Domains whose scale the study declares linear: sampled uniformly (or normally) in value.
_LINEAR_PREFIXES = ("uniform(", "randn(", "randint(")


def param_log_scale(name: str, values: Iterable[Any],
                    arm: Mapping[str, Any] | None = None) -> bool:
    """Whether an arm's parameter ``name`` is drawn on a log axis.

    With the arm's ``study.json`` entry (``arm``, see :func:`arm_settings`) the study decides:
    a parameter in its ``log_scale`` list (searched ``loguniform``/``lograndint``) is log
    whatever its values span, one searched ``uniform``/``randn``/``randint`` is linear even
    across decades. A ``choice``/``grid_search`` declares no scale, and without ``study.json``
    nothing does: then :func:`infer_log_scale` judges from the values.
    """
    array = pd.Series(list(values))
    numeric = not array.empty and pd.api.types.is_numeric_dtype(array) \
        and not pd.api.types.is_bool_dtype(array)
    if arm is not None:
        if name in (arm.get("log_scale") or ()):
            return bool(numeric) and bool((array.dropna() > 0).all())
        if str((arm.get("space") or {}).get(name, "")).startswith(_LINEAR_PREFIXES):
            return False
    return infer_log_scale(array)


def _searched_columns(rows: pd.DataFrame, arm: Mapping[str, Any] | None,
                      wanted: Sequence[str] | None) -> list[str]:
    """The ``param_<name>`` columns an arm gets a sensitivity panel for: those ``wanted`` it
    sets, else those its ``study.json`` space declares a domain for and those that vary over
    its trials (a parameter it holds constant, e.g. its memory size, says nothing here)."""
    if wanted:
        return [c for c in wanted if c in rows.columns and rows[c].notna().any()]
    declared = {param_column(k) for k, v in ((arm or {}).get("space") or {}).items()
                if str(v).startswith(_DOMAIN_PREFIXES)}
    varied = {c for c in param_columns(rows) if rows[c].dropna().astype(str).nunique() > 1}
    return sorted(declared | varied, key=param_name)


def _log_axis(ax: Axes, values: pd.Series, axis: str = "x") -> None:
    """A log x (or ``axis="y"``) axis labelled in plain numbers: 1-2-5 ticks (1-2-3-5 under a
    decade) where the values span a few decades, decades only beyond (the minor labels would
    overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    scale = ax.xaxis if axis == "x" else ax.yaxis
    array = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    array = array[array > 0]
    decades = math.log10(array.max() / array.min()) if array.size else 0.0
    # matplotlib's default labels read 2x10^-1 and overlap under a few decades.
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    scale.set_major_formatter(plain)
    if decades <= 2.0:
        subs = (2.0, 3.0, 5.0) if decades <= 1.0 else (2.0, 5.0)
        scale.set_minor_locator(LogLocator(subs=subs))
        scale.set_minor_formatter(plain)
    else:
        scale.set_minor_formatter(NullFormatter())


def plot_avg_accuracy_curves(trials: pd.DataFrame, matrix: pd.DataFrame,
                             metric: str = DEFAULT_METRIC, mode: str = "max",
                             ax: Axes | None = None, split: str = TEST,
                             selection: pd.DataFrame | None = None) -> Figure:
    """Average accuracy on ``split`` over the experiences seen so far, after each experience,
    per arm.

    One line per arm (its chosen config, or best without ``selection``): the mean over seeds,
    with a band for the 95 % Student-t confidence interval of that mean
    (:func:`raycl.analysis.tables.mean_intervals`) where there are several seeds.
    """
    from matplotlib.patches import Patch

    word = _split_word(split)
    best = best_trials(trials, metric, mode, selection=selection)
    curves = average_accuracy_per_experience(select_runs(matrix_split(matrix, split), best),
                                             split=split)
    fig, ax = _figure_and_axes(ax, 7.5, 4.8)
    colors = _colors_for(trials)
    percent = accuracy_is_percent(curves[AVG_ACCURACY]) if len(curves) else False
    counts = []
    for label in _ordered_labels(trials, metric, mode, selection):
        rows = curves[curves["label"] == label]
        if rows.empty:
            continue
        stats = mean_intervals(rows, TRAINED_EXP, AVG_ACCURACY)
        n_seeds = int(stats["n"].max())
        counts.append(n_seeds)
        x = stats.index.to_numpy()
        ax.plot(x, stats["mean"], marker="o", color=colors[label], linewidth=2,
                label=f"{label} ({n_seeds} seed{'s' * (n_seeds > 1)})")
        if stats["low"].notna().any():
            ax.fill_between(x, stats["low"], stats["high"], color=colors[label], alpha=0.15,
                            linewidth=0)
    spread = _interval_phrase(counts, "band")
    if curves.empty:
        _empty(ax, f"no completed trial with a {word} accuracy matrix")
    else:
        _integer_ticks(ax, sorted(curves[TRAINED_EXP].unique()))
        ax.set_ylim(0, 105 if percent else 1.05)
        handles, labels = ax.get_legend_handles_labels()
        if max(counts, default=0) > 1:
            handles.append(Patch(facecolor="0.5", alpha=0.3, linewidth=0))
            labels.append(spread)
        ax.legend(handles, labels, title=_legend_title(selection), loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize=9)
        ax.grid(alpha=0.3)
    ax.set_xlabel("last trained experience")
    ax.set_ylabel(f"{word} average accuracy on seen experiences ({'%' if percent else '0–1'})")
    note = _exclusion_note(trials, metric)
    ax.set_title(f"Average {word} accuracy after each experience\n"
                 f"{_config_phrase(selection, metric, mode)}\n{spread}"
                 + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def plot_forgetting(trials: pd.DataFrame, matrix: pd.DataFrame,
                    metric: str = DEFAULT_METRIC, mode: str = "max",
                    ax: Axes | None = None, split: str = TEST,
                    selection: pd.DataFrame | None = None) -> Figure:
    """Forgetting of each experience (on ``split``) at the end of training, per arm (grouped
    bars).

    Forgetting of experience j: its best accuracy after learning it minus its final accuracy. Bars
    show the mean over the seeds of the arm's config (chosen, or best without ``selection``),
    error bars the 95 % Student-t confidence interval of that mean
    (:func:`raycl.analysis.tables.mean_intervals`); the last group is the mean over experiences
    (the trial's average forgetting).
    """
    from matplotlib.lines import Line2D

    word = _split_word(split)
    matrix = matrix_split(matrix, split)
    best = best_trials(trials, metric, mode, selection=selection)
    table = forgetting_per_experience(select_runs(matrix, best), split=split)
    fig, ax = _figure_and_axes(ax, 8.0, 4.8)
    colors = _colors_for(trials)
    labels = [lab for lab in _ordered_labels(trials, metric, mode, selection)
              if lab in set(table.get("label", pd.Series(dtype=str)))]
    counts: list[int] = []
    if table.empty or not labels:
        _empty(ax, "no forgetting to show (fewer than two experiences?)")
    else:
        keys = run_keys(table)
        per_run_mean = (table.groupby([*keys, "label"], dropna=False)["forgetting"].mean()
                        .reset_index().assign(**{EVAL_EXP: "mean"}))
        full = pd.concat([table.assign(**{EVAL_EXP: table[EVAL_EXP].astype(int).astype(str)}),
                          per_run_mean], ignore_index=True)
        groups = [str(e) for e in sorted(table[EVAL_EXP].unique())] + ["mean"]
        width = 0.8 / len(labels)
        for k, label in enumerate(labels):
            stats = mean_intervals(full[full["label"] == label], EVAL_EXP,
                                   "forgetting").reindex(groups)
            counts.append(int(stats["n"].max()))
            positions = np.arange(len(groups)) - 0.4 + width * (k + 0.5)
            # One seed has no interval: no error bar rather than a misleading zero-length one.
            ax.bar(positions, stats["mean"], width=width * 0.95, color=colors[label],
                   yerr=_errors(stats), capsize=2, label=label,
                   error_kw={"elinewidth": 0.8, "alpha": 0.7})
        ax.set_xticks(range(len(groups)), groups)
        ax.axvline(len(groups) - 1.5, color="0.6", linewidth=0.8, linestyle=":")
        ax.axhline(0.0, color="black", linewidth=0.8)
        handles, names = ax.get_legend_handles_labels()
        if max(counts) > 1:
            handles.append(Line2D([], [], color="0.3", marker="|", markersize=12,
                                  linestyle="none"))
            names.append(_interval_phrase(counts, "error bars"))
        # Outside the axes: tall bars would hide behind a legend anywhere inside.
        ax.legend(handles, names, title=_legend_title(selection), fontsize=9,
                  loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
    ax.set_xlabel("experience (forgetting measured after the last one)")
    unit = _unit(matrix[ACCURACY]) if len(matrix) else "0–1"
    ax.set_ylabel(f"{word} forgetting: best past − final accuracy ({unit})")
    note = _exclusion_note(trials, metric)
    ax.set_title(f"Forgetting per experience at the end of training ({word} split)\n"
                 f"{_config_phrase(selection, metric, mode)}\n"
                 f"{_interval_phrase(counts, 'error bars')}"
                 + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def _stars(trials: pd.DataFrame, search: pd.DataFrame, configs: pd.DataFrame, metric: str,
           mode: str, selection: pd.DataFrame | None) -> dict[str, tuple[dict[str, Any], float]]:
    """Per arm label: the config the star marks (chosen, else best by ``metric`` among the
    search trials) and its mean ``metric`` over its search runs."""
    stars: dict[str, tuple[dict[str, Any], float]] = {}
    selected: set[str] = set()
    if _has_rows(selection):
        assert selection is not None
        chosen = chosen_configs(selection)
        labels = _labels_like(trials, selection)
        selected = set(labels)
        for label, row in zip(labels, selection.to_dict("records"), strict=True):
            config = chosen[(str(row.get(STUDY, "")), str(row[ARM]))]
            rows = configs[configs["label"] == label]
            match = rows[_same_config(rows, config, param_columns(rows))] if config else None
            if match is not None and len(match):
                stars[label] = (config, float(match["mean"].iloc[0]))
    table = summary(search, metric, mode)
    for label, row in zip(_labels_like(trials, table), table.to_dict("records"), strict=True):
        # An arm the study chose for keeps its choice, even where no search run of it is left.
        if label not in selected and row["best_config"]:
            stars[label] = (row["best_config"], float(row["mean"]))
    return stars


def plot_sensitivity(trials: pd.DataFrame, metric: str = DEFAULT_METRIC,
                     mode: str = "max", params: Sequence[str] | None = None,
                     selection: pd.DataFrame | None = None,
                     settings: Mapping[str, Any] | None = None) -> Figure:
    """The metric of the search trials against each searched parameter: one panel per arm and
    parameter it searches (arms that share a parameter name are not pooled), in the arms' colours,
    the y axis shared so that panels compare.

    Only search-phase trials are drawn (the figure describes the search); ``metric`` defaults to
    the test split's final average accuracy and the axis names the split. Faint dots are single
    trials; large markers are configs: the mean over seeds with its 95 % Student-t confidence
    interval (:func:`raycl.analysis.tables.mean_intervals`); a star marks each arm's config: the
    one the study chose (``selection``), else the best by ``metric``. Arms that search nothing
    (a naive baseline) appear in every panel as a dashed line at their mean.

    An arm's panels are its parameters that ``study.json`` declares searched and those that vary
    over its trials (``params`` picks parameter names instead). ``settings`` (one study's
    ``StudyResults.settings`` or the ``StudyResults.study_settings`` mapping) decides the x
    scale: log for a parameter in the arm's ``log_scale``, linear for one searched uniformly;
    without it (or for a ``choice``/``grid_search``) :func:`infer_log_scale` judges from the
    values (see :func:`param_log_scale`).
    """
    trials = trials.reset_index(drop=True)
    search = search_trials(trials)
    search_labels = arm_labels(trials).loc[search.index]
    done = completed_per_phase(search, metric).copy()
    done["label"] = arm_labels(trials).loc[done.index]
    wanted = [c if is_param_column(c) else param_column(c) for c in params] if params else None
    colors = _colors_for(trials)
    order = _ordered_labels(trials, metric, mode, selection)
    configs = config_table(search, metric)
    configs["label"] = _labels_like(trials, configs)
    stars = _stars(trials, search, configs, metric, mode, selection)
    spaces = arm_settings(trials, settings)
    panels: list[tuple[str, str]] = []
    for label in order:
        rows = search[search_labels == label]
        panels += [(label, c) for c in _searched_columns(rows, spaces.get(label), wanted)]
    with_panels = {label for label, _ in panels}
    # Baselines: arms with results that search none of the parameters drawn.
    baselines = [lab for lab in order if lab in set(done["label"]) and lab not in with_panels]
    ncols = min(max(len(panels), 1), 3)
    nrows = max(math.ceil(len(panels) / ncols), 1)
    # Wide enough for the titles and legend also with one or two panels.
    fig = _new_figure(max(4.6 * ncols + 0.4, 9.0), 3.8 * nrows + 1.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    values = done[metric]
    handles: dict[str, Any] = {}
    counts: list[int] = []
    logs: list[bool] = []
    for index, (ax, (label, column)) in enumerate(zip(axes.ravel(), panels, strict=False)):
        name = param_name(column)
        color = colors[label]
        ax.set_title(f"{label}: {name}")
        if index % ncols == 0:
            ax.set_ylabel(metric_label(metric, values))
        present = done[(done["label"] == label) & done[column].notna()]
        for baseline in baselines:
            mean = done.loc[done["label"] == baseline, metric].mean()
            line = ax.axhline(mean, color=colors[baseline], linestyle="--", linewidth=1.5)
            handles.setdefault(f"{baseline} (searches nothing: mean)", line)
        if present.empty:
            _empty(ax, f"{name}: no completed trial")
            ax.set_xlabel(name)
            continue
        categorical = _is_categorical(present[column])
        categories = sorted(present[column].astype(str).unique()) if categorical else []
        position = {c: i for i, c in enumerate(categories)}

        def to_x(series: pd.Series, position: dict[str, int] = position) -> np.ndarray:
            # Categorical values sit at 0, 1, ... in sorted order; numbers stay numbers.
            if position:
                return series.astype(str).map(position).to_numpy(dtype=float)
            return series.to_numpy(dtype=float)
        ax.scatter(to_x(present[column]), present[metric], s=14, color=color, alpha=0.35,
                   linewidths=0)
        # The arm's configs: every searched parameter, not only this panel's, tells them apart.
        by = [c for c in param_columns(present) if c != column] + [column]
        stats = mean_intervals(present, by, metric).reset_index()
        counts += stats["n"].tolist()
        handle = ax.errorbar(to_x(stats[column]), stats["mean"], yerr=_errors(stats),
                             fmt="o", color=color, markersize=6, capsize=2, elinewidth=0.8,
                             label=label)
        handles.setdefault(label, handle)
        best, best_y = stars.get(label, ({}, math.nan))
        if name in best:
            best_x = to_x(pd.Series([best[name]]))[0]
            ax.scatter([best_x], [best_y], marker="*", s=220, color=color,
                       edgecolors="black", linewidths=0.8, zorder=5)
        if categorical:
            ax.set_xticks(range(len(categories)), categories)
        elif param_log_scale(name, present[column], spaces.get(label)):
            _log_axis(ax, present[column])
        logs.append(ax.get_xscale() == "log")
        ax.set_xlabel(name + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if not panels:
        axes[0, 0].set_visible(True)
        _empty(axes[0, 0], "no searched parameter in this study")
    if handles:
        from matplotlib.lines import Line2D

        # The star in the legend is neutral: its colour in a panel is the arm's.
        handles = _in_order(handles, order)
        star = ("chosen config of each arm" if _has_rows(selection)
                else "best config of each arm")
        handles[star] = Line2D(
            [], [], marker="*", markersize=13, linestyle="none", markerfacecolor="white",
            markeredgecolor="black")
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 5), fontsize=9)
    notes = ["dots: trials; circles: configs, mean over seeds"
             + ("" if max(counts, default=0) < 2 else
                f" with {_interval_phrase(counts, 'bars')[len('bars: '):]}")]
    if any(logs):
        notes.append("log x-axis: " + ("searched on a log scale (study.json)" if spaces
                                       else "values spanning decades (no study.json)"))
    if note := _exclusion_note(search, metric):
        notes.append(note)
    _suptitle(fig, f"Sensitivity of {metric_name(metric)} ({metric}) to each searched "
              "parameter, per arm (search trials)", "\n".join(notes))
    return fig


def plot_cost(trials: pd.DataFrame, metric: str = DEFAULT_METRIC,
              mode: str = "max", selection: pd.DataFrame | None = None) -> Figure:
    """The metric against training time and against peak memory, Pareto front marked.

    One dot per completed search-phase trial (the figure describes the search), coloured by arm;
    ``metric`` defaults to the test split's final average accuracy and the axis names the split.
    Outlined dots joined by a black step line are the Pareto front: no other trial is both
    cheaper and at least as good. A diamond per arm is its config (chosen, with ``selection``:
    on the runs of its reported figures; else the best search config): the mean cost and metric
    over its seeds, each with its 95 % Student-t confidence interval
    (:func:`raycl.analysis.tables.mean_intervals`). A cost the study did not record gets no
    panel; the subtitle says so. Peak memory is drawn only for trials that ran on CUDA
    (:func:`raycl.analysis.tables.per_trial_memory`): on CPU ``peak_memory_mb`` is the worker
    process's peak since it started, not the trial's, so those trials are left out of the
    memory panel (the panel too when no trial ran on CUDA) and the subtitle says why.
    """
    from matplotlib.lines import Line2D

    trials = trials.reset_index(drop=True)
    search = search_trials(trials)
    done = completed_per_phase(search, metric).copy()
    done["label"] = arm_labels(trials).loc[done.index]
    best = best_trials(trials, metric, mode, selection=selection)
    # Peak memory only where it is the trial's own (CUDA); the process-wide CPU peak is dropped.
    memory_rows = int(done[PEAK_MEMORY_MB].notna().sum()) if PEAK_MEMORY_MB in done.columns else 0
    done[PEAK_MEMORY_MB] = per_trial_memory(done)
    best[PEAK_MEMORY_MB] = per_trial_memory(best)
    not_per_trial = memory_rows - int(done[PEAK_MEMORY_MB].notna().sum())
    colors = _colors_for(trials)
    order = _ordered_labels(trials, metric, mode, selection)
    recorded = {c: lab for c, lab in _COST_COLUMNS.items()
                if c in done.columns and done[c].notna().any()}
    missing = [_METRIC_NAMES[c] for c in _COST_COLUMNS
               if c not in recorded and not (c == PEAK_MEMORY_MB and not_per_trial)]
    # At least 9 inches: one panel (no memory on CPU) still has room for the title and legend.
    fig = _new_figure(max(5.6 * max(len(recorded), 1) + 0.4, 9.0), 5.3)
    axes = fig.subplots(1, max(len(recorded), 1), squeeze=False).ravel()
    if not recorded:
        _empty(axes[0], "no cost column recorded by this study")
    handles: dict[str, Any] = {}
    counts: list[int] = []
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
        runs = best[best[cost].notna()] if cost in best.columns else best.iloc[:0]
        if len(runs):
            ys = mean_intervals(runs, "label", metric)
            xs = mean_intervals(runs, "label", cost).reindex(ys.index)
            counts += ys["n"].tolist()
            for label in [lab for lab in order if lab in ys.index]:
                ax.errorbar(xs.loc[[label], "mean"], ys.loc[[label], "mean"],
                            xerr=_errors(xs.loc[[label]]), yerr=_errors(ys.loc[[label]]),
                            fmt="D", markersize=8, color=colors[label],
                            markeredgecolor="black", elinewidth=1.0, capsize=3, zorder=6)
        if infer_log_scale(points[cost]) and points[cost].max() / points[cost].min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(cost_label)
        ax.set_ylabel(metric_label(metric, done[metric]))
        ax.set_title(f"{metric_name(metric)} vs {cost_label}")
        ax.grid(alpha=0.3)
    if handles:
        handles = _in_order(handles, order)
        if counts:
            config = "chosen" if _has_rows(selection) else "best"
            handles[f"each arm's {config} config: mean, "
                    + (_interval_phrase(counts, "bars")[len("bars: "):]
                       if max(counts) > 1 else "one seed")] = Line2D(
                [], [], marker="D", markersize=7, linestyle="none", markerfacecolor="white",
                markeredgecolor="black")
        fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                   ncols=min(len(handles), 4), fontsize=9)
    direction = "higher" if mode == "max" else "lower"
    notes = [f"{lab} not recorded by this study" for lab in missing]
    if not_per_trial:
        where = ("no memory panel" if PEAK_MEMORY_MB not in recorded else
                 f"{not_per_trial} trial{'s' * (not_per_trial != 1)} left out of the memory "
                 "panel")
        notes.append(f"{where}: {PEAK_MEMORY_MB} is a trial's own peak only on CUDA; on CPU "
                     "(or with no device recorded) it is the worker process's peak since it "
                     "started (ru_maxrss), which grows with the trials it ran before")
    if note := _exclusion_note(search, metric):
        notes.append(note)
    _suptitle(fig, f"Cost of each search trial: {metric} ({direction} is better) vs training "
              "cost", "\n".join(notes), wrap=True)
    return fig
