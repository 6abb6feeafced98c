"""Memory plugins (Replay, GDumb, GEM, A-GEM) against a hand-written PyTorch loop.

    .venv/bin/python bench/bench_memory.py [--device cuda] [--repeats 5] [--no-scaling]
        [--only Replay,A-GEM,GEM]

Prints, for the peer-timings workload (see bench/common.py; class-IL split, 5 experiences,
MLP 784-256-256-10, batch 32, 2 epochs): the training time of each strategy, interleaved and the
median of ``--repeats``, and its ratio to the plain loop measured in the same process. Settings
are the peer-timings rows: Replay mem 500, GDumb mem 500, GEM 100 patterns/experience and
strength 0.5, A-GEM 100 patterns/experience and sample 100. Targets: Replay <= 2.2x, A-GEM
<= 2.5x, GEM <= 4x (the reference library: 2.8x, 6x, 20x).

GEM and A-GEM cannot cost less than the arithmetic they add: every step A-GEM runs forward and
backward on 100 memory samples, GEM on 100 per past experience. Two "arithmetic floor" rows time
the plain loop plus exactly that work (one fused pass, no per-experience split, no projection).

Then GEM's cost per training iteration with 1 to 10 past experiences in memory, against Naive's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BATCH,
    EPOCHS,
    _sync,
    bench_args,
    interleaved,
    make_benchmark,
    make_mlp,
    make_optimizer,
    plain_loop,
    time_strategy,
)

from raycl.benchmarks import TensorCLDataset  # noqa: E402
from raycl.evaluation import EvaluationPlugin  # noqa: E402
from raycl.plugins import AGEMPlugin, GDumbPlugin, GEMPlugin, ReplayPlugin  # noqa: E402
from raycl.training import Naive  # noqa: E402

MEM, PATTERNS, STRENGTH, SAMPLE = 500, 100, 0.5, 100
STRATEGIES = {
    "Naive": lambda: [],
    "Replay (mem 500)": lambda: [ReplayPlugin(MEM)],
    "GDumb (mem 500)": lambda: [GDumbPlugin(MEM)],
    "A-GEM (100, sample 100)": lambda: [AGEMPlugin(PATTERNS, SAMPLE)],
    "GEM (100, strength 0.5)": lambda: [GEMPlugin(PATTERNS, STRENGTH)],
    "GEM, one backward per past exp": lambda: [_gem_loop()],
}


def _gem_loop() -> GEMPlugin:
    gem = GEMPlugin(PATTERNS, STRENGTH)
    gem.vectorize = False
    return gem


def strategy(device: str, plugins: list, epochs: int = EPOCHS) -> Naive:
    """Naive with ``plugins`` on the peer-timings MLP and optimizer, no metrics."""
    model = make_mlp()
    return Naive(model, make_optimizer(model), train_mb_size=BATCH, train_epochs=epochs,
                 eval_mb_size=256, device=device, plugins=plugins, evaluator=EvaluationPlugin())


def floor_with_memory_pass(bench, device: str, per_past_exp: bool) -> float:
    """The plain loop plus one forward/backward per step on the memory samples the method uses:
    ``SAMPLE`` samples (A-GEM) or ``PATTERNS`` per past experience (GEM)."""
    model = make_mlp().to(device).train()
    opt = make_optimizer(model)
    crit = nn.CrossEntropyLoss()
    data = [(e.dataset.x.to(device), e.dataset.targets.to(device)) for e in bench.train_stream]
    _sync(device)
    start = time.perf_counter()
    for e, (x, y) in enumerate(data):
        n_mem = PATTERNS * e if per_past_exp else (SAMPLE if e else 0)
        mx, my = torch.cat([d[0] for d in data])[:n_mem], torch.cat([d[1] for d in data])[:n_mem]
        for _ in range(EPOCHS):
            order = torch.randperm(x.shape[0]).to(device)
            for i in range(0, x.shape[0], BATCH):
                idx = order[i:i + BATCH]
                if n_mem:
                    crit(model(mx), my).backward()
                opt.zero_grad(set_to_none=True)
                crit(model(x[idx]), y[idx]).backward()
                opt.step()
    _sync(device)
    return time.perf_counter() - start


def gem_scaling(bench, device: str, repeats: int) -> None:
    """ms per training iteration with T past experiences in GEM's memory, vs Naive."""
    exp = bench.train_stream[0]  # 800 samples: 25 iterations of 32
    n_iter = -(-len(exp.dataset) // BATCH)
    g = torch.Generator().manual_seed(0)
    past = [TensorCLDataset(torch.randn(PATTERNS, 784, generator=g),
                            torch.randint(0, 10, (PATTERNS,), generator=g)) for _ in range(10)]
    counts = (1, 2, 3, 4, 6, 8, 10)
    projected: dict[int, float] = {}

    def gem_run(T: int) -> float:
        gem = GEMPlugin(PATTERNS, STRENGTH)
        for t in range(T):
            gem.update_memory(past[t], t + 1, device)  # counter 0 is the one being trained
        n_qp = [0]
        project = gem._project

        def counting(*args, **kwargs):
            n_qp[0] += 1
            return project(*args, **kwargs)

        gem._project = counting  # type: ignore[method-assign]
        seconds = _train_time(strategy(device, [gem], epochs=1), exp, device)
        projected[T] = n_qp[0] / n_iter
        return seconds

    fns = {0: lambda: _train_time(strategy(device, [], epochs=1), exp, device)}
    fns.update({T: (lambda T=T: gem_run(T)) for T in counts})
    res = interleaved(fns, repeats)
    naive_ms = res[0] / n_iter * 1e3
    print(f"# GEM ({PATTERNS} patterns/exp, strength {STRENGTH}): ms per training iteration "
          f"(batch {BATCH}) by past experiences in memory; median of {repeats} (interleaved)")
    print(f"{'past exps':>9s} {'Naive':>8s} {'GEM':>8s} {'ratio':>6s} {'ms per past exp':>15s} "
          f"{'QP steps':>8s}")
    for T in counts:
        gem_ms = res[T] / n_iter * 1e3
        print(f"{T:9d} {naive_ms:8.2f} {gem_ms:8.2f} {gem_ms / naive_ms:6.2f} "
              f"{(gem_ms - naive_ms) / T:15.2f} {projected[T]:8.0%}")


def _train_time(s: Naive, exp, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    s.train(exp)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--no-scaling", action="store_true", help="skip GEM's scaling table")
        ap.add_argument("--only", default="", help="comma-separated name prefixes to time")

    args = bench_args(__doc__, options)
    dev = args.device
    only = [o for o in args.only.split(",") if o]

    bench = make_benchmark("class")
    plain_loop(bench, make_mlp(), dev)  # warm-up
    fns = {"plain loop": lambda: plain_loop(bench, make_mlp(), dev)}
    for name, make in STRATEGIES.items():
        if only and name != "Naive" and not any(name.startswith(o) for o in only):
            continue
        fns[name] = lambda m=make: time_strategy(lambda: strategy(dev, m()), bench)
    fns["floor: plain + 100-sample pass"] = lambda: floor_with_memory_pass(bench, dev, False)
    fns["floor: plain + 100/past-exp pass"] = lambda: floor_with_memory_pass(bench, dev, True)
    res = interleaved(fns, args.repeats)
    floor = res["plain loop"]
    print(f"# peer-timings workload, class-IL split, device={dev}, threads={args.threads}, "
          f"median of {args.repeats} (interleaved)")
    print(f"{'':34s} {'train s':>8s} {'ratio':>6s}")
    for k, v in res.items():
        print(f"{k:34s} {v:8.3f} {v / floor:5.2f}x")
    if not args.no_scaling:
        gem_scaling(bench, dev, args.repeats)


if __name__ == "__main__":
    main()
