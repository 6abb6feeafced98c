"""Analysis of a study's Parquet results: the tables and figures the notebooks and report share.

>>> from raycl.analysis import load_study, summary, plot_avg_accuracy_curves
>>> results = load_study("results/ewc_vs_si")          # trials, matrix, curves DataFrames
>>> summary(results.trials)                            # per arm: best config, mean/std over seeds
>>> fig = plot_avg_accuracy_curves(results.trials, results.matrix)

Importing this package loads pandas only; matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

from raycl.analysis.colors import KNOWN_ARM_COLORS, arm_color, arm_colors
from raycl.analysis.load import StudyResults, concat_studies, load_study
from raycl.analysis.plots import (
    accuracy_is_percent,
    infer_log_scale,
    metric_label,
    plot_accuracy_matrices,
    plot_accuracy_matrix,
    plot_avg_accuracy_curves,
    plot_cost,
    plot_forgetting,
    plot_sensitivity,
    study_figures,
)
from raycl.analysis.tables import (
    accuracy_matrix,
    arm_labels,
    average_accuracy_per_experience,
    best_trials,
    completed_trials,
    config_table,
    forgetting_per_experience,
    format_config,
    mean_accuracy_matrix,
    param_columns,
    pareto_front,
    select_runs,
    summary,
)

__all__ = [
    "KNOWN_ARM_COLORS",
    "StudyResults",
    "accuracy_is_percent",
    "accuracy_matrix",
    "arm_color",
    "arm_colors",
    "arm_labels",
    "average_accuracy_per_experience",
    "best_trials",
    "completed_trials",
    "concat_studies",
    "config_table",
    "forgetting_per_experience",
    "format_config",
    "infer_log_scale",
    "load_study",
    "mean_accuracy_matrix",
    "metric_label",
    "param_columns",
    "pareto_front",
    "plot_accuracy_matrices",
    "plot_accuracy_matrix",
    "plot_avg_accuracy_curves",
    "plot_cost",
    "plot_forgetting",
    "plot_sensitivity",
    "select_runs",
    "study_figures",
    "summary",
]
