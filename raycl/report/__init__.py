"""A static report of a study: the analysis figures as PNG files plus one ``index.html``.

``python -m raycl.report RESULTS_DIR [--out DIR]`` needs no Jupyter: it loads the study's Parquet
files with :func:`raycl.analysis.load_study`, renders :func:`raycl.analysis.study_figures` with the
Agg backend, and writes a page that shows them under the per-arm summary table.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

#: Figure file stems in page order, with the caption shown under each.
FIGURES: dict[str, str] = {
    "avg_accuracy": "Average accuracy on the experiences seen so far, after each experience "
                    "(each arm's best config; band: ±1 std over seeds).",
    "accuracy_matrices": "Accuracy matrix of each arm's best config, averaged over seeds: row t "
                         "is the accuracy on every experience after training on experience t.",
    "forgetting": "Forgetting of each experience at the end of training: its best accuracy "
                  "after it was learned minus its final accuracy.",
    "sensitivity": "The metric against each searched parameter; the star is each arm's best "
                   "config, the dashed line an arm without parameters.",
    "cost": "The metric against training time and peak memory; circled points joined by the "
            "black line form the Pareto front.",
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; border: 1px solid #555; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; } .meta { color: #666; font-size: 0.9em; }
"""


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def summary_html(table: pd.DataFrame, multi_study: bool) -> str:
    """The summary table (as returned by :func:`raycl.analysis.summary`) as an HTML table."""
    from raycl.analysis import arm_colors, arm_labels, format_config

    metric = table.attrs.get("metric", "metric")
    mode = table.attrs.get("mode", "max")
    labels = arm_labels(table)
    colors = arm_colors(labels)
    header = ["arm", "best config", f"{metric} mean", "std over seeds", "seeds", "configs",
              "trials", "errored", "stopped early"]
    if multi_study:
        header.insert(0, "study")
    rows = []
    for label, row in zip(labels, table.itertuples(index=False), strict=True):
        cells = [
            f'<td><span class="swatch" style="background:{colors[label]}"></span>'
            f"{html.escape(str(row.arm))}</td>",
            f"<td>{html.escape(format_config(row.best_config))}</td>",
            f'<td class="num">{_number(row.mean)}</td>',
            f'<td class="num">{_number(row.std)}</td>',
            *(f'<td class="num">{int(v)}</td>' for v in (
                row.n_seeds, row.n_configs, row.n_trials, row.n_errored, row.n_stopped)),
        ]
        if multi_study:
            cells.insert(0, f"<td>{html.escape(str(row.study))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="summary" data-metric="{html.escape(metric)}" '
            f'data-mode="{html.escape(mode)}">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _errors_html(trials: pd.DataFrame) -> str:
    errored = trials[trials["status"] == "ERROR"]
    if errored.empty:
        return ""
    columns = [c for c in ("study", "trial_id", "arm", "seed", "error") if c in errored.columns]
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>"
        for _, row in errored.iterrows())
    return ("<h2>Errored trials</h2>\n<table><thead><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            + f"</tr></thead>\n<tbody>\n{body}\n</tbody></table>")


def render_html(trials: pd.DataFrame, table: pd.DataFrame, figures: list[str],
                source: str) -> str:
    """The report page: summary table, then each figure (by PNG file name) with its caption."""
    studies = sorted(trials["study"].astype(str).unique()) if "study" in trials.columns else []
    title = "Study report: " + (", ".join(studies) or source)
    metric = table.attrs.get("metric", "metric")
    direction = "highest" if table.attrs.get("mode", "max") == "max" else "lowest"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Results: {html.escape(source)} &middot; {len(trials)} trials &middot; '
        f"generated {stamp} by <code>python -m raycl.report</code></p>",
        "<h2>Summary per arm</h2>",
        f"<p>Best config: the {direction} mean of <code>{html.escape(metric)}</code> over seeds "
        "among trials that completed every experience.</p>",
        summary_html(table, multi_study=len(studies) > 1),
    ]
    for name in figures:
        stem = name.removesuffix(".png")
        caption = FIGURES.get(stem, stem.replace("_", " "))
        parts.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(stem)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(_errors_html(trials))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_report(results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 metric: str = "final_avg_accuracy", mode: str = "max", dpi: int = 110) -> Path:
    """Render the figures of the study at ``results`` as PNG files and ``index.html`` in ``out``.

    ``out`` defaults to ``<results>/report`` (``reports/<name>`` for a URI). Returns the path of
    ``index.html``.
    """
    from raycl.analysis import load_study, study_figures, summary

    source = os.fspath(results)
    data = load_study(source)
    if metric not in data.trials.columns:
        raise ValueError(f"metric {metric!r} is not a column of trials.parquet")
    if out is None:
        out = (Path("reports") / source.rstrip("/").rsplit("/", 1)[-1] if "://" in source
               else Path(source) / "report")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary(data.trials, metric, mode)
    names = []
    figures = study_figures(data.trials, data.matrix, metric, mode)
    for stem in FIGURES:
        path = out_dir / f"{stem}.png"
        figures[stem].savefig(path, dpi=dpi, facecolor="white")
        names.append(path.name)
    index = out_dir / "index.html"
    # Written last and renamed into place, so a reader never sees a page without its images.
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(render_html(data.trials, table, names, source), encoding="utf-8")
    tmp.replace(index)
    return index


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m raycl.report RESULTS_DIR [--out DIR]``; returns the exit status."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m raycl.report",
        description="Write a study's figures (PNG) and an index.html with the summary table.")
    parser.add_argument("results", help="study directory <storage>/<study name> (or a URI), or a "
                        "storage directory holding several studies")
    parser.add_argument("--out", default=None,
                        help="output directory (default: RESULTS_DIR/report)")
    parser.add_argument("--metric", default="final_avg_accuracy",
                        help="trials column that ranks configs (default: final_avg_accuracy)")
    parser.add_argument("--mode", choices=("max", "min"), default="max",
                        help="whether a higher or lower metric is better (default: max)")
    parser.add_argument("--dpi", type=int, default=110, help="PNG resolution (default: 110)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no GUI toolkit imported
    try:
        index = write_report(args.results, args.out, args.metric, args.mode, args.dpi)
    except (FileNotFoundError, ValueError) as error:
        print(f"raycl.report: error: {error}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


__all__ = ["FIGURES", "main", "render_html", "summary_html", "write_report"]
