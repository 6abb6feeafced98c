"""The analysis notebooks: committed without outputs, and they run headless and draw figures
(on the session's study, and on a synthetic study with a selection table)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from synthetic_study import REPO, study_results, write_synthetic_study

NOTEBOOKS = ("compare_arms", "sensitivity", "search", "cost")


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's study (the real smoke study when the study layer exists)."""
    return study_results(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def venv_kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A "python3" kernelspec that runs this interpreter, first on the Jupyter path.

    Without it a user-level python3 kernelspec (in ~/.local/share/jupyter) could start another
    Python that lacks raycl; JUPYTER_PATH is searched before every other location.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (raycl venv)", "language": "python"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root))
        yield "python3"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "analysis" / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name: str) -> None:
    notebook = _read(name)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert 'STUDY_DIR = os.environ.get("RAYCL_STUDY_DIR", "results/ewc_vs_si")' in code[0].source
    assert len(notebook.cells) <= 12  # short
    # The committed file is what analysis/build_notebooks.py writes (one source of truth).
    spec = importlib.util.spec_from_file_location("build_notebooks",
                                                  REPO / "analysis" / "build_notebooks.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    built = builder.build(name, builder.NOTEBOOKS[name])
    assert [c.source for c in built.cells] == [c.source for c in notebook.cells]


def _run(name: str, study: Path, kernel: str, monkeypatch: pytest.MonkeyPatch
         ) -> tuple[list[nbformat.NotebookNode], str]:
    """Execute a notebook on ``study``: its code cells' outputs and everything it printed."""
    monkeypatch.setenv("RAYCL_STUDY_DIR", str(study))  # the kernel inherits it
    notebook = _read(name)
    client = NotebookClient(notebook, kernel_name=kernel, timeout=120,
                            resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result")
              and "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    return outputs, printed


@pytest.mark.ray  # uses the smoke study, which starts Ray once per session
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_headless_and_draws(name: str, study_dir: Path, venv_kernel: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, printed = _run(name, study_dir, venv_kernel, monkeypatch)
    # The notebook loaded the study it was pointed at, not the default path.
    assert "trials," in printed
    if name == "search":  # importance on what the study chose configs on, not on test
        assert "importance computed on valid_final_avg_accuracy (max)" in printed


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_make_notebooks_installs_jupyterlab_and_opens_the_study() -> None:
    """`make notebooks STUDY_DIR=...` installs the notebooks extra (JupyterLab) and starts it on
    analysis/ with RAYCL_STUDY_DIR set; the test install keeps what this file needs, not
    JupyterLab."""
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    needed = {"nbclient", "nbformat", "ipykernel", "jupyter-client"}
    assert needed | {"jupyterlab"} <= _names(extras["notebooks"])
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    default = re.search(r"RAYCL_EXTRAS:-([\w,-]+)", bootstrap)
    assert default is not None
    installed = set().union(*(_names(extras[e]) for e in default[1].split(",")))
    assert needed <= installed and "jupyterlab" not in installed
    # A dry run (-n) of every step (-B): nothing is installed or started.
    plan = subprocess.run(["make", "-n", "-B", "notebooks", "STUDY_DIR=runs/my_study"],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert 'pip install --quiet -e ".[notebooks]"' in plan
    assert 'RAYCL_STUDY_DIR="runs/my_study" .venv/bin/jupyter lab analysis/' in plan
    assert plan.index(".[notebooks]") < plan.index("jupyter lab")


@pytest.mark.parametrize("name", ["compare_arms", "sensitivity"])
def test_notebook_uses_the_selection_table(name: str, tmp_path: Path, venv_kernel: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On a study that chose its configs on test data: the notebook warns, and compare_arms's
    per-arm table is the selection table."""
    study = Path(write_synthetic_study(tmp_path / "synth", selection_split="test"))
    outputs, printed = _run(name, study, venv_kernel, monkeypatch)
    n_trials = len(pd.read_parquet(study / "trials.parquet"))
    assert f"{n_trials} trials," in printed
    assert "WARNING: configs were chosen on the test data" in printed
    if name == "compare_arms":
        tables = [o["data"]["text/plain"] for o in outputs if o.output_type == "execute_result"
                  and "text/plain" in o.get("data", {})]
        assert any("reported_mean" in t and "selection_split" in t for t in tables)
