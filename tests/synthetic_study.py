"""Synthetic study results for the analysis tests: Parquet files in the study layer's schemas.

``write_synthetic_study(dir)`` writes ``trials.parquet``, ``matrix.parquet`` and
``curves.parquet`` as ``python -m raycl.study`` would for an EWC-vs-SI study on 5 experiences:
arms naive (no parameters), ewc (``ewc_lambda``), online_ewc (``ewc_lambda``, ``decay_factor``)
and si (``si_lambda``), a few configs per arm, each run with every seed, and one ERROR trial with a
partial matrix. The numbers follow a simple model of forgetting so the figures look like a real
study's: accuracy on an old experience decays with every new one, less so for a good penalty.

``study_results`` gives the tests their one study directory per session: the real smoke study
when the study layer exists, the synthetic one otherwise.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCHEMA_VERSION = 1
ARMS: dict[str, dict[str, tuple[str, float, float]]] = {
    # arm -> parameter -> (distribution, low, high)
    "naive": {},
    "ewc": {"ewc_lambda": ("log", 1.0, 1e4)},
    "online_ewc": {"ewc_lambda": ("log", 1.0, 1e4), "decay_factor": ("lin", 0.5, 1.0)},
    "si": {"si_lambda": ("log", 0.1, 10.0)},
}
_COST = {"naive": (0.8, 120.0), "ewc": (1.4, 160.0), "online_ewc": (1.5, 150.0),
         "si": (1.8, 170.0)}


def _retention(arm: str, params: dict[str, float]) -> float:
    """How much of an old experience's accuracy survives each new experience (0..1)."""
    if arm == "naive":
        return 0.25
    if arm in ("ewc", "online_ewc"):
        bump = math.exp(-((math.log10(params["ewc_lambda"]) - 2.5) ** 2) / 2.0)
        decay = params.get("decay_factor", 1.0)
        return 0.3 + 0.55 * bump * (0.8 + 0.2 * decay)
    return 0.3 + 0.5 * math.exp(-((math.log10(params["si_lambda"]) - 0.3) ** 2))


def _sample(kind: str, low: float, high: float, rng: np.random.Generator) -> float:
    if kind == "log":
        return float(10 ** rng.uniform(math.log10(low), math.log10(high)))
    return float(rng.uniform(low, high))


def make_synthetic_tables(study: str = "synth", seeds: Sequence[int] = (0, 1, 2),
                          n_experiences: int = 5, n_configs: int = 3, with_error: bool = True,
                          rng_seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables (trials, matrix, curves) of a synthetic study, as DataFrames."""
    rng = np.random.default_rng(rng_seed)
    param_names = sorted({p for space in ARMS.values() for p in space})
    t0 = pd.Timestamp("2026-11-21T12:00:00", tz="UTC")
    trials, matrix, curves = [], [], []
    number = 0
    for arm, space in ARMS.items():
        configs = [{}] if not space else [
            {p: _sample(*spec, rng) for p, spec in space.items()} for _ in range(n_configs)]
        for index, config in enumerate(configs):
            keep = _retention(arm, config)
            for seed in seeds:
                number += 1
                trial_id = f"{number:05d}"
                # One ewc run fails after two experiences, leaving a partial matrix behind.
                errored = with_error and arm == "ewc" and index == 0 and seed == seeds[-1]
                done = 2 if errored else n_experiences
                noise = rng.normal(0.0, 0.02)
                acc = np.full((n_experiences, n_experiences), np.nan)
                for t in range(done):
                    for j in range(n_experiences):
                        if j > t:  # class-incremental: unseen classes are never predicted
                            acc[t, j] = 0.0
                        else:
                            acc[t, j] = np.clip(0.97 * keep ** (t - j) + noise
                                                + rng.normal(0.0, 0.01), 0.0, 1.0)
                last = acc[done - 1]
                base_time, base_mem = _COST[arm]
                row = {
                    "study": study, "trial_id": trial_id,
                    "trial_key": f"{arm}-{zlib.crc32(repr(config).encode()):08x}-s{seed}",
                    "arm": arm, "seed": seed,
                    **{f"param_{p}": config.get(p, np.nan) for p in param_names},
                    "status": "ERROR" if errored else "TERMINATED",
                    "error": "RuntimeError: loss is NaN" if errored else None,
                    "experiences_done": done,
                    "final_avg_accuracy": np.nan if errored else float(last.mean()),
                    "avg_forgetting": np.nan if errored else float(np.mean(
                        [acc[j:-1, j].max() - last[j] for j in range(n_experiences - 1)])),
                    "bwt": np.nan if errored else float(np.mean(
                        [last[j] - acc[j, j] for j in range(n_experiences - 1)])),
                    "fwt": np.nan if errored else 0.0,
                    "train_time_s": base_time * (1 + 0.1 * rng.normal()) * done / n_experiences,
                    "peak_memory_mb": base_mem + 5 * rng.normal(),
                    "device": "cpu", "gpu_ids": "", "node_ip": "127.0.0.1",
                    "started_at": t0 + pd.Timedelta(seconds=2 * number),
                    "finished_at": t0 + pd.Timedelta(seconds=2 * number + 1.5),
                    "schema_version": SCHEMA_VERSION,
                }
                trials.append(row)
                for t in range(done):
                    for j in range(n_experiences):
                        matrix.append({"study": study, "trial_id": trial_id,
                                       "trial_key": row["trial_key"], "arm": arm, "seed": seed,
                                       "trained_exp": t, "eval_exp": j,
                                       "accuracy": float(acc[t, j]),
                                       "loss": float(-math.log(max(acc[t, j], 1e-3))),
                                       "schema_version": SCHEMA_VERSION})
                    curves.append({"study": study, "trial_id": trial_id,
                                   "trial_key": row["trial_key"], "arm": arm, "seed": seed,
                                   "experience": t, "training_iteration": t + 1,
                                   "avg_accuracy": float(acc[t, : t + 1].mean()),
                                   "stream_accuracy": float(acc[t].mean()),
                                   "schema_version": SCHEMA_VERSION})
    return pd.DataFrame(trials), pd.DataFrame(matrix), pd.DataFrame(curves)


def write_synthetic_study(directory: str | os.PathLike[str], drop_columns: Sequence[str] = (),
                          **kwargs: object) -> str:
    """Write a synthetic study's three Parquet files into ``directory``; returns its path.

    ``drop_columns`` removes optional trials columns (e.g. ``fwt``, ``peak_memory_mb``) to check
    that the analysis copes with studies that did not record them.
    """
    os.makedirs(directory, exist_ok=True)
    trials, matrix, curves = make_synthetic_tables(**kwargs)  # type: ignore[arg-type]
    trials = trials.drop(columns=list(drop_columns))
    for name, frame in (("trials", trials), ("matrix", matrix), ("curves", curves)):
        frame.to_parquet(os.path.join(directory, f"{name}.parquet"), index=False)
    return os.fspath(directory)


# --------------------------------------------------------------------------- the study fixture

REPO = Path(__file__).resolve().parents[1]
_STUDY_CACHE: dict[str, tuple[Path, str]] = {}


def study_layer_available() -> bool:
    """Whether the study CLI and the default study file exist in this checkout."""
    return (REPO / "raycl" / "study" / "__main__.py").is_file() and (
        REPO / "studies" / "ewc_vs_si.py").is_file()


def study_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A study directory for the analysis, report and notebook tests, made once per session.

    With the study layer present this runs the real smoke study
    (``python -m raycl.study studies/ewc_vs_si.py --smoke``, the only study the analysis tests
    run); otherwise it writes the synthetic study. ``RAYCL_TEST_STUDY_DIR`` names an existing
    study directory to use instead. Returns (directory, "smoke" | "synthetic" | "given").
    Cached at module level so test modules that each declare a session fixture share one run.
    """
    if "dir" in _STUDY_CACHE:
        return _STUDY_CACHE["dir"]
    reuse = os.environ.get("RAYCL_TEST_STUDY_DIR")
    if reuse:  # a developer's shortcut: an existing study directory instead of a new run
        _STUDY_CACHE["dir"] = (Path(reuse), "given")
        return _STUDY_CACHE["dir"]
    if not study_layer_available():
        directory = Path(write_synthetic_study(tmp_path_factory.mktemp("storage") / "synth"))
        _STUDY_CACHE["dir"] = (directory, "synthetic")
        return _STUDY_CACHE["dir"]
    storage = tmp_path_factory.mktemp("smoke_storage")
    command = [sys.executable, "-m", "raycl.study", "studies/ewc_vs_si.py", "--smoke",
               "--storage", str(storage)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"smoke study failed (exit {done.returncode}): {' '.join(command)}\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    found = sorted(p.parent for p in storage.rglob("trials.parquet"))
    if len(found) != 1:
        pytest.fail(f"smoke study wrote {len(found)} trials.parquet files under {storage}")
    print(f"smoke study: {time.perf_counter() - started:.1f} s -> {found[0]}")
    _STUDY_CACHE["dir"] = (found[0], "smoke")
    return _STUDY_CACHE["dir"]
