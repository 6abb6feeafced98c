"""The prepared GPU check: everything raycl does on CUDA, in one run, with one summary.

Run it whenever a machine with CUDA is at hand (``make gpu-check``, or
``.venv/bin/python scripts/gpu_check.py --out DIR``; on an image whose python already has torch
with CUDA, ray[tune] and the test tools, ``python scripts/gpu_check.py`` needs no install).
In order, each step a subprocess with its own time limit, all within ``--budget`` seconds
(default 480, the 8 minutes the check must fit):

1. the CUDA tests (``pytest -m cuda``);
2. the speed benchmarks on ``cuda``: the engine against a plain loop, the regularisers and the
   memory plugins (one repeat each: the ratios, not a careful timing);
3. a real study (studies/ewc_vs_si.py, 2 configs per arm, no confirmation seeds: 21 trials) with
   one GPU per trial, then with four trials per GPU (``--gpus-per-trial 0.25``), each reading
   back its trials table: trials done, the device and GPU each used, the most trials that ran
   at once on one GPU, and the wall time.

Each step's whole output goes to ``<out>/<step>.log``; the summary (also ``<out>/summary.txt``)
says per step: ok / FAILED / skipped, seconds, and its headline figures.

Exit status: 0 every step passed, 1 a step failed or ran out of time, 2 no CUDA device (nothing
was checked: the line says why, so a CPU machine shows the check starts).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = "studies/ewc_vs_si.py"
STUDY_ARGS = ["--num-samples", "2", "--confirm-seeds", "none"]
#: A benchmark output line with a ratio ("...  1.23x"): the figures the summary keeps.
RATIO = re.compile(r"\d\.\d\dx")


@dataclass
class Step:
    """One step of the check: its command, time limit and what the summary shows of it."""

    name: str
    command: list[str]
    limit_s: float
    storage: Path | None = None  # a study step's --storage: its trials table is read back
    status: str = "skipped"
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)


def cuda_status() -> tuple[bool, str]:
    """Whether torch sees a CUDA device, and a line saying what it sees."""
    import torch

    if not torch.cuda.is_available():
        return False, (f"no CUDA device (torch {torch.__version__}, built for CUDA "
                       f"{torch.version.cuda or 'none'}): nothing to check on this machine")
    name = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return True, (f"{torch.cuda.device_count()} CUDA device(s), {name} ({total:.0f} GiB); "
                  f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def steps(out: Path, python: str) -> list[Step]:
    """The check's steps, in order."""
    bench = [python, "-u"]

    def study(name: str, gpus: str, limit_s: float) -> Step:
        storage = out / name
        return Step(name, [python, "-m", "raycl.study", STUDY, *STUDY_ARGS, "--gpus-per-trial",
                           gpus, "--storage", str(storage)], limit_s, storage=storage)

    return [
        Step("cuda-tests", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                            "tests/"], 150),
        Step("bench-engine", [*bench, "bench/bench_engine.py", "--device", "cuda",
                              "--repeats", "1"], 90),
        Step("bench-regularization", [*bench, "bench/bench_regularization.py", "--device", "cuda",
                                      "--repeats", "1", "--scenarios", "class",
                                      "--memory-experiences", "0"], 90),
        Step("bench-memory", [*bench, "bench/bench_memory.py", "--device", "cuda", "--repeats",
                              "1", "--no-scaling"], 90),
        study("study-1-gpu-per-trial", "1", 150),
        study("study-4-trials-per-gpu", "0.25", 120),
    ]


def most_at_once(starts: list[float], ends: list[float]) -> int:
    """The most intervals [start, end) that overlap at one moment."""
    events = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    running = most = 0
    for _, change in events:  # an end sorts before a start at the same moment (-1 < 1)
        running += change
        most = max(most, running)
    return most


def study_figures(storage: Path) -> list[str]:
    """What the trials table of the study under ``storage`` says: trials done, devices, GPUs,
    and the most trials that ran at once on each GPU."""
    import pandas as pd

    found = sorted(storage.rglob("trials.parquet"))
    if len(found) != 1:
        return [f"{len(found)} trials tables under {storage} (expected 1)"]
    trials = pd.read_parquet(found[0])
    done = trials[trials["status"] == "TERMINATED"]
    lines = [f"{len(done)}/{len(trials)} trials TERMINATED; devices "
             f"{sorted(trials['device'].dropna().unique().tolist())}; gpu_ids "
             f"{sorted(trials['gpu_ids'].dropna().astype(str).unique().tolist())}"]
    timed = trials.dropna(subset=["started_at", "finished_at"])
    for gpu, group in timed.groupby(timed["gpu_ids"].astype(str)):
        at_once = most_at_once(group["started_at"].astype("int64").tolist(),
                               group["finished_at"].astype("int64").tolist())
        lines.append(f"GPU {gpu}: at most {at_once} trial(s) at once")
    if "test_final_avg_accuracy" in done:
        lines.append(f"mean test_final_avg_accuracy {done['test_final_avg_accuracy'].mean():.4f}")
    return lines


def run_step(step: Step, out: Path, deadline: float) -> None:
    """Run one step within its limit and the check's deadline; fill its status and figures."""
    limit = min(step.limit_s, deadline - time.monotonic())
    if limit < 20:
        step.status = "skipped (out of time)"
        return
    log = out / f"{step.name}.log"
    # raycl importable by every step without an install (a GPU image's own python may run this)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    start = time.monotonic()
    print(f"gpu-check: {step.name} (at most {limit:.0f} s): {' '.join(step.command)}",
          flush=True)
    with log.open("w") as f:
        try:
            done = subprocess.run(step.command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=limit, env=env)
            step.status = "ok" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            step.status = f"FAILED (over {limit:.0f} s)"
    step.seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    if step.storage is not None:
        step.figures = study_figures(step.storage)
    elif step.name == "cuda-tests":
        counts = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
        step.figures = counts[-1:] or text.splitlines()[-3:]
    else:  # a benchmark: its ratio lines
        step.figures = [ln.rstrip() for ln in text.splitlines() if RATIO.search(ln)]
    if step.status != "ok":
        step.figures += ["... " + ln for ln in text.splitlines()[-5:]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the logs, the studies' results and summary.txt "
                         "(default: a new temporary folder)")
    ap.add_argument("--budget", type=float, default=480.0,
                    help="seconds for the whole check (default: 480)")
    ap.add_argument("--only", default="",
                    help="comma-separated step names to run (default: all)")
    args = ap.parse_args(argv)
    has_cuda, line = cuda_status()
    print(f"gpu-check: {line}", flush=True)
    if not has_cuda:
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="raycl-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    chosen = steps(out.resolve(), sys.executable)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            print(f"gpu-check: error: --only: unknown step(s) {', '.join(sorted(unknown))}",
                  file=sys.stderr)
            return 2
        chosen = [s for s in chosen if s.name in wanted]
    deadline = time.monotonic() + args.budget
    start = time.monotonic()
    for step in chosen:
        run_step(step, out.resolve(), deadline)
    summary = [f"# raycl GPU check: {line}",
               f"# {time.monotonic() - start:.0f} s in all (budget {args.budget:.0f} s); "
               f"logs in {out}"]
    for step in chosen:
        summary.append(f"{step.name:24s} {step.status:22s} {step.seconds:6.1f} s")
        summary += [f"    {figure}" for figure in step.figures]
    text = "\n".join(summary)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    return 0 if all(s.status == "ok" for s in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
