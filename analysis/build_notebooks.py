"""Writes the analysis notebooks (without outputs) from the cell sources below.

Run ``.venv/bin/python analysis/build_notebooks.py`` after editing a cell here; the committed
``.ipynb`` files are what users open, this script keeps them short, consistent and output-free.
Each notebook's first code cell names the study directory; ``RAYCL_STUDY_DIR`` overrides it
(the tests point it at a fresh smoke study).
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent

SETUP = '''import os

# The study to analyse: <storage>/<study name>, as written by `python -m raycl.study`.
STUDY_DIR = os.environ.get("RAYCL_STUDY_DIR", "results/ewc_vs_si")'''

LOAD = '''%matplotlib inline
from pathlib import Path

import raycl.analysis as rca

# Relative paths are from the repository root; Jupyter starts a notebook in analysis/.
if not Path(STUDY_DIR).exists() and Path("..", STUDY_DIR).exists():
    STUDY_DIR = str(Path("..", STUDY_DIR))
results = rca.load_study(STUDY_DIR)
trials, matrix = results.trials, results.matrix
print(f"{len(trials)} trials, {int((trials.status == 'ERROR').sum())} errored, "
      f"arms: {sorted(trials.arm.unique())}")'''

NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "compare_arms": [
        ("markdown", "# Which strategy wins?\n\nEach arm's best configuration (highest mean "
                     "`final_avg_accuracy` over seeds), its learning curve, accuracy matrix and "
                     "forgetting. Set `STUDY_DIR` below (or the `RAYCL_STUDY_DIR` environment "
                     "variable)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", 'table = rca.summary(trials, metric="final_avg_accuracy", mode="max")\n'
                 'table.assign(best_config=table.best_config.map(rca.format_config))'),
        ("markdown", "Average accuracy on the experiences seen so far, after each experience "
                     "(mean over seeds, band ±1 std):"),
        ("code", "rca.plot_avg_accuracy_curves(trials, matrix)"),
        ("code", "rca.plot_accuracy_matrices(trials, matrix)"),
        ("code", "rca.plot_forgetting(trials, matrix)"),
        ("markdown", "One run's matrix as a table (here the best arm's first seed):"),
        ("code", 'best = rca.best_trials(trials)\n'
                 'first = best[best.arm == table.arm.iloc[0]].iloc[0]\n'
                 'rca.accuracy_matrix(matrix, first.trial_id, seed=first.seed).round(3)'),
    ],
    "sensitivity": [
        ("markdown", "# How sensitive is each strategy to its hyperparameters?\n\nThe metric "
                     "against every searched parameter (log axis where the values span "
                     "decades). Set `STUDY_DIR` below (or `RAYCL_STUDY_DIR`)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", 'configs = rca.config_table(trials, metric="final_avg_accuracy")\n'
                 'configs.sort_values(["arm", "mean"], ascending=[True, False])'),
        ("code", 'rca.plot_sensitivity(trials, metric="final_avg_accuracy", mode="max")'),
        ("markdown", "The same for forgetting (lower is better):"),
        ("code", 'rca.plot_sensitivity(trials, metric="avg_forgetting", mode="min")'),
    ],
    "cost": [
        ("markdown", "# What does each strategy cost?\n\nAccuracy against training time and "
                     "peak memory; the Pareto front holds the trials no other trial beats on "
                     "both. Set `STUDY_DIR` below (or `RAYCL_STUDY_DIR`)."),
        ("code", SETUP),
        ("code", LOAD),
        ("code", 'done = rca.completed_trials(trials)\n'
                 'cost_columns = [c for c in ("final_avg_accuracy", "train_time_s", '
                 '"peak_memory_mb")\n'
                 '                if c in done.columns]\n'
                 'done.groupby("arm")[cost_columns].agg(["mean", "std"]).round(3)'),
        ("code", 'rca.plot_cost(trials, metric="final_avg_accuracy", mode="max")'),
        ("markdown", "The trials on the time/accuracy Pareto front:"),
        ("code", 'front = rca.pareto_front(done, cost="train_time_s", '
                 'metric="final_avg_accuracy")\n'
                 'params = rca.param_columns(done)\n'
                 'done[front].sort_values("train_time_s")[\n'
                 '    ["arm", "seed", *params, "final_avg_accuracy", "train_time_s"]]'),
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
