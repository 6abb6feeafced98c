"""``python -m raycl.report``: PNG figures and an index.html with the summary table."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from synthetic_study import MATCHED_ARMS, REPO, study_results, write_synthetic_study

import raycl.analysis as rca
import raycl.report as report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's study (the real smoke study when the study layer exists)."""
    return study_results(tmp_path_factory)[0]


def _check_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5_000, (path, len(data))  # a real figure, not an empty canvas
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert height >= 300 and width >= 500, (path, image.shape)
    assert image[..., :3].std() > 0.05, path  # something is drawn on it


@pytest.mark.ray  # uses the smoke study, which starts Ray once per session
def test_report_command_renders_pngs_and_html(study_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "raycl.report", str(study_dir), "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert str(out / "index.html") in done.stdout
    pngs = sorted(out.glob("*.png"))
    always = {"avg_accuracy", "accuracy_matrices", "forgetting", "sensitivity",
              "parallel_coordinates", "cost"}
    assert always <= {p.stem for p in pngs} <= set(report.FIGURES)
    for png in pngs:
        _check_png(png)
    page = (out / "index.html").read_text(encoding="utf-8")
    # The views of the search say what they are computed on, and why one is not drawn.
    assert "Computed on <code>valid_final_avg_accuracy</code> (validation split)" in page
    for stem in set(report.FIGURES) - {p.stem for p in pngs}:
        assert html.escape(report._NOT_DRAWN[stem]) in page, stem
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(p.name for p in pngs)
    # The per-arm table lists every arm with its figure: the reported one when the study chose
    # configs (selection.parquet), else the search summary's mean.
    results = rca.load_study(study_dir)
    summary_html = page[page.index('<table class="summary"'):]
    summary_html = summary_html[:summary_html.index("</table>")]
    if len(results.selection):
        assert 'data-source="selection"' in summary_html
        for row in results.selection.itertuples():
            assert f"</span>{row.arm}</td>" in summary_html
            assert f"{row.reported_mean:.4f}" in summary_html
        assert summary_html.count("<tr") == len(results.selection) + 1
        assert ('class="banner"' in page) == (results.selection["selection_split"] == "test").any()
    else:
        table = rca.summary(rca.search_trials(results.trials))
        for row in table.itertuples():
            assert f"</span>{row.arm}</td>" in summary_html
            if row.n_seeds:
                assert f"{row.mean:.4f}" in summary_html
        assert summary_html.count("<tr>") == len(table) + 1  # header + one row per arm


def test_report_defaults_and_errored_trials(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "synth"))
    # An importance figure of an earlier report must not survive a report that has none.
    (study / "report").mkdir()
    (study / "report" / "importance.png").write_bytes(b"stale")
    assert report.main([str(study)]) == 0
    page = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "Errored trials" in page and "RuntimeError: loss is NaN" in page
    assert "ewc_lambda=" in page  # chosen configs are spelled out
    # 3 configs per arm: importance is a table that says why, with no figure.
    assert not (study / "report" / "importance.png").exists()
    assert "Parameter importance: no figure" in page and "too few configs" in page
    assert 'src="param_pairs.png"' in page and 'src="parallel_coordinates.png"' in page
    # Ranking by another metric and mode: the page says which, and ranks by it.
    trials = rca.load_study(study).trials
    table = rca.summary(trials, metric="test_avg_forgetting", mode="min")
    page = report.render_html(trials, table, ["cost.png"], str(study))
    assert "<th>test_avg_forgetting mean</th>" in page and "lowest mean" in page
    assert page.index(f"</span>{table.arm[0]}<") < page.index(f"</span>{table.arm[3]}<")
    assert table["mean"].is_monotonic_increasing


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trials.parquet" in err
    # The study command's form: one prefix whichever raycl command failed.
    assert err.startswith("raycl: error: ") and report.ERROR_PREFIX == "raycl: error: "
    study = write_synthetic_study(tmp_path / "synth")
    assert report.main([study, "--metric", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    # A metric named without its split: the error names the test column.
    assert report.main([study, "--metric", "final_avg_accuracy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'test_final_avg_accuracy'" in err
    # Tables of a schema version this raycl does not know: refused in one line.
    trials = pd.read_parquet(Path(study) / "trials.parquet").assign(schema_version=3)
    trials.to_parquet(Path(study) / "trials.parquet", index=False)
    assert report.main([study]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "schema_version 3" in err
    shutil.rmtree(study)


def _table(page: str) -> str:
    table = page[page.index('<table class="summary"'):]
    return table[:table.index("</table>")]


def test_report_table_comes_from_the_selection(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "valid"))
    results = rca.load_study(study)
    index = report.write_report(study, tmp_path / "out", dpi=40)
    page = index.read_text(encoding="utf-8")
    table = _table(page)
    assert 'data-source="selection"' in table
    assert 'class="banner"' not in page  # chosen on validation: nothing to warn about
    header = re.findall(r"<th>([^<]+)</th>", table)
    assert header == ["arm", "chosen config", "selected on", "reported mean [interval]",
                      "interval", "n", "verdict"]
    rows = table.split("<tr")[2:]
    assert len(rows) == len(results.selection)
    selection = results.selection.set_index("arm")
    # Best reported figure first.
    order = [re.search(r"</span>([^<]+)</td>", r)[1] for r in rows]  # type: ignore[index]
    assert order == selection["reported_mean"].sort_values(ascending=False).index.tolist()
    for arm, row in zip(order, rows, strict=True):
        chosen = selection.loc[arm]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        config = rca.format_config(json.loads(chosen["chosen_config"]))
        assert html.unescape(cells[1]) == config
        searched = "1 config" if arm == "naive" else "3 configs"
        assert cells[2] == (f'<strong>valid</strong> <span class="num">'
                            f"{chosen['selection_value']:.4f}</span><br><span class=\"small\">"
                            f"valid_final_avg_accuracy, {searched}</span>")
        # The reported mean with its confidence interval, and how it was computed.
        assert cells[3] == (f"{chosen['reported_mean']:.4f} <span class=\"ci\">"
                            f"[{chosen['reported_low']:.4f}, {chosen['reported_high']:.4f}]"
                            "</span><br><span class=\"small\">test_final_avg_accuracy, "
                            "confirm runs</span>")
        assert cells[4] == "95% t"
        verdict = "<br>".join(html.escape(part) for part in chosen["verdict"].split("; "))
        assert cells[5:7] == [str(chosen["reported_n"]), verdict]
        assert "±" not in row  # an interval, not mean ± std
    # The figure shown is the reported one, not the search mean of the chosen config.
    assert f"{selection.loc['ewc', 'search_test_mean']:.4f}" not in table
    # The command's page has the comparisons and the settings too.
    assert "<h2>Paired comparisons</h2>" in page and '<h2 id="settings">Settings</h2>' in page


def _section(page: str, start: str, end: str = "</table>") -> str:
    part = page[page.index(start):]
    return part[:part.index(end)]


def _page(study: Path) -> str:
    """The report page of ``study`` as write_report writes it, without rendering figures."""
    results = rca.load_study(study)
    table = rca.summary(rca.search_trials(results.trials))
    return report.render_html(results.trials, table, [f"{s}.png" for s in report.FIGURES],
                              str(study), results.selection, results.comparisons,
                              results.study_settings)


def test_report_shows_comparisons_and_settings(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "s"))
    results = rca.load_study(study)
    page = _page(study)
    # The verdicts are in the per-arm table, the tests behind them in a table below it.
    summary = _table(page)
    for verdict in results.selection["verdict"]:
        assert html.escape(verdict.split(";")[0]) in summary
    assert page.index('<table class="summary"') < page.index("<h2>Paired comparisons</h2>")
    comparisons = _section(page, '<table class="comparisons">')
    assert re.findall(r"<th>([^<]+)</th>", comparisons) == [
        "arm", "vs", "shared seeds", "mean difference (arm − vs) [interval]", "p", "Holm p",
        "significant", "note"]
    rows = comparisons.split("<tr")[2:]
    assert len(rows) == len(results.comparisons)
    drawn = {tuple(re.findall(r"<td[^>]*>(.*?)</td>", r)[:2]): r for r in rows}
    for c in results.comparisons.itertuples():
        row = drawn[(c.arm, f"{c.reference} ({c.reference_kind})")]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[2] == str(c.n_pairs)
        assert cells[3] == (f"{c.mean_diff:+.4f} <span class=\"ci\">[{c.diff_low:+.4f}, "
                            f"{c.diff_high:+.4f}]</span>")
        assert cells[4:6] == [f"{c.p_value:.3g}", f"{c.p_holm:.3g}"]
        assert cells[6] == ("<strong>yes</strong>" if c.significant else "no")
    assert results.comparisons["significant"].any()  # both kinds of row are shown
    assert "paired t-test" in page and "Holm" in page
    # Settings from study.json, at the end.
    settings = page[page.index('<h2 id="settings">'):]
    assert page.index("<h2>Figures</h2>") < page.index('<h2 id="settings">')
    facts = dict(re.findall(r"<tr><th>([^<]+)</th><td>(.*?)</td></tr>", settings))
    assert facts["benchmark"].startswith("name=split_digits, n_experiences=5")
    assert facts["model"].startswith("name=auto") and "name=sgd" in facts["optimizer"]
    assert "selection=valid" in facts["selection protocol"]
    assert facts["seeds"] == "[0, 1, 2]" and facts["confirm seeds"] == "[10, 11]"
    assert "torch=2.13.0+cpu" in facts["versions"]
    assert results.settings["study_file_sha256"] in facts["study file"]
    arms = _section(settings, '<table class="arms">')
    assert "<code>ewc_lambda</code></td><td><code>loguniform(1, 10000)</code></td><td>log" in arms
    assert "<code>decay_factor</code></td><td><code>uniform(0.5, 1)</code></td><td></td>" in arms
    assert "(no parameters)" in arms
    # A study without study.json or comparisons (older results): no such sections.
    old = Path(write_synthetic_study(tmp_path / "old", settings=None))
    (old / "comparisons.parquet").unlink()
    page = _page(old)
    assert "Paired comparisons" not in page and 'id="settings"' not in page
    assert 'data-source="selection"' in page


def test_report_groups_arms_at_matched_memory(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "gem", study="gem", arms=MATCHED_ARMS))
    results = rca.load_study(study)
    page = _page(study)
    table = _table(page)
    header = re.findall(r"<th>([^<]+)</th>", table)
    assert header[:2] == ["arm", "patterns_per_experience"]
    rows = table.split("<tr")[2:]
    arms = [re.search(r"</span>([^<]+)</td>", r)[1] for r in rows]  # type: ignore[index]
    memory = [re.findall(r"<td[^>]*>(.*?)</td>", r)[1] for r in rows]
    # Methods at the same memory sit together, smallest memory first, the baseline last;
    # within a group, the best reported figure first.
    assert memory == ["16", "16", "64", "64", "–"]
    selection = results.selection.set_index("arm")
    for group in (arms[:2], arms[2:4]):
        assert {a.split("_m")[1] for a in group} == {group[0].split("_m")[1]}
        assert selection.loc[group, "reported_mean"].is_monotonic_decreasing
    assert arms[-1] == "naive"
    assert [('class="group-start"' in r.split(">")[0]) for r in rows] == [
        False, False, True, False, True]
    assert "grouped by patterns_per_experience" in page
    # The comparisons follow the same order.
    comparisons = _section(page, '<table class="comparisons">')
    first = [re.search(r"<td>([^<]+)</td>", r)[1]  # type: ignore[index]
             for r in comparisons.split("<tr")[2:]]
    assert list(dict.fromkeys(first)) == [a for a in arms if a in set(first)]
    # A study whose arms hold nothing constant gets no such column.
    plain = Path(write_synthetic_study(tmp_path / "plain"))
    page = _page(plain)
    assert "patterns_per_experience" not in page and "group-start" not in _table(page)


def test_report_banner_when_configs_were_chosen_on_test(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "on_test", selection_split="test"))
    page = report.write_report(study, tmp_path / "out", dpi=40).read_text(encoding="utf-8")
    assert page.index('class="banner"') < page.index('<table class="summary"')
    banner = page[page.index('class="banner"'):]
    banner = banner[:banner.index("</p>")]
    assert "chosen on the test data" in banner and "optimistic" in banner
    assert _table(page).count('<tr class="on-test">') == 4
    # No selection table: the search summary, as before selection existed, and no banner.
    bare = Path(write_synthetic_study(tmp_path / "bare", with_selection=False))
    page = _page(bare)
    assert 'data-source="search"' in _table(page) and 'class="banner"' not in page
    assert "<th>test_final_avg_accuracy mean</th>" in page


def test_report_of_studies_with_and_without_selection(tmp_path: Path) -> None:
    write_synthetic_study(tmp_path / "a", study="a")
    write_synthetic_study(tmp_path / "b", study="b", with_selection=False, rng_seed=1)
    results = rca.load_study(tmp_path)
    table = rca.summary(rca.search_trials(results.trials))
    page = report.render_html(results.trials, table, [], str(tmp_path), results.selection)
    chosen = _table(page)
    assert 'data-source="selection"' in chosen and "<th>study</th>" in chosen
    assert chosen.count("<td>a</td>") == 4 and "<td>b</td>" not in chosen
    # Study b has no selection table: its arms are in the search summary under it.
    rest = _table(page[page.index("Studies without selection.parquet: b"):])
    assert 'data-source="search"' in rest
    assert rest.count("<td>b</td>") == 4 and "<td>a</td>" not in rest


def test_report_importance_table_says_what_it_is_computed_on(tmp_path: Path) -> None:
    study = write_synthetic_study(tmp_path / "synth", n_configs=8)
    results = rca.load_study(study)
    importance = rca.param_importance(results.trials, results.selection, results.settings)
    table = rca.summary(rca.search_trials(results.trials))
    names = ["sensitivity.png", "importance.png", "parallel_coordinates.png", "cost.png"]
    page = report.render_html(results.trials, table, names, study, results.selection,
                              results.comparisons, results.settings, importance)
    section = _section(page, "<h3>Parameter importance</h3>")
    assert "Computed on <code>valid_final_avg_accuracy</code> (validation split)" in section
    rows = {(r.arm, r.parameter): r for r in importance.itertuples()}
    ranked = rows[("online_ewc", "ewc_lambda")]
    assert ranked.status == "computed"
    assert f"{ranked.importance:.2f} ± {ranked.importance_std:.2f}" in section
    assert section.count("its only parameter: 1 by definition") == 2  # ewc and si
    # Page order: sensitivity, the importance table and figure, parallel coordinates, cost; the
    # two-parameter view not drawn says so.
    order = [page.index(x) for x in ('src="sensitivity.png"', "<h3>Parameter importance",
                                      'src="importance.png"', 'src="parallel_coordinates.png"',
                                      "Two-parameter view: no figure", 'src="cost.png"')]
    assert order == sorted(order)
