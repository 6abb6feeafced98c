"""Load: a study of many tiny trials, every one accounted for, and the driver's memory over time.

    .venv/bin/python bench/bench_load.py [--trials 200] [--interval 1.0]

Writes a study file of ``--trials`` tiny trials (one arm searching ``lr`` over 100 configs x 2
seeds for the default 200; split digits in 2 experiences, 1 epoch, an MLP of 16 units), runs
``python -m raycl.study`` on it as a new process (a fresh local Ray, what a user runs), samples
the driver process's resident set size every ``--interval`` seconds from ``/proc``, and checks
the results: one trials row per trial, all TERMINATED, exactly one matrix row per (trial,
trained_exp, eval_exp) and one curves row per (trial, experience). Prints wall time, trials/s and
the driver's RSS when a quarter, half and all of the trials are done, its peak, and the
least-squares slope of RSS against trials done from a quarter of the trials to the last one (flat
memory: a slope near 0 MB per 100 trials). ``--rss-log`` keeps the samples; ``--trials-per-batch``
is passed to the study (0: one Tune run, to compare).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
N_EXP = 2

STUDY = '''
from ray import tune

from raycl.study import Arm, Benchmark, Model, Study

study = Study(
    name="load",
    benchmark=Benchmark("split_digits", n_experiences={n_exp}),
    model=Model("mlp", hidden_size=16, hidden_layers=1),
    train_epochs=1,
    train_mb_size=128,
    arms=[Arm("tiny", space={{"lr": tune.loguniform(0.001, 0.1)}})],
    seeds=[0, 1],
    num_samples={configs},
    max_failures=0,
)
'''


def rss_mb(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MB, or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    """Run the load study and print the figures; exit status 1 if a trial is unaccounted for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials (even: 2 seeds each)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--tracemalloc", default=None, metavar="FIRST,LAST",
                        help="run the driver under tracemalloc (bench/trace_driver.py) and "
                             "print the top allocation sites by growth between the FIRST-th "
                             "and LAST-th finished trial (slower; RSS includes its overhead)")
    parser.add_argument("--trials-per-batch", type=int, default=None, metavar="N",
                        help="passed to the study (default: the study's default; 0: one Tune "
                             "run for all trials, the behaviour before batching)")
    parser.add_argument("--rss-log", default=None, metavar="CSV",
                        help="also write the samples (seconds, RSS MB, trials done) to CSV")
    args = parser.parse_args()
    configs = max(1, args.trials // 2)
    work = Path(tempfile.mkdtemp(prefix="raycl-load-"))
    try:
        study = work / "load.py"
        study.write_text(textwrap.dedent(STUDY.format(n_exp=N_EXP, configs=configs)))
        storage = work / "results"
        command = [sys.executable, "-m", "raycl.study", str(study), "--storage", str(storage),
                   "--gpus-per-trial", "0"]
        if args.trials_per_batch is not None:
            command += ["--trials-per-batch", str(args.trials_per_batch)]
        if args.tracemalloc:
            first, last = args.tracemalloc.split(",")
            command[1:3] = [str(REPO / "bench" / "trace_driver.py"), first, last]
        log = (work / "driver.log").open("w")
        start = time.monotonic()
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        stamps: list[pd.Timestamp] = []
        while driver.poll() is None:
            value = rss_mb(driver.pid)
            if value is not None:
                samples.append((time.monotonic() - start, value))
                stamps.append(pd.Timestamp.now(tz="UTC"))
            time.sleep(args.interval)
        wall = time.monotonic() - start
        log.close()
        output = (work / "driver.log").read_text()
        if driver.returncode != 0:
            sys.exit(f"study failed (exit {driver.returncode}):\n{output[-4000:]}")
        folder = storage / "load"
        trials = pd.read_parquet(folder / "trials.parquet")
        matrix = pd.read_parquet(folder / "matrix.parquet")
        curves = pd.read_parquet(folder / "curves.parquet")
        n = 2 * configs
        ok = (len(trials) == n and trials["trial_key"].is_unique
              and set(trials["status"]) == {"TERMINATED"}
              and len(matrix) == n * N_EXP * N_EXP
              and not matrix.duplicated(["trial_key", "trained_exp", "eval_exp"]).any()
              and len(curves) == n * N_EXP
              and not curves.duplicated(["trial_key", "experience"]).any())
        # trials finished at each sample, from the trials' finish times
        finished = trials["finished_at"].sort_values().to_numpy()
        done = finished.searchsorted(pd.DatetimeIndex(stamps).to_numpy(), side="right")
        rss = pd.DataFrame({"seconds": [t for t, _ in samples],
                            "rss_mb": [v for _, v in samples], "trials_done": done})
        if args.rss_log:
            rss.to_csv(args.rss_log, index=False)
        # While trials run: from the first quarter of the trials done (Ray up, trial processes
        # started, first batch under way) to the last trial done (not the final summary).
        steady = rss[(rss["trials_done"] >= n // 4) & (rss["trials_done"] < n)]
        at = {q: rss.loc[rss["trials_done"] >= q * n // 4, "rss_mb"] for q in (1, 2, 4)}
        slope = math.nan
        if steady["trials_done"].nunique() >= 2:
            slope = float(np.polyfit(steady["trials_done"], steady["rss_mb"], 1)[0]) * 100
        print(f"load study: {n} trials x {N_EXP} experiences on {os.cpu_count()} CPUs: "
              f"{wall:.1f} s wall, {n / wall:.2f} trials/s")
        terminated = int((trials["status"] == "TERMINATED").sum())
        print(f"  accounted for: {len(trials)} trials rows ({terminated} TERMINATED), "
              f"{len(matrix)} matrix rows, {len(curves)} curves rows -> "
              f"{'OK' if ok else 'MISSING OR DUPLICATE ROWS'}")
        def first(q: int) -> str:
            return f"{at[q].iloc[0]:.1f}" if len(at[q]) else "?"

        print(f"  driver RSS: {first(1)} MB at {n // 4} trials done, {first(2)} MB at {n // 2}, "
              f"{first(4)} MB at {n}; peak {rss['rss_mb'].max():.1f} MB; least-squares slope "
              f"while trials run {slope:+.2f} MB per 100 trials ({len(samples)} samples)")
        if args.tracemalloc:
            keep = False
            for line in output.splitlines():
                keep = line.startswith("[tracemalloc]") or (keep and line.startswith("  "))
                if keep:
                    print(line)
        if not ok:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
