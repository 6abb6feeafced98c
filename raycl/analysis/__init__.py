"""Analysis of a study's Parquet results: the tables and figures the notebooks and report share.

>>> from raycl.analysis import load_study, summary, plot_avg_accuracy_curves
>>> results = load_study("results/ewc_vs_si")   # trials, matrix, curves, selection DataFrames
>>> results.selection                           # per arm: chosen config (on valid), test figures
>>> results.comparisons                         # paired tests vs the best arm and the baseline
>>> results.settings["arms"]                    # study.json: spaces, log scales, seeds, versions
>>> summary(search_trials(results.trials), metric="test_final_avg_accuracy")
>>> fig = plot_avg_accuracy_curves(results.trials, results.matrix, selection=results.selection)
>>> param_importance(results.trials, results.selection, results.study_settings)  # per arm
>>> fig = plot_parallel_coordinates(results.trials, results.selection, results.study_settings)

Spreads over seeds are 95 % Student-t confidence intervals of the mean (:func:`mean_intervals`).
Accuracy is read on the test split by default (``test_*`` columns, the matrix's ``split ==
"test"`` rows); each arm's config is the one ``selection.parquet`` records when the study has one.
Parameter importance, parallel coordinates and the two-parameter view (:mod:`.search`) read each
arm's configs on the metric the study chose them on (:func:`selection_metric`: validation under
the default protocol). Peak memory is drawn only where it is the trial's own
(:func:`per_trial_memory`: CUDA; on CPU the column is the worker process's peak).
Importing this package loads pandas only; matplotlib (and scikit-learn, for importance) is
imported when a figure or table needs it. Users' guide: ``docs/analysis.md``.
"""

from __future__ import annotations

from raycl.analysis.colors import KNOWN_ARM_COLORS, arm_color, arm_colors
from raycl.analysis.figures import study_figures
from raycl.analysis.load import (
    StudyResults,
    concat_studies,
    load_study,
    table_version,
    upgrade_v1,
)
from raycl.analysis.plots import (
    accuracy_is_percent,
    arm_settings,
    infer_log_scale,
    metric_label,
    metric_name,
    param_log_scale,
    plot_accuracy_matrices,
    plot_accuracy_matrix,
    plot_avg_accuracy_curves,
    plot_cost,
    plot_forgetting,
    plot_sensitivity,
)
from raycl.analysis.search import (
    MIN_CONFIGS,
    SearchConfigs,
    param_importance,
    plot_parallel_coordinates,
    plot_param_importance,
    plot_param_pairs,
    search_configs,
    selection_metric,
    two_parameter_arms,
)
from raycl.analysis.tables import (
    DEFAULT_METRIC,
    INTERVAL_CONFIDENCE,
    SEARCH_PHASES,
    accuracy_matrix,
    arm_labels,
    average_accuracy_per_experience,
    best_trials,
    chosen_configs,
    completed_per_phase,
    completed_trials,
    config_table,
    forgetting_per_experience,
    format_config,
    format_value,
    higher_is_better,
    matched_params,
    matrix_split,
    mean_accuracy_matrix,
    mean_intervals,
    param_columns,
    pareto_front,
    per_trial_memory,
    search_trials,
    select_runs,
    summary,
)

__all__ = [
    "DEFAULT_METRIC",
    "INTERVAL_CONFIDENCE",
    "KNOWN_ARM_COLORS",
    "MIN_CONFIGS",
    "SEARCH_PHASES",
    "SearchConfigs",
    "StudyResults",
    "accuracy_is_percent",
    "accuracy_matrix",
    "arm_color",
    "arm_colors",
    "arm_labels",
    "arm_settings",
    "average_accuracy_per_experience",
    "best_trials",
    "chosen_configs",
    "completed_per_phase",
    "completed_trials",
    "concat_studies",
    "config_table",
    "forgetting_per_experience",
    "format_config",
    "format_value",
    "higher_is_better",
    "infer_log_scale",
    "load_study",
    "matched_params",
    "matrix_split",
    "mean_accuracy_matrix",
    "mean_intervals",
    "metric_label",
    "metric_name",
    "param_columns",
    "param_importance",
    "param_log_scale",
    "pareto_front",
    "per_trial_memory",
    "plot_accuracy_matrices",
    "plot_accuracy_matrix",
    "plot_avg_accuracy_curves",
    "plot_cost",
    "plot_forgetting",
    "plot_param_importance",
    "plot_param_pairs",
    "plot_parallel_coordinates",
    "plot_sensitivity",
    "search_trials",
    "search_configs",
    "select_runs",
    "selection_metric",
    "study_figures",
    "summary",
    "table_version",
    "two_parameter_arms",
    "upgrade_v1",
]
