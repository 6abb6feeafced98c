"""Every figure of a study at once: what ``python -m raycl.report`` renders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from raycl.analysis.plots import (
    plot_accuracy_matrices,
    plot_avg_accuracy_curves,
    plot_cost,
    plot_forgetting,
    plot_sensitivity,
)
from raycl.analysis.search import (
    COMPUTED,
    param_importance,
    plot_parallel_coordinates,
    plot_param_importance,
    plot_param_pairs,
    search_configs,
    selection_metric,
)
from raycl.analysis.tables import DEFAULT_METRIC
from raycl.study.schema import TEST

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["study_figures"]


def study_figures(trials: pd.DataFrame, matrix: pd.DataFrame,
                  metric: str = DEFAULT_METRIC, mode: str = "max", split: str = TEST,
                  selection: pd.DataFrame | None = None,
                  settings: Mapping[str, Any] | None = None,
                  importance: pd.DataFrame | None = None) -> dict[str, Figure]:
    """Every figure of the report, by file stem, in page order.

    accuracy_matrices, avg_accuracy, forgetting (on ``split``, each arm's config chosen in
    ``selection`` when given), sensitivity (x scales from ``settings``:
    ``StudyResults.settings`` or ``StudyResults.study_settings``) and cost (the search trials,
    with each arm's config) show ``metric``. The views of each arm's search show the metric the
    study chose configs on (:func:`raycl.analysis.selection_metric`), and only where they have
    something to draw: importance (an arm with two or more parameters and enough configs;
    ``importance`` reuses a :func:`raycl.analysis.param_importance` table),
    parallel_coordinates (an arm that searches a parameter) and param_pairs (an arm that
    searches exactly two).
    """
    figures: dict[str, Figure] = {
        "avg_accuracy": plot_avg_accuracy_curves(trials, matrix, metric, mode, split=split,
                                                 selection=selection),
        "accuracy_matrices": plot_accuracy_matrices(trials, matrix, metric, mode, split=split,
                                                    selection=selection),
        "forgetting": plot_forgetting(trials, matrix, metric, mode, split=split,
                                      selection=selection),
        "sensitivity": plot_sensitivity(trials, metric, mode, selection=selection,
                                        settings=settings),
    }
    try:
        column, chosen_mode = selection_metric(trials, selection, settings)
    except ValueError:  # studies that chose on different metrics: no one metric to draw
        column, chosen_mode = "", "max"
    if column in trials.columns:
        # One reading of the configs for the three views (it ranks the arms: not free).
        arms = search_configs(trials, column, chosen_mode, selection, settings)
        if importance is None:
            importance = param_importance(trials, selection, settings, configs=arms)
        if (importance["status"] == COMPUTED).any():
            figures["importance"] = plot_param_importance(trials, selection, settings,
                                                          importance=importance)
        if arms:
            figures["parallel_coordinates"] = plot_parallel_coordinates(
                trials, selection, settings, configs=arms)
        if any(len(arm.params) == 2 for arm in arms.values()):
            figures["param_pairs"] = plot_param_pairs(trials, selection, settings,
                                                      configs=arms)
    figures["cost"] = plot_cost(trials, metric, mode, selection=selection)
    return figures
