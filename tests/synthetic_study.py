"""Synthetic study results for the analysis tests: Parquet files in the study layer's schemas.

``write_synthetic_study(dir)`` writes ``trials.parquet``, ``matrix.parquet``, ``curves.parquet``,
``selection.parquet``, ``comparisons.parquet`` (schema version 2) and ``study.json`` as ``python
-m raycl.study`` would for an EWC-vs-SI study on 5 experiences with 'valid' selection: arms naive
(no parameters, the baseline), ewc (``ewc_lambda``, log-uniform), online_ewc (``ewc_lambda``
log-uniform, ``decay_factor`` uniform) and si (``si_lambda``, log-uniform), a few configs per
arm, each run with every search seed (phase ``search``), one ERROR search trial with a partial
matrix, and each arm's chosen config rerun on fresh seeds (phase ``confirm``). The selection rows
carry the reported mean's 95 % t interval and a verdict from the paired comparisons
(``raycl.study.stats``). The numbers follow a simple model of forgetting so the figures look like
a real study's: accuracy on an old experience decays with every new one, less so for a good
penalty. ``arms=MATCHED_ARMS`` gives a GEM-vs-A-GEM study at matched memory instead (a constant
``patterns_per_experience`` per arm).

Validation and test disagree on purpose: in every arm that searches, the config with the best
mean test accuracy over the search seeds does markedly worse on the validation split, so the
config chosen on validation (what ``selection.parquet`` records) is never the test-best one.

``study_results`` gives the tests their one study directory per session: the real smoke study
when the study layer exists, the synthetic one otherwise.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from raycl.study.schema import (
    COMPARISONS_TABLE,
    CONFIRM,
    FINAL_METRICS,
    SCHEMA_VERSION,
    SEARCH,
    SELECTION_HEAD,
    SELECTION_TAIL,
    SPLITS,
    TEST,
    VALID,
    accuracy_column,
    split_column,
)
from raycl.study.stats import interval, paired_comparisons, verdict

ARMS: dict[str, dict[str, tuple[str, float, float]]] = {
    # arm -> parameter -> (distribution, low, high): "log" (loguniform), "lin" (uniform), or
    # "const" (the value low, the same in every trial)
    "naive": {},
    "ewc": {"ewc_lambda": ("log", 1.0, 1e4)},
    "online_ewc": {"ewc_lambda": ("log", 1.0, 1e4), "decay_factor": ("lin", 0.5, 1.0)},
    "si": {"si_lambda": ("log", 0.1, 10.0)},
}
#: GEM and A-GEM at matched memory: one arm per (method, patterns per experience), a constant.
MATCHED_ARMS: dict[str, dict[str, tuple[str, float, float]]] = {
    "naive": {},
    **{f"{method}_m{m}": {"patterns_per_experience": ("const", m, m), knob: spec}
       for m in (16, 64)
       for method, knob, spec in (("gem", "memory_strength", ("lin", 0.0, 1.0)),
                                  ("agem", "sample_size", ("log", 16.0, 256.0)))},
}
_COST = {"naive": (0.8, 120.0), "ewc": (1.4, 160.0), "online_ewc": (1.5, 150.0),
         "si": (1.8, 170.0)}
TEST_FINAL = split_column(TEST, "final_avg_accuracy")
VALID_FINAL = split_column(VALID, "final_avg_accuracy")


def _retention(arm: str, params: dict[str, float]) -> float:
    """How much of an old experience's accuracy survives each new experience (0..1)."""
    if arm == "naive":
        return 0.25
    if "patterns_per_experience" in params:  # more memory forgets less; GEM a little less
        knob = params.get("memory_strength", 0.5) + math.log2(params.get("sample_size", 64)) / 16
        return min(0.9, 0.3 + 0.1 * math.log2(params["patterns_per_experience"] / 8)
                   + 0.05 * arm.startswith("gem") + 0.05 * knob)
    if arm in ("ewc", "online_ewc"):
        bump = math.exp(-((math.log10(params["ewc_lambda"]) - 2.5) ** 2) / 2.0)
        decay = params.get("decay_factor", 1.0)
        return 0.3 + 0.55 * bump * (0.8 + 0.2 * decay)
    return 0.3 + 0.5 * math.exp(-((math.log10(params["si_lambda"]) - 0.3) ** 2))


def _sample(kind: str, low: float, high: float, rng: np.random.Generator) -> float:
    if kind == "const":
        return low
    if kind == "log":
        return float(10 ** rng.uniform(math.log10(low), math.log10(high)))
    return float(rng.uniform(low, high))


def _matrix(keep: float, offset: float, done: int, n: int, noise: float,
            rng: np.random.Generator) -> np.ndarray:
    """An accuracy matrix (NaN rows past ``done``) of a run that keeps ``keep`` per experience."""
    acc = np.full((n, n), np.nan)
    for t in range(done):
        for j in range(n):
            if j > t:  # class-incremental: unseen classes are never predicted
                acc[t, j] = 0.0
            else:
                acc[t, j] = np.clip(0.97 * keep ** (t - j) + offset + noise
                                    + rng.normal(0.0, 0.01), 0.0, 1.0)
    return acc


def _final_metrics(acc: np.ndarray, done: int, split: str) -> dict[str, float]:
    n = acc.shape[0]
    if done < n:
        return {split_column(split, m): math.nan for m in FINAL_METRICS}
    last = acc[-1]
    return {
        split_column(split, "final_avg_accuracy"): float(last.mean()),
        split_column(split, "avg_forgetting"): float(np.mean(
            [acc[j:-1, j].max() - last[j] for j in range(n - 1)])),
        split_column(split, "bwt"): float(np.mean([last[j] - acc[j, j] for j in range(n - 1)])),
        split_column(split, "fwt"): 0.0,
    }


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    series = pd.Series(list(values), dtype=float).dropna()
    return float(series.mean()), float(series.std()), int(series.count())


def _space_text(spec: tuple[str, float, float]) -> str:
    """A parameter's space as ``raycl.study.settings.space_text`` writes it."""
    kind, low, high = spec
    if kind == "const":
        return repr(low)
    return f"{'loguniform' if kind == 'log' else 'uniform'}({low:g}, {high:g})"


def synthetic_settings(study: str = "synth", seeds: Sequence[int] = (0, 1, 2),
                       n_experiences: int = 5, confirm_seeds: Sequence[int] = (10, 11),
                       selection_split: str = VALID,
                       arms: dict[str, dict[str, tuple[str, float, float]]] | None = None
                       ) -> dict[str, Any]:
    """The study.json of the synthetic study (``raycl.study.settings.resolved_settings``'s
    layout)."""
    arms = ARMS if arms is None else arms
    return {
        "name": study, "description": "synthetic EWC vs SI",
        "benchmark": {"name": "split_digits", "n_experiences": n_experiences, "seed": 0,
                      "scenario": None, "validation_size": 0.1},
        "model": {"name": "auto", "hidden_size": 256, "hidden_layers": 2, "drop_rate": 0.0},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "train_epochs": 1, "train_mb_size": 32, "eval_mb_size": 256,
        "seeds": list(seeds), "num_samples": 3, "metric": "final_avg_accuracy", "mode": "max",
        "search": "random", "selection": selection_split, "confirm_seeds": list(confirm_seeds),
        "interval": "t", "paired_test": "t", "min_seeds": None,
        "arms": [{"name": arm, "baseline": arm == "naive",
                  "space": {p: _space_text(spec) for p, spec in space.items()},
                  "log_scale": sorted(p for p, spec in space.items() if spec[0] == "log"),
                  "stability": None, "stability_start": None}
                 for arm, space in arms.items()],
        "study_file": "studies/synthetic.py",
        "study_file_sha256": "0123456789abcdef" * 4,
        "versions": {"raycl": "0.1.0", "torch": "2.13.0+cpu", "ray": "2.60.0",
                     "python": "3.11.7"},
        "schema_version": SCHEMA_VERSION,
    }


def make_synthetic_tables(**kwargs: Any
                          ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The four tables (trials, matrix, curves, selection) of a synthetic version-2 study
    (arguments: :func:`make_synthetic_study_tables`)."""
    tables = make_synthetic_study_tables(**kwargs)
    return tables["trials"], tables["matrix"], tables["curves"], tables["selection"]


def make_synthetic_study_tables(
        study: str = "synth", seeds: Sequence[int] = (0, 1, 2), n_experiences: int = 5,
        n_configs: int = 3, with_error: bool = True, rng_seed: int = 0,
        confirm_seeds: Sequence[int] = (10, 11), selection_split: str = VALID,
        arms: dict[str, dict[str, tuple[str, float, float]]] | None = None
) -> dict[str, pd.DataFrame]:
    """Every table of a synthetic version-2 study: trials, matrix, curves, selection and
    comparisons, by table name.

    ``selection_split`` is the split configs are chosen on (``"test"``: the old behaviour, the
    protocol a study asks for explicitly). Without ``confirm_seeds`` there is no confirm phase
    and the reported figures are the chosen config's search runs. ``arms`` replaces
    :data:`ARMS` (e.g. :data:`MATCHED_ARMS`). The comparisons are
    :func:`synthetic_comparisons` of the reported runs.
    """
    if selection_split not in SPLITS:
        raise ValueError(f"selection_split must be one of {SPLITS}, got {selection_split!r}")
    arms = ARMS if arms is None else arms
    rng = np.random.default_rng(rng_seed)
    n = n_experiences
    param_names = sorted({p for space in arms.values() for p in space})
    t0 = pd.Timestamp("2026-11-21T12:00:00", tz="UTC")
    # One entry per run: (phase, arm, config index, config, seed, errored, done, {split: acc}).
    runs: list[dict[str, Any]] = []
    arm_configs: dict[str, list[dict[str, float]]] = {}
    for arm, space in arms.items():
        configs = [{}] if not space else [
            {p: _sample(*spec, rng) for p, spec in space.items()} for _ in range(n_configs)]
        arm_configs[arm] = configs
        for index, config in enumerate(configs):
            for seed in seeds:
                # One ewc run fails after two experiences, leaving a partial matrix behind.
                errored = (with_error and arm == list(arms)[1] and index == 0
                           and seed == seeds[-1])
                done = 2 if errored else n
                noise = rng.normal(0.0, 0.02)
                runs.append({"phase": SEARCH, "arm": arm, "index": index, "config": config,
                             "seed": seed, "errored": errored, "done": done, "noise": noise,
                             "acc": {TEST: _matrix(_retention(arm, config), 0.0, done, n, noise,
                                                   rng)}})
    # Validation disagrees with test: each searching arm's test-best config looks poor on it.
    valid_keep: dict[tuple[str, int], tuple[float, float]] = {}
    test_best: dict[str, int] = {}
    for arm, configs in arm_configs.items():
        means = [np.mean([r["acc"][TEST][-1].mean() for r in runs if r["arm"] == arm
                          and r["index"] == i and not r["errored"]]) for i in range(len(configs))]
        test_best[arm] = int(np.nanargmax(means))
        lowest = min(_retention(arm, c) for c in configs)
        for i, config in enumerate(configs):
            penalised = len(configs) > 1 and i == test_best[arm]
            valid_keep[(arm, i)] = ((0.5 * lowest, -0.05) if penalised
                                    else (_retention(arm, config), 0.0))
    for run in runs:
        keep, offset = valid_keep[(run["arm"], run["index"])]
        run["acc"][VALID] = _matrix(keep, offset, run["done"], n, run["noise"], rng)
    # The selection: per arm, the best mean of the selection split over the search seeds.
    metric = split_column(selection_split, "final_avg_accuracy")
    chosen: dict[str, int] = {}
    for arm, configs in arm_configs.items():
        means = [np.mean([r["acc"][selection_split][-1].mean() for r in runs
                          if r["arm"] == arm and r["index"] == i and not r["errored"]])
                 for i in range(len(configs))]
        chosen[arm] = int(np.nanargmax(means))
        for seed in confirm_seeds:
            config = configs[chosen[arm]]
            noise = rng.normal(0.0, 0.02)
            keep, offset = valid_keep[(arm, chosen[arm])]
            runs.append({"phase": CONFIRM, "arm": arm, "index": chosen[arm], "config": config,
                         "seed": seed, "errored": False, "done": n, "noise": noise,
                         "acc": {TEST: _matrix(_retention(arm, config), 0.0, n, n, noise, rng),
                                 VALID: _matrix(keep, offset, n, n, noise, rng)}})
    trials, matrix, curves = [], [], []
    for number, run in enumerate(runs, start=1):
        arm, config, seed, done, acc = (run["arm"], run["config"], run["seed"], run["done"],
                                        run["acc"])
        trial_id = f"{number:05d}"
        trial_key = f"{arm}-{zlib.crc32(repr(config).encode()):08x}-{run['phase']}-s{seed}"
        head = {"study": study, "trial_id": trial_id, "trial_key": trial_key,
                "phase": run["phase"], "arm": arm, "seed": seed}
        base_time, base_mem = _COST.get(arm, (1.0 + 0.1 * len(arm), 130.0 + 2 * len(arm)))
        trials.append({
            **head,
            **{f"param_{p}": config.get(p, np.nan) for p in param_names},
            "status": "ERROR" if run["errored"] else "TERMINATED",
            "error": "RuntimeError: loss is NaN" if run["errored"] else None,
            "experiences_done": done,
            **_final_metrics(acc[VALID], done, VALID),
            **_final_metrics(acc[TEST], done, TEST),
            "train_time_s": base_time * (1 + 0.1 * rng.normal()) * done / n,
            "peak_memory_mb": base_mem + 5 * rng.normal(),
            "device": "cpu", "gpu_ids": "", "node_ip": "127.0.0.1",
            "started_at": t0 + pd.Timedelta(seconds=2 * number),
            "finished_at": t0 + pd.Timedelta(seconds=2 * number + 1.5),
            "checkpoint": f"/storage/{study}/_ray/{trial_id}/checkpoint_{done - 1:06d}",
            "schema_version": SCHEMA_VERSION,
        })
        for split in SPLITS:
            for t in range(done):
                for j in range(n):
                    matrix.append({**head, "split": split, "trained_exp": t, "eval_exp": j,
                                   "accuracy": float(acc[split][t, j]),
                                   "loss": float(-math.log(max(acc[split][t, j], 1e-3))),
                                   "schema_version": SCHEMA_VERSION})
        for t in range(done):
            curves.append({**head, "experience": t, "training_iteration": t + 1,
                           **{split_column(s, "avg_accuracy"): float(acc[s][t, : t + 1].mean())
                              for s in SPLITS},
                           **{split_column(s, "stream_accuracy"): float(acc[s][t].mean())
                              for s in SPLITS},
                           **{accuracy_column(j, s): float(acc[s][t, j])
                              for s in SPLITS for j in range(n)},
                           "schema_version": SCHEMA_VERSION})
    trials_frame = pd.DataFrame(trials)
    selection = []
    reported_phase = CONFIRM if len(confirm_seeds) else SEARCH
    reported_runs = []
    for arm, configs in arm_configs.items():
        config = configs[chosen[arm]]
        rows = trials_frame[(trials_frame["arm"] == arm) & (trials_frame["status"] == "TERMINATED")]
        of_config = rows.loc[[runs[i]["index"] == chosen[arm] for i in rows.index]]
        search = of_config[of_config["phase"] == SEARCH]
        confirm = of_config[of_config["phase"] == CONFIRM]
        reported = confirm if len(confirm_seeds) else search
        reported_runs.append(reported)
        confirm_stats = _stats(confirm[TEST_FINAL]) if len(confirm) else (math.nan, math.nan, 0)
        ci = interval(reported[TEST_FINAL].to_numpy(), 0.95, "t")
        selection.append({
            "study": study, "arm": arm,
            "protocol": selection_split, "selection_split": selection_split,
            "selection_metric": metric, "selection_value": float(search[metric].mean()),
            "configs_searched": len(configs), "configs_unranked": 0,
            "search_seeds": json.dumps(list(seeds)),
            "chosen_config": json.dumps(config),
            **{f"param_{p}": config.get(p, np.nan) for p in param_names},
            "reported_phase": reported_phase, "reported_metric": TEST_FINAL,
            "reported_mean": ci.mean, "reported_std": ci.std, "reported_n": ci.n,
            "reported_low": ci.low, "reported_high": ci.high,
            "interval": f"{ci.confidence:.0%} {ci.method}", "verdict": "",
            "reported_seeds": json.dumps(sorted(int(s) for s in reported["seed"])),
            "search_test_mean": float(search[TEST_FINAL].mean()),
            "search_test_std": float(search[TEST_FINAL].std()),
            "confirm_mean": confirm_stats[0], "confirm_std": confirm_stats[1],
            "confirm_n": confirm_stats[2],
            "schema_version": SCHEMA_VERSION,
        })
    # The schema's columns in its order; one this model has no value for (e.g. intransigence,
    # which needs a joint arm) is missing, as the study writes it.
    params = [f"param_{p}" for p in param_names]
    selection_frame = pd.DataFrame(selection).reindex(
        columns=[*SELECTION_HEAD, *params, *SELECTION_TAIL])
    comparisons = synthetic_comparisons(study, pd.concat(reported_runs, ignore_index=True))
    verdicts = _verdicts(comparisons)
    selection_frame["verdict"] = [verdicts.get(a, "") for a in selection_frame["arm"]]
    return {"trials": trials_frame, "matrix": pd.DataFrame(matrix),
            "curves": pd.DataFrame(curves), "selection": selection_frame,
            COMPARISONS_TABLE: comparisons}


def synthetic_comparisons(study: str, reported: pd.DataFrame) -> pd.DataFrame:
    """comparisons.parquet of the reported runs (trials rows): every arm against the best arm
    and the baseline arm ``naive``, paired t-tests over shared seeds, Holm-corrected."""
    values = pd.DataFrame({"arm": reported["arm"], "seed": reported["seed"],
                           "value": reported[TEST_FINAL]})
    frame = paired_comparisons(values, best=None,
                               baseline="naive" if "naive" in set(values["arm"]) else None,
                               mode="max", test="t")
    frame.insert(0, "study", study)
    return frame


def _verdicts(comparisons: pd.DataFrame) -> dict[str, str]:
    """arm -> "best" / "≈ best; > baseline"..., as the study's selection table spells them."""
    labels: dict[str, list[str]] = {}
    for row in comparisons.to_dict("records"):
        labels.setdefault(row["arm"], []).append(verdict(row))
    for arm in set(comparisons.loc[comparisons["reference_kind"] == "best", "reference"]):
        labels.setdefault(arm, []).insert(0, "best")
    return {arm: "; ".join(parts) for arm, parts in labels.items()}


def write_synthetic_study(directory: str | os.PathLike[str], drop_columns: Sequence[str] = (),
                          with_selection: bool = True, settings: str | None = "file",
                          **kwargs: Any) -> str:
    """Write a synthetic study's Parquet files and study.json into ``directory``; returns its
    path.

    ``drop_columns`` removes optional trials columns (e.g. ``test_fwt``, ``peak_memory_mb``) to
    check that the analysis copes with studies that did not record them; ``with_selection``
    False leaves ``selection.parquet`` and ``comparisons.parquet`` out (a study that has not
    chosen yet). ``settings``: ``"file"`` writes ``study.json``, ``"metadata"`` only puts the
    same JSON into each Parquet file's schema metadata (key ``raycl.study``), ``None`` neither
    (a study written before settings were saved). Other arguments:
    :func:`make_synthetic_study_tables`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    tables = make_synthetic_study_tables(**kwargs)
    tables["trials"] = tables["trials"].drop(columns=list(drop_columns))
    if not with_selection:
        del tables["selection"], tables[COMPARISONS_TABLE]
    names = {k: kwargs[k] for k in ("study", "seeds", "n_experiences", "confirm_seeds",
                                    "selection_split", "arms") if k in kwargs}
    text = json.dumps(synthetic_settings(**names), indent=1, sort_keys=True)
    for name, frame in tables.items():
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if settings == "metadata":
            table = table.replace_schema_metadata(
                {**(table.schema.metadata or {}), b"raycl.study": text.encode()})
        pq.write_table(table, os.path.join(directory, f"{name}.parquet"))
    if settings == "file":
        Path(directory, "study.json").write_text(text, encoding="utf-8")
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
