"""A static report of a study: the analysis figures as PNG files plus one ``index.html``.

``python -m raycl.report RESULTS_DIR [--out DIR]`` needs no Jupyter: it loads the study's Parquet
files with :func:`raycl.analysis.load_study`, renders :func:`raycl.analysis.study_figures` with the
Agg backend, and writes a page that shows them under the per-arm table.

The per-arm table comes from ``selection.parquet`` when the study has one: each arm's chosen
config, what it was chosen on (split, metric, value), the figure to report (measured on the test
data of runs the choice never saw) with its confidence interval, and its verdict against the best
arm and the baseline, with a banner when a study chose on the test data. Arms that hold a
parameter constant at different values (memory sizes: ``gem_m16``, ``agem_m16``, ``gem_m32``...)
are grouped by it (:func:`raycl.analysis.matched_params`). Below it: the paired comparisons behind
the verdicts (``comparisons.parquet``) and, at the end of the page, the study's settings
(``study.json``). Without ``selection.parquet``, the table ranks the search trials on the test
metric, as before selection existed. Accuracy is the test split's throughout; figures say so,
and every spread they draw is a 95 % Student-t confidence interval over seeds. The views of each
arm's search (parameter importance with its table, parallel coordinates, two parameters against
each other) read the metric the study chose configs on, validation under the default protocol,
and are drawn only where they have something to show (the page says why one is not). Errors are
one line on stderr, ``raycl: error: ...``, exit status 2.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from raycl.study.schema import (
    ARM,
    CHOSEN_CONFIG,
    CONFIGS_SEARCHED,
    CONFIGS_UNRANKED,
    ERROR,
    ERRORED,
    FINAL_AVG_ACCURACY,
    INTERVAL,
    PROTOCOL,
    REPORTED_HIGH,
    REPORTED_LOW,
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
    VERDICT,
    is_param_column,
    is_split_metric,
    param_name,
    split_column,
)

#: The metric the report ranks and plots by default: final average accuracy on the test split.
DEFAULT_METRIC = split_column(TEST, FINAL_AVG_ACCURACY)

_INTERVAL = "95% t interval over seeds"

#: Figure file stems in page order, with the caption shown under each.
FIGURES: dict[str, str] = {
    "avg_accuracy": "Test accuracy averaged over the experiences seen so far, after each "
                    "experience (each arm's chosen config, or best config without a selection "
                    f"table; band: {_INTERVAL}, the number of seeds in the legend).",
    "accuracy_matrices": "Test accuracy matrix of each arm's config, averaged over seeds: row t "
                         "is the accuracy on every experience after training on experience t.",
    "forgetting": "Forgetting of each experience at the end of training, on the test data: its "
                  "best accuracy after it was learned minus its final accuracy (error bars: "
                  f"{_INTERVAL}).",
    "sensitivity": "The search: the test metric of every search trial against each parameter an "
                   "arm searches, one panel per arm and parameter (circles: configs, mean with "
                   f"its {_INTERVAL}); the star is each arm's chosen (or best) config, the dashed "
                   "line an arm that searches nothing. The x axis is logarithmic for a parameter "
                   "the arm searches on a log scale (study.json). Arms are never pooled; an "
                   "arm that searches several parameters varies the others under each panel's "
                   "points (the parallel coordinates below show its configs whole).",
    "importance": "The search, per arm: how much of the variation of the metric the study chose "
                  "configs on (validation, under the default protocol) each parameter accounts "
                  "for: permutation importance of a random forest fitted to the arm's configs, "
                  "normalised to sum to 1 per arm. Drawn only for arms with two or more "
                  "parameters and enough configs (the table above says why an arm is not).",
    "parallel_coordinates": "The search, per arm: one line per config (mean over its seeds) "
                            "through an axis per searched parameter (log where searched on a "
                            "log scale) and one for the metric the study chose configs on, "
                            "coloured by that metric on one scale for every arm; the thick "
                            "outlined line is the chosen config.",
    "param_pairs": "The search of each arm that searches exactly two parameters: one against "
                   "the other, a dot per config coloured and labelled by the metric the study "
                   "chose configs on (mean over seeds); the star is the chosen config.",
    "cost": "The search: the test metric against training time and, for trials that ran on "
            "CUDA, the trial's peak GPU memory; circled points joined by the black line form the "
            "Pareto front. Diamonds: each arm's chosen config on the runs of its reported figure, "
            f"mean with its {_INTERVAL} on both axes. On CPU the recorded peak is the worker "
            "process's since it started (several trials run in turn in one process), not the "
            "trial's own, so no memory panel is drawn for CPU trials.",
}
#: Why a figure of :data:`FIGURES` is missing from a report (it has nothing to draw).
_NOT_DRAWN: dict[str, str] = {
    "importance": "Parameter importance: no figure, no arm has two or more searched parameters "
                  "and enough configs to rank them (see the table).",
    "parallel_coordinates": "Parallel coordinates: no figure, no arm searches a parameter.",
    "param_pairs": "Two-parameter view: no figure, no arm searches exactly two parameters.",
}
#: The prefix of a one-line error on stderr, the study command's (``python -m raycl.study``).
ERROR_PREFIX = "raycl: error: "

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.92em; }
.wide { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; border: 1px solid #555; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; } .meta { color: #666; font-size: 0.9em; }
.banner { background: #fde8e8; border: 2px solid #c0392b; color: #7b1d14; padding: 0.7em 1em;
          font-weight: 600; }
tr.on-test td { background: #fff4f2; } .warn { color: #c0392b; font-weight: 600; }
tr.group-start td { border-top: 2px solid #666; } td.group { font-weight: 600; }
.ci { color: #555; white-space: nowrap; } .nowrap { white-space: nowrap; }
tr.significant td { background: #f1f8ee; } .small { color: #666; font-size: 0.85em; }
table.settings th { width: 11em; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
            font-size: 0.9em; }
details pre { background: #f7f7f7; border: 1px solid #ddd; padding: 0.6em; font-size: 0.85em;
              max-height: 30em; overflow: auto; }
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


def _interval_cells(row: Mapping[str, Any]) -> tuple[str, str]:
    """The reported mean with its interval, and how the interval was computed."""
    mean, low, high = row.get(REPORTED_MEAN), row.get(REPORTED_LOW), row.get(REPORTED_HIGH)
    if _missing(mean):
        return "n/a", ""
    if not _missing(low) and not _missing(high):
        method = row.get(INTERVAL)
        return (f'{_number(mean)} <span class="ci">[{_number(low)}, {_number(high)}]</span>',
                html.escape("interval" if _missing(method) else str(method)))
    n = row.get(REPORTED_N)
    if not _missing(n) and int(n) < 2:
        return _number(mean), "one seed: none"
    if not _missing(row.get(REPORTED_STD)):  # a table written before intervals were recorded
        return (f"{_number(mean)} ± {_number(row.get(REPORTED_STD))}",
                "± std (no interval recorded)")
    return _number(mean), "none recorded"


def _group_value(value: Any) -> str:
    from raycl.analysis import format_value

    return "–" if _missing(value) else html.escape(format_value(value))


def _sort_arms(table: pd.DataFrame, score: pd.Series, group_by: Sequence[str]) -> pd.DataFrame:
    """Rows by study, then by the grouping parameters (arms without them last), then best
    score first."""
    keys = [c for c in group_by if c in table.columns]
    by = ([STUDY] if STUDY in table.columns else []) + keys + ["_score"]
    return (table.assign(_score=score).sort_values(by, na_position="last", kind="stable")
            .reset_index(drop=True))


def _group_starts(table: pd.DataFrame, group_by: Sequence[str]) -> list[bool]:
    """Whether each row starts a new group of the grouping parameters (not the first row)."""
    keys = [c for c in group_by if c in table.columns]
    if not keys:
        return [False] * len(table)
    values = [tuple(_group_value(row[c]) for c in keys) for row in table.to_dict("records")]
    return [i > 0 and values[i] != values[i - 1] for i in range(len(values))]


def selection_order(selection: pd.DataFrame, group_by: Sequence[str] = ()) -> pd.DataFrame:
    """The selection table in the order the report shows it: by study, by the grouping
    parameters ``group_by`` (``param_<name>`` columns, arms without them last), then best
    reported figure first."""
    from raycl.analysis import higher_is_better

    better = pd.Series([1.0 if higher_is_better(str(m)) else -1.0
                        for m in selection[REPORTED_METRIC]], index=selection.index)
    score = -better * pd.to_numeric(selection[REPORTED_MEAN], errors="coerce")
    return _sort_arms(selection, score, group_by)


def selection_html(selection: pd.DataFrame, multi_study: bool,
                   group_by: Sequence[str] = ()) -> str:
    """The per-arm table of a study's ``selection.parquet``: chosen config, what it was chosen
    on, the reported mean with its confidence interval (and the metric and phase it was measured
    on), the interval's method, the number of seeds and the verdict; best reported figure
    first.

    ``group_by`` (``param_<name>`` columns, e.g. from :func:`raycl.analysis.matched_params`)
    adds a column per parameter and groups rows by it, so that arms at the same memory budget
    sit together (arms without the parameter last).
    """
    from raycl.analysis import arm_colors, arm_labels

    group_by = [c for c in group_by if c in selection.columns]
    table = selection_order(selection, group_by)
    labels = arm_labels(table)
    colors = arm_colors(labels)
    header = [ARM, *(param_name(c) for c in group_by), "chosen config", "selected on",
              "reported mean [interval]", "interval", "n", "verdict"]
    if multi_study:
        header.insert(0, STUDY)
    rows = []
    starts = _group_starts(table, group_by)
    for start, label, row in zip(starts, labels, table.to_dict("records"), strict=True):
        on_test = str(row.get(SELECTION_SPLIT)) == TEST
        split = html.escape(str(row.get(SELECTION_SPLIT)))
        configs, unranked = row.get(CONFIGS_SEARCHED), row.get(CONFIGS_UNRANKED)
        selected = (f'<span class="warn">{split} (optimistic)</span>' if on_test
                    else f"<strong>{split}</strong>")
        protocol = row.get(PROTOCOL)
        if not _missing(protocol) and str(protocol) != str(row.get(SELECTION_SPLIT)):
            selected += f" ({html.escape(str(protocol))} protocol)"
        counted = [] if _missing(configs) else [
            f"{_count(configs)} config{'s' * (int(configs) != 1)}"]
        if not _missing(unranked) and int(unranked):
            counted.append(f"{_count(unranked)} unranked")
        selected += (f' <span class="num">{_number(row.get(SELECTION_VALUE))}</span><br>'
                     f'<span class="small">{html.escape(str(row.get(SELECTION_METRIC)))}'
                     + (f", {', '.join(counted)}" if counted else "") + "</span>")
        figure, method = _interval_cells(row)
        phase = ("" if _missing(row.get(REPORTED_PHASE))
                 else f", {html.escape(str(row.get(REPORTED_PHASE)))} runs")
        verdict = "" if _missing(row.get(VERDICT)) else str(row.get(VERDICT))
        # "≈ best; > baseline": one comparison a line.
        verdict_html = "<br>".join(html.escape(part.strip()) for part in verdict.split(";"))
        cells = [
            f'<td class="nowrap"><span class="swatch" style="background:{colors[label]}">'
            f"</span>{html.escape(str(row[ARM]))}</td>",
            *(f'<td class="num group">{_group_value(row[c])}</td>' for c in group_by),
            f"<td>{html.escape(chosen_config_text(row))}</td>",
            f"<td>{selected}</td>",
            f'<td class="num nowrap">{figure}<br><span class="small">'
            f"{html.escape(str(row.get(REPORTED_METRIC)))}{phase}</span></td>",
            f'<td class="nowrap">{method}</td>',
            f'<td class="num">{_count(row.get(REPORTED_N))}</td>',
            f'<td class="verdict nowrap">{verdict_html or "–"}</td>',
        ]
        if multi_study:
            cells.insert(0, f"<td>{html.escape(str(row[STUDY]))}</td>")
        classes = [c for c, on in (("on-test", on_test), ("group-start", start)) if on]
        rows.append((f'<tr class="{" ".join(classes)}">' if classes else "<tr>")
                    + "".join(cells) + "</tr>")
    return ('<div class="wide"><table class="summary" data-source="selection">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _p_value(value: Any) -> str:
    if _missing(value):
        return "n/a"
    value = float(value)
    return "< 0.0001" if 0.0 < value < 1e-4 else f"{value:.3g}"


def _signed(value: Any) -> str:
    return "n/a" if _missing(value) else f"{float(value):+.4f}"


_TESTS = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}


def comparisons_html(comparisons: pd.DataFrame, multi_study: bool,
                     order: Sequence[tuple[str, str]] = ()) -> str:
    """The paired comparisons of ``comparisons.parquet`` as a table: arm, what it is compared
    with (the best arm or the baseline), the shared seeds, the mean difference with its interval,
    the p-value, the Holm-corrected p-value and whether the difference is significant.

    ``order``: ``(study, arm)`` pairs in the order the per-arm table lists them (rows follow it;
    each arm's comparison with the best before the one with the baseline).
    """
    position = {key: i for i, key in enumerate(order)}
    study = (comparisons[STUDY].astype(str) if STUDY in comparisons.columns
             else pd.Series("", index=comparisons.index))
    rank = [position.get((s, str(a)), len(position))
            for s, a in zip(study, comparisons[ARM], strict=True)]
    table = comparisons.assign(_rank=rank).sort_values("_rank", kind="stable")
    header = [ARM, "vs", "shared seeds", "mean difference (arm − vs) [interval]", "p",
              "Holm p", "significant", "note"]
    if multi_study:
        header.insert(0, STUDY)
    rows = []
    for row in table.to_dict("records"):
        significant = bool(row.get("significant")) and not _missing(row.get("significant"))
        cells = [
            f"<td>{html.escape(str(row[ARM]))}</td>",
            f"<td>{html.escape(str(row.get('reference')))} "
            f"({html.escape(str(row.get('reference_kind')))})</td>",
            f'<td class="num">{_count(row.get("n_pairs"))}</td>',
            f'<td class="num">{_signed(row.get("mean_diff"))} <span class="ci">'
            f"[{_signed(row.get('diff_low'))}, {_signed(row.get('diff_high'))}]</span></td>",
            f'<td class="num">{_p_value(row.get("p_value"))}</td>',
            f'<td class="num">{_p_value(row.get("p_holm"))}</td>',
            f"<td>{'<strong>yes</strong>' if significant else 'no'}</td>",
            f'<td class="small">{html.escape(str(row.get("note") or ""))}</td>',
        ]
        if multi_study:
            cells.insert(0, f"<td>{html.escape(str(row.get(STUDY)))}</td>")
        rows.append(('<tr class="significant">' if significant else "<tr>")
                    + "".join(cells) + "</tr>")
    return ('<div class="wide"><table class="comparisons">\n<thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table></div>")


def _comparisons_intro(comparisons: pd.DataFrame) -> str:
    tests = sorted({_TESTS.get(str(t), str(t)) for t in comparisons.get("test", [])
                    if not _missing(t)})
    return ("<p>Each arm's reported runs against the best arm's and the baseline's, paired over "
            f"the seeds both ran ({html.escape(' / '.join(tests) or 'paired test')}, "
            "two-sided). The interval is the 95% t interval of the paired differences; "
            "<em>Holm p</em> is corrected (Holm–Bonferroni) across the study's comparisons, and "
            "a difference is significant when it is below 0.05. The verdicts above read these "
            "rows: <em>≈</em> not distinguishable, <em>&lt;</em> / <em>&gt;</em> significantly "
            "lower / higher, <em>?</em> too few shared seeds to test.</p>")


def _text(value: Any) -> str:
    """A settings value for people: ``name=value, ...`` for a mapping (None left out), JSON
    for a list, "–" for nothing."""
    if value is None or value == {} or value == []:
        return "–"
    if isinstance(value, Mapping):
        # The name first ("name=split_digits, n_experiences=5"), the rest as stored.
        keys = sorted(value, key=lambda k: k != "name")
        return ", ".join(
            f"{k}={_text(value[k]) if isinstance(value[k], (Mapping, list)) else value[k]}"
            for k in keys if value[k] is not None) or "–"
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


def _settings_rows(settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, HTML) rows of the settings section, in reading order."""
    get = settings.get
    protocol = {k: get(k) for k in ("selection", "metric", "mode", "search", "num_samples",
                                    "scheduler", "tuning_experiences", "min_seeds",
                                    "interval", "paired_test") if k in settings}
    training = {k: get(k) for k in ("train_epochs", "train_mb_size", "eval_mb_size")
                if k in settings}
    rows = [
        ("study", html.escape(str(get("name", "–")))
         + (f' <span class="small">{html.escape(str(get("description")))}</span>'
            if get("description") else "")),
        ("benchmark", html.escape(_text(get("benchmark")))),
        ("model", html.escape(_text(get("model")))),
        ("optimizer", html.escape(_text(get("optimizer")))),
        ("training", html.escape(_text(training))),
        ("selection protocol", html.escape(_text(protocol))),
        ("seeds", html.escape(_text(get("seeds")))),
        ("confirm seeds", html.escape(_text(get("confirm_seeds")))),
        ("versions", html.escape(_text(get("versions")))),
        ("study file", f"<code>{html.escape(str(get('study_file', '–')))}</code>"
         + (f'<br><span class="small">sha256 <code>'
            f"{html.escape(str(get('study_file_sha256')))}</code></span>"
            if get("study_file_sha256") else "")),
    ]
    return rows


def _arms_html(settings: Mapping[str, Any]) -> str:
    """Each arm's search space as the study file wrote it, one row per parameter."""
    rows = []
    for arm in settings.get("arms") or []:
        if not isinstance(arm, Mapping):
            continue
        name = html.escape(str(arm.get("name", "?")))
        role = "baseline" if arm.get("baseline") else ""
        space = arm.get("space") or {}
        log = set(arm.get("log_scale") or ())
        if not space:
            rows.append(f"<tr><td>{name}</td><td>{role}</td><td colspan=\"3\">"
                        "(no parameters)</td></tr>")
        for k, (param, text) in enumerate(space.items()):
            scale = "log" if param in log else ""
            rows.append("<tr>" + (f'<td rowspan="{len(space)}">{name}</td>'
                                  f'<td rowspan="{len(space)}">{role}</td>' if k == 0 else "")
                        + f"<td><code>{html.escape(str(param))}</code></td>"
                        f"<td><code>{html.escape(str(text))}</code></td><td>{scale}</td></tr>")
    return ('<table class="arms"><thead><tr><th>arm</th><th>role</th><th>parameter</th>'
            "<th>space</th><th>scale</th></tr></thead>\n<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table>")


def settings_html(settings: Mapping[str, Any], heading: str = "h3") -> str:
    """A study's ``study.json`` (``StudyResults.settings``) for people: benchmark, model,
    optimizer, training, selection protocol, seeds, confirmation seeds, versions, the study file
    and its hash, each arm's search space as text, and the whole JSON folded away."""
    body = "\n".join(f"<tr><th>{html.escape(label)}</th><td>{value}</td></tr>"
                      for label, value in _settings_rows(settings))
    return (f'<table class="settings">\n<tbody>\n{body}\n</tbody></table>\n'
            f"<{heading}>Search space of each arm</{heading}>\n{_arms_html(settings)}\n"
            "<details><summary>study.json</summary><pre>"
            f"{html.escape(json.dumps(settings, indent=1, sort_keys=True))}</pre></details>")


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


def _by_study(settings: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """``settings`` as study name -> settings: one study's (a dict with ``arms``:
    ``StudyResults.settings``) or already such a mapping (``StudyResults.study_settings``)."""
    if not settings:
        return {}
    if "arms" in settings:
        return {str(settings.get("name", "")): settings}
    return {str(k): v for k, v in settings.items() if isinstance(v, Mapping) and v}


def render_html(trials: pd.DataFrame, table: pd.DataFrame, figures: list[str],
                source: str, selection: pd.DataFrame | None = None,
                comparisons: pd.DataFrame | None = None,
                settings: Mapping[str, Any] | None = None,
                importance: pd.DataFrame | None = None) -> str:
    """The report page: the per-arm table, the paired comparisons, each figure (by PNG file
    name, in :data:`FIGURES`'s order) with its caption, the errored trials, then the study's
    settings. A :func:`raycl.analysis.param_importance` table (``importance``) is shown before
    the importance figure, with a sentence for each view of the search not in ``figures``.

    With a non-empty ``selection`` (``StudyResults.selection``) the per-arm table is
    :func:`selection_html` (rows grouped by :func:`raycl.analysis.matched_params` of
    ``trials``), under a banner when any arm was chosen on the test data; otherwise it is
    ``table`` (:func:`raycl.analysis.summary` of the search trials) as :func:`summary_html`.
    A non-empty ``comparisons`` (``StudyResults.comparisons``) is shown by
    :func:`comparisons_html`; ``settings`` (``StudyResults.study_settings``, or one study's
    ``StudyResults.settings``) by :func:`settings_html`.
    """
    from raycl.analysis import matched_params

    studies = sorted(trials[STUDY].astype(str).unique()) if STUDY in trials.columns else []
    multi = len(studies) > 1
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
    meta = (f'<p class="meta">Results: {html.escape(source)} &middot; {len(trials)} trials '
            f"&middot; generated {stamp} by <code>python -m raycl.report</code></p>")
    if selection is not None and len(selection):
        group_by = [c for c in matched_params(trials) if c in selection.columns]
        grouped = (f" Rows are grouped by {', '.join(html.escape(param_name(c)) for c in group_by)}"
                   ", which each arm holds constant: arms in a group compare at the same "
                   "setting." if group_by else "")
        parts += [
            banner_html(selection),
            meta,
            "<h2>Summary per arm</h2>",
            "<p>Each arm's config as the study chose it (<code>selection.parquet</code>): "
            "ranked on the split and metric under <em>selected on</em>. The reported mean is "
            "measured on the test data of the runs of the reported phase (the confirmation "
            "reruns the chosen config on seeds the selection never saw), so it is not the "
            "figure the config was chosen on, unless it was chosen on test. The bracket is the "
            "confidence interval of that mean over its <em>n</em> seeds, computed as "
            "<em>interval</em> says; the <em>verdict</em> compares the arm with the best arm "
            "and the baseline (paired tests below)." + grouped + "</p>",
            selection_html(selection, multi_study=multi, group_by=group_by),
        ]
        if comparisons is not None and len(comparisons):
            ordered = selection_order(selection, group_by)
            order = list(zip(ordered[STUDY].astype(str) if STUDY in ordered.columns
                             else [""] * len(ordered), ordered[ARM].astype(str), strict=True))
            parts += ["<h2>Paired comparisons</h2>", _comparisons_intro(comparisons),
                      comparisons_html(comparisons, multi_study=multi, order=order)]
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
            meta,
            "<h2>Summary per arm</h2>",
            f"<p>Best config: the {direction} mean of <code>{html.escape(metric)}</code> over "
            "seeds among search trials that completed every experience (no "
            "<code>selection.parquet</code>: ranked and reported on the same data).</p>",
            summary_html(table, multi_study=multi),
        ]
    if figures or importance is not None:
        parts.append("<h2>Figures</h2>")
    drawn = {name.removesuffix(".png"): name for name in figures}
    # Page order: FIGURES's, then any other figure given; a view of the search that had nothing
    # to draw gets its sentence instead.
    stems = [s for s in FIGURES if s in drawn or (importance is not None and s in _NOT_DRAWN)]
    for stem in [*stems, *(s for s in drawn if s not in FIGURES)]:
        if stem == "importance" and importance is not None:
            parts.append(importance_html(importance))
        if stem not in drawn:
            parts.append(f'<p class="small not-drawn">{html.escape(_NOT_DRAWN[stem])}</p>')
            continue
        name = drawn[stem]
        caption = FIGURES.get(stem, stem.replace("_", " "))
        parts.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(stem)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append(_errors_html(trials))
    by_study = _by_study(settings)
    if by_study:
        parts.append('<h2 id="settings">Settings</h2>')
        parts.append("<p>The study as it ran (<code>study.json</code> beside the results; the "
                     "same JSON is in each Parquet file's metadata).</p>")
        for name, values in by_study.items():
            if len(by_study) > 1:
                parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(settings_html(values, heading="h4" if len(by_study) > 1 else "h3"))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def importance_html(importance: pd.DataFrame) -> str:
    """A :func:`raycl.analysis.param_importance` table as HTML: per arm and parameter its
    importance (or why there is none), the configs it was fitted to, and, above the table, the
    metric and split it is computed on."""
    from raycl.analysis import arm_colors

    metric = str(importance.attrs.get("metric", ""))
    split = str(importance.attrs.get("split", ""))
    words = {"valid": "validation", "test": "test"}
    intro = (f"<h3>Parameter importance</h3>\n<p>Computed on <code>{html.escape(metric)}</code> "
             f"({html.escape(words.get(split, split or 'no'))} split), the metric the study "
             "chose configs on, over each arm's search configs (mean over seeds): permutation "
             "importance of a random forest (scikit-learn) fitted to them, parameters searched "
             "on a log scale in log space, normalised to sum to 1 per arm. An arm needs "
             f"{int(importance.attrs.get('min_configs', 0))} configs for its parameters to be "
             "ranked; with fewer, a fit would rank noise.</p>")
    if importance.empty:
        return intro + "<p>No arm searches a parameter.</p>"
    colors = arm_colors(importance["arm"].astype(str))
    notes = {"one parameter": "its only parameter: 1 by definition, nothing to rank",
             "too few configs": "too few configs to rank its parameters",
             "no signal": "the metric is the same for every config",
             "computed": ""}
    rows = []
    for row in importance.to_dict("records"):
        value = {"computed": f"{row['importance']:.2f} ± {row['importance_std']:.2f}",
                 "one parameter": "1"}.get(str(row["status"]), "–")
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colors[str(row["arm"])]}"></span>'
            f"{html.escape(str(row['arm']))}</td><td><code>{html.escape(str(row['parameter']))}"
            f'</code></td><td class="num">{value}</td>'
            f'<td class="num">{int(row["n_configs"])}</td>'
            f"<td>{html.escape(notes.get(str(row['status']), str(row['status'])))}</td></tr>")
    return (intro + '\n<table class="importance"><thead><tr><th>arm</th><th>parameter</th>'
            "<th>importance ± std over shuffles</th><th>configs</th><th>note</th></tr></thead>"
            "\n<tbody>\n" + "\n".join(rows) + "\n</tbody></table>")


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
    from raycl.analysis import (
        load_study,
        param_importance,
        search_trials,
        selection_metric,
        study_figures,
        summary,
    )

    source = os.fspath(results)
    data = load_study(source)
    if metric not in data.trials.columns:
        raise ValueError(_unknown_metric(metric, data.trials))
    if out is None:
        # a URI's query (?endpoint_override=...) configures its file system: not a name
        out = (Path("reports") / source.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
               if "://" in source else Path(source) / "report")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary(search_trials(data.trials), metric, mode)
    names = []
    importance = None
    try:
        column = selection_metric(data.trials, data.selection, data.study_settings)[0]
    except ValueError:  # studies that chose on different metrics: no search views
        column = ""
    if column in data.trials.columns:
        importance = param_importance(data.trials, data.selection, data.study_settings)
    figures = study_figures(data.trials, data.matrix, metric, mode, selection=data.selection,
                            settings=data.study_settings, importance=importance)
    for stem in FIGURES:
        stale = out_dir / f"{stem}.png"
        if stem not in figures:
            # A figure an earlier report drew and this one does not: no stale image remains.
            stale.unlink(missing_ok=True)
            continue
        figures[stem].savefig(stale, dpi=dpi, facecolor="white")
        names.append(stale.name)
    index = out_dir / "index.html"
    # Written last and renamed into place, so a reader never sees a page without its images.
    tmp = index.with_suffix(".html.tmp")
    tmp.write_text(render_html(data.trials, table, names, source, data.selection,
                               data.comparisons, data.study_settings, importance),
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
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


__all__ = ["DEFAULT_METRIC", "ERROR_PREFIX", "FIGURES", "banner_html", "chosen_config_text",
           "comparisons_html", "importance_html",
           "main", "render_html", "selection_html", "selection_order", "settings_html",
           "summary_html", "tested_arms", "write_report"]
