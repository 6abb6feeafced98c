"""Writes the analysis notebooks (without outputs) from the cell sources below.

Run ``.venv/bin/python analysis/build_notebooks.py`` after editing a cell here; the committed
``.ipynb`` files are what users open, this script keeps them short, consistent and output-free.
Each notebook's first code cell names the study directory; ``RAYCL_STUDY_DIR`` overrides it
(the tests point it at a fresh smoke study).

Column and metric names come from :mod:`raycl.study.schema` and are written into the cells as
plain strings, so that a notebook reads (and can be edited) without knowing the schema module.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

from raycl.study.schema import (
    ARM,
    AVG_FORGETTING,
    CHOSEN_CONFIG,
    ERRORED,
    FINAL_AVG_ACCURACY,
    INTERVAL,
    PEAK_MEMORY_MB,
    REPORTED_HIGH,
    REPORTED_LOW,
    REPORTED_MEAN,
    REPORTED_METRIC,
    REPORTED_N,
    REPORTED_PHASE,
    SEED,
    SELECTION_METRIC,
    SELECTION_SPLIT,
    SELECTION_VALUE,
    STATUS,
    TEST,
    TRAIN_TIME_S,
    TRIAL_ID,
    VALID,
    VERDICT,
    split_column,
)
from raycl.study.stats import COMPARISON_COLUMNS

HERE = Path(__file__).resolve().parent

# The columns the notebooks read: reported figures are on the test split, configs are chosen on
# the validation split (selection.parquet says which).
TEST_ACCURACY = split_column(TEST, FINAL_AVG_ACCURACY)
VALID_ACCURACY = split_column(VALID, FINAL_AVG_ACCURACY)
TEST_FORGETTING = split_column(TEST, AVG_FORGETTING)
SELECTION_COLUMNS = (ARM, SELECTION_SPLIT, SELECTION_METRIC, SELECTION_VALUE, CHOSEN_CONFIG,
                     REPORTED_METRIC, REPORTED_MEAN, REPORTED_LOW, REPORTED_HIGH, INTERVAL,
                     REPORTED_N, VERDICT, REPORTED_PHASE)
# The comparisons the notebook shows (arm vs reference: the difference, its interval, p-values).
SHOWN_COMPARISONS = tuple(c for c in COMPARISON_COLUMNS if c not in ("statistic", "test", "note"))

SETUP = '''import os

# The study to analyse: <storage>/<study name>, as written by `python -m raycl.study`.
STUDY_DIR = os.environ.get("RAYCL_STUDY_DIR", "results/ewc_vs_si")'''

LOAD = f'''%matplotlib inline
from pathlib import Path

import raycl.analysis as rca

# Relative paths are from the repository root; Jupyter starts a notebook in analysis/.
if not Path(STUDY_DIR).exists() and Path("..", STUDY_DIR).exists():
    STUDY_DIR = str(Path("..", STUDY_DIR))
results = rca.load_study(STUDY_DIR)
# selection: one row per arm (selection.parquet), empty when the study has not chosen configs;
# comparisons: the paired tests behind its verdicts; settings: study.json by study name.
trials, matrix, selection = results.trials, results.matrix, results.selection
comparisons, settings = results.comparisons, results.study_settings
print(f"{{len(trials)}} trials, {{int((trials.{STATUS} == '{ERRORED}').sum())}} errored, "
      f"arms: {{sorted(trials.{ARM}.unique())}}")
if (selection.{SELECTION_SPLIT} == "{TEST}").any():
    print("WARNING: configs were chosen on the test data: the reported figures are optimistic")'''

_COLUMN_LIST = textwrap.fill(", ".join(f'"{c}"' for c in SELECTION_COLUMNS), width=88,
                             initial_indent="    ", subsequent_indent="    ")
PER_ARM = f'''columns = [
{_COLUMN_LIST}]
if len(selection):  # the config the study chose on validation, its test figure and interval
    table = selection[columns].sort_values("{REPORTED_MEAN}", ascending=False)
else:  # no selection.parquet: the best search config by its test mean (chosen on test!)
    table = rca.summary(rca.search_trials(trials), metric="{TEST_ACCURACY}", mode="max")
    table = table.assign(best_config=table.best_config.map(rca.format_config))
table'''

_SHOWN = textwrap.fill(", ".join(f'"{c}"' for c in SHOWN_COMPARISONS), width=88,
                       initial_indent="    ", subsequent_indent="    ")
COMPARISONS = f'''# The paired tests behind the verdicts: each arm against the best arm and the
# baseline, over the seeds both ran (mean difference, its 95% t interval, Holm p-values).
comparisons[[
{_SHOWN}]]'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "compare_arms": [
        ("markdown", "# Which strategy wins?\n\nEach arm's config as the study chose it on the "
                     "validation data (`selection.parquet`, loaded as `results.selection`), its "
                     f"reported test figure (`{TEST_ACCURACY}` of runs the choice never saw), "
                     "learning curve, accuracy matrix and forgetting, all on the test split. "
                     "Without `selection.parquet` the best search config by its test mean is "
                     "shown instead. Set `STUDY_DIR` below (or the `RAYCL_STUDY_DIR` environment "
                     "variable)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", PER_ARM),
        ("code", COMPARISONS),
        ("markdown", "Average test accuracy on the experiences seen so far, after each experience "
                     "(each arm's chosen config, mean over seeds, band: 95% t interval over "
                     "seeds):"),
        ("code", "rca.plot_avg_accuracy_curves(trials, matrix, selection=selection)"),
        ("code", "rca.plot_accuracy_matrices(trials, matrix, selection=selection)"),
        ("code", "rca.plot_forgetting(trials, matrix, selection=selection)"),
        ("markdown", "One run's test accuracy matrix as a table (here the first arm's first "
                     "seed; `split=\"valid\"` shows the validation split):"),
        ("code", 'best = rca.best_trials(trials, selection=selection)\n'
                 f'first = best[best.{ARM} == table.{ARM}.iloc[0]].iloc[0]\n'
                 f'rca.accuracy_matrix(matrix, first.{TRIAL_ID}, seed=first.{SEED}, '
                 f'split="{TEST}").round(3)'),
    ],
    "sensitivity": [
        ("markdown", "# How sensitive is each strategy to its hyperparameters?\n\nThe test "
                     "metric of every search trial against each parameter an arm searches, one "
                     "panel per arm and parameter (log axis for a parameter searched on a log "
                     "scale, from `study.json`; circles: configs with their 95% t interval over "
                     "seeds); the star is the config the study chose on validation "
                     "(`selection.parquet`). An arm that searches several parameters varies the "
                     "others under each panel's points: the `search` notebook reads its configs "
                     "whole. Set `STUDY_DIR` below (or `RAYCL_STUDY_DIR`)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", f'configs = rca.config_table(rca.search_trials(trials), metric="{TEST_ACCURACY}")'
                 f'\nconfigs.sort_values(["{ARM}", "mean"], ascending=[True, False])'),
        ("code", f'rca.plot_sensitivity(trials, metric="{TEST_ACCURACY}", mode="max", '
                 'selection=selection,\n                 settings=settings)'),
        ("markdown", "What the choice saw: the same on the validation split. Where the star is "
                     "not the highest point on test, validation and test disagree:"),
        ("code", f'rca.plot_sensitivity(trials, metric="{VALID_ACCURACY}", mode="max", '
                 'selection=selection,\n                 settings=settings)'),
        ("markdown", "Test forgetting (lower is better):"),
        ("code", f'rca.plot_sensitivity(trials, metric="{TEST_FORGETTING}", mode="min", '
                 'selection=selection,\n                 settings=settings)'),
    ],
    "search": [
        ("markdown", "# Which parameters matter, and how do they interact?\n\nEach arm's "
                     "search read as whole configs (mean over seeds), on the metric the study "
                     "chose configs on (`selection.parquet`'s `selection_metric`: the validation "
                     "split under the default protocol): how much each parameter accounts for "
                     "(permutation importance of a random forest, scikit-learn), every config "
                     "across all its parameters (parallel coordinates) and, for arms that "
                     "search two parameters, one against the other. One parameter at a time: "
                     "the `sensitivity` notebook. Set `STUDY_DIR` below (or "
                     "`RAYCL_STUDY_DIR`)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", 'metric, mode = rca.selection_metric(trials, selection, settings)\n'
                 'importance = rca.param_importance(trials, selection, settings)\n'
                 'print(f"importance computed on {metric} ({mode}), the metric configs were '
                 'chosen on")\n'
                 '# status: "one parameter" (1 by definition), "too few configs" (fewer than '
                 'rca.MIN_CONFIGS)\nimportance'),
        ("code", "rca.plot_param_importance(trials, selection, settings, importance=importance)"),
        ("markdown", "One line per config through every parameter it sets and the metric, "
                     "coloured by the metric (thick outlined line: the chosen config):"),
        ("code", "rca.plot_parallel_coordinates(trials, selection, settings)"),
        ("markdown", "Arms that search exactly two parameters, one against the other (star: the "
                     "chosen config):"),
        ("code", "rca.plot_param_pairs(trials, selection, settings)"),
    ],
    "cost": [
        ("markdown", "# What does each strategy cost?\n\nTest accuracy of every search trial "
                     "against training time and, for trials that ran on CUDA, their peak GPU "
                     "memory (on CPU the recorded peak is the worker process's, not the "
                     "trial's: no memory panel); the Pareto front holds the trials no other "
                     "trial beats on both; diamonds are each arm's chosen config with 95% t "
                     "intervals over seeds. Set `STUDY_DIR` below (or `RAYCL_STUDY_DIR`)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", 'done = rca.completed_trials(rca.search_trials(trials))\n'
                 '# Peak memory only where it is the trial\'s own (CUDA); NaN on CPU, where it is '
                 'the\n# worker process\'s peak since it started (see rca.per_trial_memory).\n'
                 f'done = done.assign({PEAK_MEMORY_MB}=rca.per_trial_memory(done))\n'
                 f'cost_columns = [c for c in ("{TEST_ACCURACY}", "{TRAIN_TIME_S}", '
                 f'"{PEAK_MEMORY_MB}")\n'
                 '                if c in done.columns and done[c].notna().any()]\n'
                 f'done.groupby("{ARM}")[cost_columns].agg(["mean", "std"]).round(3)'),
        ("code", f'rca.plot_cost(trials, metric="{TEST_ACCURACY}", mode="max", '
                 'selection=selection)'),
        ("markdown", "The search trials on the time/accuracy Pareto front:"),
        ("code", f'front = rca.pareto_front(done, cost="{TRAIN_TIME_S}", '
                 f'metric="{TEST_ACCURACY}")\n'
                 'params = rca.param_columns(done)\n'
                 f'done[front].sort_values("{TRAIN_TIME_S}")[\n'
                 f'    ["{ARM}", "{SEED}", *params, "{TEST_ACCURACY}", "{TRAIN_TIME_S}"]]'),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook with the given (kind, source) cells, a python3 kernelspec and no outputs."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    for index, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_code_cell if kind == "code" else nbformat.v4.new_markdown_cell
        cell = make(source)
        cell["id"] = f"{name}-{index}"  # stable ids keep diffs small when a cell changes
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return notebook


def main() -> None:
    """Write every notebook next to this script."""
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), HERE / f"{name}.ipynb")
        print(f"wrote {HERE / f'{name}.ipynb'}")


if __name__ == "__main__":
    main()
