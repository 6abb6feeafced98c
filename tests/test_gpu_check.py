"""The prepared GPU check (scripts/gpu_check.py, ``make gpu-check``): on a CPU machine it must
start and say there is no CUDA; its reading of a study's trials table is checked on the real
smoke study the analysis tests share. On a CUDA machine it is run by hand (NOTES.md)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from synthetic_study import study_results

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run the check")
def test_without_cuda_the_check_starts_and_says_so_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"gpu-check: no CUDA device (torch {torch.__version__}, built for CUDA none): "
        "nothing to check on this machine"]
    assert list(tmp_path.iterdir()) == []  # nothing run, nothing written


def test_most_at_once_counts_overlapping_trials():
    most_at_once = _gpu_check().most_at_once
    assert most_at_once([0, 1, 2, 3], [10, 10, 10, 10]) == 4
    assert most_at_once([0, 5, 10], [5, 10, 15]) == 1  # one ends as the next starts
    assert most_at_once([0, 0, 20], [30, 10, 25]) == 2
    assert most_at_once([], []) == 0


def test_study_figures_read_a_real_trials_table(tmp_path_factory):
    directory, kind = study_results(tmp_path_factory)
    if kind != "smoke":
        pytest.skip("needs the real smoke study")
    trials = pd.read_parquet(directory / "trials.parquet")
    lines = _gpu_check().study_figures(directory)
    done = (trials["status"] == "TERMINATED").sum()
    assert lines[0].startswith(f"{done}/{len(trials)} trials TERMINATED; devices ['cpu']")
    # on CPU every trial's gpu_ids is null: no per-GPU line
    assert not any(line.startswith("GPU ") for line in lines)
    assert lines[-1].startswith("mean test_final_avg_accuracy 0.")
