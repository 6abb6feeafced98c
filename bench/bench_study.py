"""Wall time and overhead of a whole study, Ray start-up included.

    .venv/bin/python bench/bench_study.py [--study studies/ewc_vs_si.py] [--repeats 1]

Runs ``python -m raycl.study STUDY`` as a new process (a fresh local Ray, exactly what a user
runs), times it from the outside, then reads the study's trials.parquet and prints:

* wall time: process start to exit, Ray start-up and shut-down included (target for the
  default study: under 3 minutes on a 2-core laptop);
* the trials' training time (``train_time_s``: seconds inside ``strategy.train``, evaluation
  excluded) and the same plus evaluation;
* overhead ratio = wall time / (sum of training time / concurrency), concurrency being the
  trials that can run at once (CPUs / cpus per trial, at most the number of trials); 1.0 would
  mean no time lost to Ray, processes, imports, checkpoints or evaluation (target: <= 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def run_once(study: str, storage: Path, extra: list[str]) -> dict[str, float]:
    """Run the study once into ``storage``; its timings."""
    command = [sys.executable, "-m", "raycl.study", study, "--storage", str(storage), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"study failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    (trials_path,) = storage.rglob("trials.parquet")
    trials = pd.read_parquet(trials_path)
    curves = pd.read_parquet(trials_path.with_name("curves.parquet"))
    last = curves.sort_values("experience").groupby("trial_key").last()
    cpus = os.cpu_count() or 1
    concurrency = min(len(trials), cpus)  # the default study asks 1 CPU per trial
    train = float(trials["train_time_s"].sum())
    train_eval = train + float(last["eval_time_s"].sum())
    selection = trials_path.with_name("selection.parquet")
    chosen = pd.read_parquet(selection) if selection.exists() else None
    return {"wall_s": wall, "trials": float(len(trials)), "concurrency": float(concurrency),
            "chosen": chosen,  # type: ignore[dict-item]
            "phases": trials["phase"].value_counts().to_dict(),  # type: ignore[dict-item]
            "train_s": train, "train_eval_s": train_eval,
            "ratio": wall / (train / concurrency),
            "ratio_with_eval": wall / (train_eval / concurrency),
            "summary": done.stdout}  # type: ignore[dict-item]


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/ewc_vs_si.py")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--show-output", action="store_true",
                        help="print the study's own output of the last run")
    parser.add_argument("extra", nargs="*", help="more options for python -m raycl.study")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        storage = Path(tempfile.mkdtemp(prefix="raycl-bench-"))
        try:
            runs.append(run_once(args.study, storage, args.extra))
        finally:
            shutil.rmtree(storage, ignore_errors=True)
    if args.show_output:
        print(runs[-1]["summary"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"study {args.study} on {os.cpu_count()} CPUs (load average at the end {load:.1f}), "
          f"{args.repeats} run(s), median:")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(f"  trials                    {med('trials'):.0f}, {med('concurrency'):.0f} at a time")
    print(f"  wall time                 {med('wall_s'):.1f} s (Ray start-up included; "
          f"target < 180 s)")
    print(f"  sum of training time      {med('train_s'):.1f} s "
          f"(+ evaluation: {med('train_eval_s'):.1f} s)")
    print(f"  overhead ratio            {med('ratio'):.2f} (wall / (training / concurrency); "
          f"target <= 2)")
    print(f"  ratio counting evaluation {med('ratio_with_eval'):.2f}")
    print(f"  trials per phase          {runs[-1]['phases']}")
    chosen = runs[-1]["chosen"]
    if chosen is not None:  # what each arm was chosen on, and what is reported (last run)
        print("  per arm (last run): chosen on validation -> test of the same runs -> reported")
        for r in chosen.to_dict("records"):
            print(f"    {r['arm']:<12} {r['selection_metric']} {r['selection_value']:.4f}  "
                  f"search test {r['search_test_mean']:.4f}  reported ({r['reported_phase']}, "
                  f"n={r['reported_n']}) {r['reported_mean']:.4f} "
                  f"[{r['reported_low']:.4f}, {r['reported_high']:.4f}] {r['verdict']}")


if __name__ == "__main__":
    main()
