"""``python -m raycl.report``: PNG figures and an index.html with the summary table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_study import REPO, study_results, write_synthetic_study

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
    assert {p.stem for p in pngs} == set(report.FIGURES)
    for png in pngs:
        _check_png(png)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(p.name for p in pngs)
    # The summary table lists every arm with its mean metric.
    table = rca.summary(rca.load_study(study_dir).trials)
    summary_html = page[page.index('<table class="summary"'):]
    summary_html = summary_html[:summary_html.index("</table>")]
    for row in table.itertuples():
        assert f"</span>{row.arm}</td>" in summary_html
        if row.n_seeds:
            assert f"{row.mean:.4f}" in summary_html
    assert summary_html.count("<tr>") == len(table) + 1  # header + one row per arm


def test_report_defaults_and_errored_trials(tmp_path: Path) -> None:
    study = Path(write_synthetic_study(tmp_path / "synth"))
    assert report.main([str(study)]) == 0
    page = (study / "report" / "index.html").read_text(encoding="utf-8")
    assert "Errored trials" in page and "RuntimeError: loss is NaN" in page
    assert "ewc_lambda=" in page  # best configs are spelled out
    # Ranking by another metric and mode: the page says which, and ranks by it.
    trials = rca.load_study(study).trials
    table = rca.summary(trials, metric="avg_forgetting", mode="min")
    page = report.render_html(trials, table, ["cost.png"], str(study))
    assert "<th>avg_forgetting mean</th>" in page and "lowest mean" in page
    assert page.index(f"</span>{table.arm[0]}<") < page.index(f"</span>{table.arm[3]}<")
    assert table["mean"].is_monotonic_increasing


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trials.parquet" in err
    study = write_synthetic_study(tmp_path / "synth")
    assert report.main([study, "--metric", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    shutil.rmtree(study)
