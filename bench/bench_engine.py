"""Naive against a hand-written PyTorch loop, and the cost of starting an experience.

    .venv/bin/python bench/bench_engine.py [--device cuda] [--repeats 7]

Prints, for the peer-timings workload (see bench/common.py): the plain loop's training time,
Naive's with no metrics and with the default evaluator, and their ratios (target <= 1.10);
the online stream (400 experiences of 10 samples, batch 10) against a plain loop over the same
minibatches (target <= 2x); and the time of ``import raycl``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BATCH,
    EPOCHS,
    bench_args,
    interleaved,
    make_benchmark,
    make_mlp,
    make_optimizer,
    online_plain,
    plain_loop,
    time_strategy,
)

from raycl.benchmarks import data_incremental_benchmark  # noqa: E402
from raycl.evaluation import EvaluationPlugin, default_evaluator  # noqa: E402
from raycl.training import Naive  # noqa: E402


def naive(bench, device: str, evaluator_factory, mb: int = BATCH, epochs: int = EPOCHS,
          lr: float | None = None) -> Naive:
    model = make_mlp()
    opt = make_optimizer(model)
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    return Naive(model, opt, train_mb_size=mb, train_epochs=epochs, eval_mb_size=256,
                 device=device, evaluator=evaluator_factory())



def main() -> None:
    args = bench_args(__doc__)
    dev = args.device

    bench = make_benchmark("class")
    plain_loop(bench, make_mlp(), dev)  # warm-up
    res = interleaved({
        "plain loop": lambda: plain_loop(bench, make_mlp(), dev),
        "Naive (no metrics)": lambda: time_strategy(
            lambda: naive(bench, dev, EvaluationPlugin), bench),
        "Naive (default evaluator)": lambda: time_strategy(
            lambda: naive(bench, dev, default_evaluator), bench),
    }, args.repeats)
    floor = res["plain loop"]
    print(f"# peer-timings workload, class-IL split, device={dev}, threads={args.threads}, "
          f"median of {args.repeats}")
    for k, v in res.items():
        print(f"{k:28s} {v:7.3f} s   {v / floor:5.2f}x")

    online = data_incremental_benchmark(bench, 10)
    n_exp = len(online.train_stream)
    res = interleaved({
        "plain loop, batch 10": lambda: online_plain(online, dev),
        "Naive, 1 exp per batch": lambda: time_strategy(
            lambda: naive(online, dev, EvaluationPlugin, mb=10, epochs=1, lr=0.01), online),
    }, args.repeats)
    floor = res["plain loop, batch 10"]
    print(f"# online stream: {n_exp} experiences of 10 samples, one pass")
    for k, v in res.items():
        print(f"{k:28s} {v:7.3f} s   {v / floor:5.2f}x")

    t = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import raycl"], check=True)
        t.append(time.perf_counter() - start)
    print(f"# import raycl (fresh interpreter, incl. start-up): {min(t):.3f} s")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import raycl.training"], check=True)
    print(f"# import raycl.training (pulls torch): {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
