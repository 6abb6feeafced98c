"""A static report of a study: the analysis figures as PNG files plus one ``index.html``.

``python -m raycl.report RESULTS_DIR [--out DIR]`` needs no Jupyter: it loads the study's Parquet
files with :func:`raycl.analysis.load_study`, renders :func:`raycl.analysis.study_figures` with the
Agg backend, and writes a page that shows them under the per-arm table.

The per-arm table comes from ``selection.parquet`` when the study has one: each arm's chosen
config, what it was chosen on (split, metric, value) and the figure to report (measured on the
test data of runs the choice never saw), with a banner when a study chose on the test data.
Without it, the table ranks the search trials on the test metric, as before selection existed.
Accuracy is the test split's throughout; figures say so.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from raycl.study.schema import (
    ARM,
    CHOSEN_CONFIG,
    CONFIGS_SEARCHED,
    CONFIRM_MEAN,
    CONFIRM_N,
    CONFIRM_STD,
    ERROR,
    ERRORED,
    FINAL_AVG_ACCURACY,
    PROTOCOL,
    REPORTED_MEAN,
    REPORTED_METRIC,
    REPORTED_N,
    REPORTED_PHASE,
    REPORTED_STD,
    SEED,
    SELECTION_METRIC,
    SELECTION_SPLIT,
    SELECTION_VALUE,
    STATUS,
    STUDY,
    TEST,
    TRIAL_ID,
    is_param_column,
    is_split_metric,
    param_name,
    split_column,
)

#: The metric the report ranks and plots by default: final average accuracy on the test split.
DEFAULT_METRIC = split_column(TEST, FINAL_AVG_ACCURACY)

#: Figure file stems in page order, with the caption shown under each.
FIGURES: dict[str, str] = {
    "avg_accuracy": "Test accuracy averaged over the experiences seen so far, after each "
                    "experience (each arm's chosen config, or best config without a selection "
                    "table; band: ±1 std over seeds).",
    "accuracy_matrices": "Test accuracy matrix of each arm's config, averaged over seeds: row t "
                         "is the accuracy on every experience after training on experience t.",
    "forgetting": "Forgetting of each experience at the end of training, on the test data: its "
                  "best accuracy after it was learned minus its final accuracy.",
    "sensitivity": "The search: the test metric of every search trial against each searched "
                   "parameter; the star is each arm's chosen (or best) config, the dashed line "
                   "an arm without parameters.",
    "cost": "The search: the test metric against training time and peak memory; circled points "
            "joined by the black line form the Pareto front.",
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
.banner { background: #fde8e8; border: 2px solid #c0392b; color: #7b1d14; padding: 0.7em 1em;
          font-weight: 600; }
tr.on-test td { background: #fff4f2; } .warn { color: #c0392b; font-weight: 600; }
"""


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array is a value, not a missing one
        return False


def _number(value: Any, digits: int = 4) -> str:
    if _missing(value):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _mean_std(mean: Any, std: Any) -> str:
    if _missing(mean):
        return "n/a"
    return _number(mean) + ("" if _missing(std) else f" ± {_number(std)}")


def _count(value: Any) -> str:
    return "n/a" if _missing(value) else str(int(value))


def chosen_config_text(row: dict[str, Any]) -> str:
    """A selection row's chosen config for display: ``name=value, ...``; a per-experience
    schedule (a JSON list) as ``exp 0: ...; exp 1: ...``."""
    from raycl.analysis import format_config

    text = row.get(CHOSEN_CONFIG)
    try:
        config = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return str(text)
    if isinstance(config, dict):
        return format_config(config)
    if isinstance(config, list):
        return "; ".join(f"exp {i}: " + (format_config(c) if isinstance(c, dict) else str(c))
                         for i, c in enumerate(config))
    params = {param_name(k): v for k, v in row.items() if is_param_column(k) and not _missing(v)}
    return format_config(params) if params else "-"


def tested_arms(selection: pd.DataFrame) -> list[str]:
    """The arms (``study:arm`` with several studies) whose configs were chosen on the test
    data."""
    if selection.empty or SELECTION_SPLIT not in selection.columns:
        return []
    rows = selection[selection[SELECTION_SPLIT].astype(str) == TEST]
    if STUDY in rows.columns and selection[STUDY].nunique(dropna=True) > 1:
        return (rows[STUDY].astype(str) + ":" + rows[ARM].astype(str)).tolist()
    return rows[ARM].astype(str).tolist()


def banner_html(selection: pd.DataFrame) -> str:
    """The warning shown at the top of the page when any arm's config was chosen on the test
    data; "" otherwise."""
    arms = tested_arms(selection)
    if not arms:
        return ""
    return ('<p class="banner" role="alert">Configs were chosen on the test data '
            f"(selection_split = test) for {html.escape(', '.join(arms))}: their figures were "
            "measured on the data that chose them and are optimistic, not an estimate of how "
            "the config does on new data.</p>")


def selection_html(selection: pd.DataFrame, multi_study: bool) -> str:
    """The per-arm table of a study's ``selection.parquet``: chosen config, what it was chosen
    on, the reported figure and the confirmation; best reported figure first."""
    from raycl.analysis import arm_colors, arm_labels, higher_is_better

    better = pd.Series([1.0 if higher_is_better(str(m)) else -1.0
                        for m in selection[REPORTED_METRIC]], index=selection.index)
    table = selection.assign(
        _score=-better * pd.to_numeric(selection[REPORTED_MEAN], errors="coerce"))
    by = [STUDY, "_score"] if STUDY in table.columns else ["_score"]
    table = table.sort_values(by, na_position="last", kind="stable").reset_index(drop=True)
    labels = arm_labels(table)
    colors = arm_colors(labels)
    header = [ARM, "protocol", "chosen config", "selected on", "reported figure", "n",
              "reported phase", "confirmation"]
    if multi_study:
        header.insert(0, STUDY)
    rows = []
    for label, row in zip(labels, table.to_dict("records"), strict=True):
        on_test = str(row.get(SELECTION_SPLIT)) == TEST
        split = html.escape(str(row.get(SELECTION_SPLIT)))
        configs = row.get(CONFIGS_SEARCHED)
        selected = (f'<span class="warn">{split} (optimistic)</span>' if on_test
                    else f"<strong>{split}</strong>")
        selected += (f": {html.escape(str(row.get(SELECTION_METRIC)))} = "
                     f"{_number(row.get(SELECTION_VALUE))}"
                     + ("" if _missing(configs) else
                        f" ({_count(configs)} config{'s' * (int(configs) != 1)})"))
        confirm_n = row.get(CONFIRM_N)
        confirmation = ("none" if _missing(row.get(CONFIRM_MEAN))
                        else _mean_std(row.get(CONFIRM_MEAN), row.get(CONFIRM_STD))
                        + ("" if _missing(confirm_n) else f" (n={_count(confirm_n)})"))
        cells = [
            f'<td><span class="swatch" style="background:{colors[label]}"></span>'
            f"{html.escape(str(row[ARM]))}</td>",
            f"<td>{html.escape(str(row.get(PROTOCOL)))}</td>",
            f"<td>{html.escape(chosen_config_text(row))}</td>",
            f"<td>{selected}</td>",
            f"<td>{html.escape(str(row.get(REPORTED_METRIC)))} "
            f'<span class="num">{_mean_std(row.get(REPORTED_MEAN), row.get(REPORTED_STD))}'
            "</span></td>",
            f'<td class="num">{_count(row.get(REPORTED_N))}</td>',
            f"<td>{html.escape(str(row.get(REPORTED_PHASE)))}</td>",
            f'<td class="num">{confirmation}</td>',
        ]
        if multi_study:
            cells.insert(0, f"<td>{html.escape(str(row[STUDY]))}</td>")
        rows.append(('<tr class="on-test">' if on_test else "<tr>") + "".join(cells) + "</tr>")
    return ('<table class="summary" data-source="selection">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def summary_html(table: pd.DataFrame, multi_study: bool) -> str:
    """The summary table (as returned by :func:`raycl.analysis.summary`) as an HTML table."""
    from raycl.analysis import arm_colors, arm_labels, format_config

    metric = table.attrs.get("metric", "metric")
    mode = table.attrs.get("mode", "max")
    labels = arm_labels(table)
    colors = arm_colors(labels)
    header = [ARM, "best config", f"{metric} mean", "std over seeds", "seeds", "configs",
              "trials", "errored", "stopped early"]
    if multi_study:
        header.insert(0, STUDY)
    rows = []
    for label, row in zip(labels, table.to_dict("records"), strict=True):
        cells = [
            f'<td><span class="swatch" style="background:{colors[label]}"></span>'
            f"{html.escape(str(row[ARM]))}</td>",
            f"<td>{html.escape(format_config(row['best_config']))}</td>",
            f'<td class="num">{_number(row["mean"])}</td>',
            f'<td class="num">{_number(row["std"])}</td>',
            *(f'<td class="num">{int(row[c])}</td>' for c in (
                "n_seeds", "n_configs", "n_trials", "n_errored", "n_stopped")),
        ]
        if multi_study:
            cells.insert(0, f"<td>{html.escape(str(row[STUDY]))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="summary" data-source="search" data-metric="{html.escape(metric)}" '
            f'data-mode="{html.escape(mode)}">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


def _errors_html(trials: pd.DataFrame) -> str:
    errored = trials[trials[STATUS] == ERRORED]
    if errored.empty:
        return ""
    columns = [c for c in (STUDY, TRIAL_ID, ARM, SEED, ERROR) if c in errored.columns]
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in columns) + "</tr>"
        for _, row in errored.iterrows())
    return ("<h2>Errored trials</h2>\n<table><thead><tr>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns)
            + f"</tr></thead>\n<tbody>\n{body}\n</tbody></table>")


def render_html(trials: pd.DataFrame, table: pd.DataFrame, figures: list[str],
                source: str, selection: pd.DataFrame | None = None) -> str:
    """The report page: the per-arm table, then each figure (by PNG file name) with its caption.

    With a non-empty ``selection`` (``StudyResults.selection``) the per-arm table is
    :func:`selection_html`, under a banner when any arm was chosen on the test data; otherwise
    it is ``table`` (:func:`raycl.analysis.summary` of the search trials) as
    :func:`summary_html`.
    """
    studies = sorted(trials[STUDY].astype(str).unique()) if STUDY in trials.columns else []
    title = "Study report: " + (", ".join(studies) or source)
    metric = table.attrs.get("metric", "metric")
    mode = table.attrs.get("mode", "max")
    direction = "highest" if mode == "max" else "lowest"
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if selection is not None and len(selection):
        parts += [
            banner_html(selection),
            f'<p class="meta">Results: {html.escape(source)} &middot; {len(trials)} trials '
            f"&middot; generated {stamp} by <code>python -m raycl.report</code></p>",
            "<h2>Summary per arm</h2>",
            "<p>Each arm's config as the study chose it (<code>selection.parquet</code>): "
            "ranked on the split and metric under <em>selected on</em>. The reported figure is "
            "measured on the test data of the runs of the reported phase, so it is not the "
            "figure the config was chosen on (unless it was chosen on test); the confirmation "
            "reruns the chosen config on seeds the selection never saw.</p>",
            selection_html(selection, multi_study=len(studies) > 1),
        ]
        chosen = set(selection[STUDY].astype(str)) if STUDY in selection.columns else set()
        others = [s for s in studies if s not in chosen] if chosen else []
        if others and STUDY in table.columns:
            parts += [
                f"<h3>Studies without selection.parquet: {html.escape(', '.join(others))}</h3>",
                f"<p>Best config: the {direction} mean of <code>{html.escape(metric)}</code> "
                "over seeds among search trials (ranked and reported on the same data).</p>",
                summary_html(table[table[STUDY].astype(str).isin(others)], multi_study=True),
            ]
    else:
        parts += [
            f'<p class="meta">Results: {html.escape(source)} &middot; {len(trials)} trials '
            f"&middot; generated {stamp} by <code>python -m raycl.report</code></p>",
            "<h2>Summary per arm</h2>",
            f"<p>Best config: the {direction} mean of <code>{html.escape(metric)}</code> over "
            "seeds among search trials that completed every experience (no "
            "<code>selection.parquet</code>: ranked and reported on the same data).</p>",
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


def _unknown_metric(metric: str, trials: pd.DataFrame) -> str:
    message = f"metric {metric!r} is not a column of trials.parquet"
    if is_split_metric(metric) and split_column(TEST, metric) in trials.columns:
        message += f" (metrics are per split: did you mean {split_column(TEST, metric)!r}?)"
    return message


def write_report(results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 metric: str = DEFAULT_METRIC, mode: str = "max", dpi: int = 110) -> Path:
    """Render the figures of the study at ``results`` as PNG files and ``index.html`` in ``out``.

    ``metric`` (a trials column; default ``test_final_avg_accuracy``) is what the figures show
    and, without ``selection.parquet``, what ranks configs. ``out`` defaults to
    ``<results>/report`` (``reports/<name>`` for a URI). Returns the path of ``index.html``.
    """
    from raycl.analysis import load_study, search_trials, study_figures, summary

    source = os.fspath(results)
    data = load_study(source)
    if metric not in data.trials.columns:
        raise ValueError(_unknown_metric(metric, data.trials))
    if out is None:
        out = (Path("reports") / source.rstrip("/").rsplit("/", 1)[-1] if "://" in source
               else Path(source) / "report")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary(search_trials(data.trials), metric, mode)
    names = []
    figures = study_figures(data.trials, data.matrix, metric, mode, selection=data.selection)
    for stem in FIGURES:
        path = out_dir / f"{stem}.png"
        figures[stem].savefig(path, dpi=dpi, facecolor="white")
        names.append(path.name)
    index = out_dir / "index.html"
    # Written last and renamed into place, so a reader never sees a page without its images.
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(render_html(data.trials, table, names, source, data.selection),
                   encoding="utf-8")
    tmp.replace(index)
    return index


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m raycl.report RESULTS_DIR [--out DIR]``; returns the exit status."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m raycl.report",
        description="Write a study's figures (PNG) and an index.html with the per-arm table.")
    parser.add_argument("results", help="study directory <storage>/<study name> (or a URI), or a "
                        "storage directory holding several studies")
    parser.add_argument("--out", default=None,
                        help="output directory (default: RESULTS_DIR/report)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="trials column the figures show, and that ranks configs when the "
                        f"study has no selection.parquet (default: {DEFAULT_METRIC})")
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


__all__ = ["DEFAULT_METRIC", "FIGURES", "banner_html", "chosen_config_text", "main",
           "render_html", "selection_html", "summary_html", "tested_arms", "write_report"]
