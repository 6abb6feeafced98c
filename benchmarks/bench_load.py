"""Load: a study of many tiny trials, every one accounted for, and the driver's memory over time.

    .venv/bin/python benchmarks/bench_load.py [--trials 200] [--interval 1.0]

Writes a study file of ``--trials`` tiny trials (one arm searching ``lr`` over 100 configs x 2
seeds for the default 200; split digits in 2 experiences, 1 epoch, an MLP of 16 units), runs
``python -m raycl.study`` on it as a new process (a fresh local Ray, what a user runs), samples
the driver process's resident set size every ``--interval`` seconds from ``/proc``, and checks
the results: one trials row per trial, all TERMINATED, exactly one matrix row per (trial,
trained_exp, eval_exp) and one curves row per (trial, experience). Prints wall time, trials/s and
the driver's RSS at start (first sample after Ray is up), peak and end, plus the slope of RSS over
the second half of the run (flat memory: a slope near 0 MB per 100 trials).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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
                        help="run the driver under tracemalloc (benchmarks/trace_driver.py) and "
                             "print the top allocation sites by growth between the FIRST-th "
                             "and LAST-th finished trial (slower; RSS includes its overhead)")
    args = parser.parse_args()
    configs = max(1, args.trials // 2)
    work = Path(tempfile.mkdtemp(prefix="raycl-load-"))
    try:
        study = work / "load.py"
        study.write_text(textwrap.dedent(STUDY.format(n_exp=N_EXP, configs=configs)))
        storage = work / "results"
        command = [sys.executable, "-m", "raycl.study", str(study), "--storage", str(storage),
                   "--gpus-per-trial", "0"]
        if args.tracemalloc:
            first, last = args.tracemalloc.split(",")
            command[1:3] = [str(REPO / "benchmarks" / "trace_driver.py"), first, last]
        log = (work / "driver.log").open("w")
        start = time.monotonic()
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        samples: list[tuple[float, float]] = []
        while driver.poll() is None:
            value = rss_mb(driver.pid)
            if value is not None:
                samples.append((time.monotonic() - start, value))
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
        # "start": once Ray is up and trials run (the first finished trial), not the bare import
        first_done = trials["finished_at"].min()
        first_s = (first_done - trials["started_at"].min()).total_seconds()
        values = [v for _, v in samples]
        running = [(t, v) for t, v in samples if t >= 5.0] or samples
        half = running[len(running) // 2:]
        slope = 0.0
        if len(half) >= 2:
            t0, v0 = half[0]
            t1, v1 = half[-1]
            rate = n / max(wall, 1e-9)  # trials per second
            slope = (v1 - v0) / max(t1 - t0, 1e-9) / rate * 100
        print(f"load study: {n} trials x {N_EXP} experiences on {os.cpu_count()} CPUs: "
              f"{wall:.1f} s wall, {n / wall:.2f} trials/s")
        terminated = int((trials["status"] == "TERMINATED").sum())
        print(f"  accounted for: {len(trials)} trials rows ({terminated} TERMINATED), "
              f"{len(matrix)} matrix rows, {len(curves)} curves rows -> "
              f"{'OK' if ok else 'MISSING OR DUPLICATE ROWS'}")
        print(f"  driver RSS: start {running[0][1]:.0f} MB (t={running[0][0]:.0f} s), peak "
              f"{max(values):.0f} MB, end {values[-1]:.0f} MB; slope over the second half "
              f"{slope:+.1f} MB per 100 trials ({len(samples)} samples; first trial done "
              f"{first_s:.0f} s after the first start)")
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
