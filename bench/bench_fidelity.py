"""Method fidelity on the embedded digits: accuracies per seed and paired differences.

    .venv/bin/python bench/bench_fidelity.py replay [--seeds 10] [--mem 100,200]
    .venv/bin/python bench/bench_fidelity.py lambdas [--seeds 3] [--optimizer sgd|adam]
    .venv/bin/python bench/bench_fidelity.py cwr [--seeds 3]
    .venv/bin/python bench/bench_fidelity.py plugins [--seeds 3]

The issue-17 workload scaled to the digits (no MNIST here): 5 experiences, MLP
64-256-256-10 without dropout, SGD lr 0.05 momentum 0.9, batch 32, 2 epochs per experience;
the figure is the mean test accuracy over all experiences after the last one.

``replay``: class-incremental ``SplitDigits``; ``ReplayPlugin(mem)`` with
``memory_batches='cycled'`` (the default) against ``'loader'`` (the reference library's memory
loader in class-IL: restarted each epoch, a short last minibatch per pass) and ``'balanced'``
(every memory minibatch split equally over the past experiences); per seed, means and the
paired differences with a 95% t-interval.

``lambdas``: domain-incremental ``PermutedDigits`` (where the regularisers matter); for EWC,
online EWC, SI and RWalk over a grid of strengths: mean accuracy, how many seeds diverged
(a non-finite loss or chance accuracy) and how many got the ``PenaltyStabilityWarning``.

``plugins``: each plugin issue 17 changed, at one setting, for before/after comparisons (run it
with ``PYTHONPATH`` pointing at an older raycl).

``cwr``: class-incremental ``SplitDigits``; naive and CWR* from scratch at lr 0.05 and 0.01,
with a first experience of 20 epochs, and on a trunk pretrained on all ten classes with a fresh
output layer (the paper's setting: features that are already good; naive fine-tunes the whole
network from there).
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from collections.abc import Callable

import torch
from scipy import stats
from torch import nn

from raycl.benchmarks import PermutedDigits, SplitDigits
from raycl.evaluation import EvaluationPlugin
from raycl.models import SimpleMLP
from raycl.plugins import (
    AGEMPlugin,
    CWRStarPlugin,
    EWCPlugin,
    GEMPlugin,
    ReplayPlugin,
    RWalkPlugin,
    StrategyPlugin,
    SynapticIntelligencePlugin,
)
from raycl.training import Naive

try:
    from raycl.plugins import PenaltyStabilityWarning
except (ImportError, AttributeError):  # a raycl from before issue 17 (``plugins``: before/after)
    class PenaltyStabilityWarning(UserWarning):  # type: ignore[no-redef]
        """Never raised by that raycl."""

N_EXP, BATCH, EPOCHS, LR, MOMENTUM = 5, 32, 2, 0.05, 0.9


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return SimpleMLP(num_classes=10, input_size=64, hidden_size=256, hidden_layers=2,
                     drop_rate=0.0)


def accuracy(model: nn.Module, stream) -> float:
    model.eval()
    with torch.no_grad():
        accs = [float((model(e.dataset.x).argmax(1) == e.dataset.targets).float().mean())
                for e in stream]
    model.train()
    return sum(accs) / len(accs)


def run(bench, seed: int, plugins: Callable[[nn.Module], list[StrategyPlugin]],
        lr: float = LR, optimizer: str = "sgd", first_epochs: int = EPOCHS,
        model: nn.Module | None = None) -> tuple[float, bool, bool]:
    """(accuracy, diverged, warned) of one run."""
    model = mlp(seed) if model is None else model
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM))
    strategy = Naive(model, opt, train_mb_size=BATCH, train_epochs=EPOCHS,
                     plugins=plugins(model), evaluator=EvaluationPlugin())
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, exp in enumerate(bench.train_stream):
            strategy.train_epochs = first_epochs if i == 0 else EPOCHS
            strategy.train(exp)
    warned = any(issubclass(w.category, PenaltyStabilityWarning) for w in caught)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    acc = accuracy(model, bench.test_stream) if finite else 0.1
    return acc, not finite or acc < 0.15, warned


def paired(a: list[float], b: list[float]) -> str:
    d = [y - x for x, y in zip(a, b)]
    m = statistics.mean(d)
    if len(d) < 2:
        return f"{m:+.4f}"
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return f"{m:+.4f}  95% CI [{m - half:+.4f}, {m + half:+.4f}]"


def replay(args: argparse.Namespace) -> None:
    seeds = range(args.seeds)
    for mem in (int(v) for v in args.mem.split(",")):
        res: dict[str, list[float]] = {}
        for mode in ("cycled", "loader", "balanced"):
            def plugins(m: nn.Module, mode: str = mode, mem: int = mem) -> list[StrategyPlugin]:
                return [ReplayPlugin(mem, memory_batches=mode)]
            res[mode] = [run(SplitDigits(N_EXP, seed=s), s, plugins, args.lr or LR)[0]
                         for s in seeds]
        print(f"# Replay mem {mem}, class-IL SplitDigits, lr {args.lr or LR}, "
              f"seeds 0-{args.seeds - 1}")
        for mode, accs in res.items():
            print(f"{mode:9s} " + " ".join(f"{a:.3f}" for a in accs)
                  + f"  mean {statistics.mean(accs):.4f}")
        for mode in ("loader", "balanced"):
            print(f"{mode} - cycled: {paired(res['cycled'], res[mode])}")


GRIDS: dict[str, tuple[Callable[[float], StrategyPlugin], list[float]]] = {
    "EWC": (lambda v: EWCPlugin(v), [10, 100, 1e3, 1e4, 1e5]),
    "online EWC": (lambda v: EWCPlugin(v, mode="online", decay_factor=0.9),
                   [10, 100, 1e3, 1e4, 1e5]),
    "SI": (lambda v: SynapticIntelligencePlugin(v), [0.01, 0.03, 0.1, 0.3, 1, 3, 10]),
    "RWalk": (lambda v: RWalkPlugin(v), [0.1, 1, 10, 100, 1000]),
}


def lambdas(args: argparse.Namespace) -> None:
    lr = args.lr if args.lr else (1e-3 if args.optimizer == "adam" else LR)
    seeds = range(args.seeds)
    print(f"# PermutedDigits(5), {args.optimizer} lr {lr}, seeds 0-{args.seeds - 1}: "
          "accuracy per seed, mean, diverged / warned seeds")
    naive = [run(PermutedDigits(N_EXP, seed=s), s, lambda m: [], lr, args.optimizer)[0]
             for s in seeds]
    print(f"{'naive':24s} " + " ".join(f"{a:.3f}" for a in naive)
          + f"  mean {statistics.mean(naive):.3f}")
    for name, (make, grid) in GRIDS.items():
        if args.methods and name not in args.methods.split(","):
            continue
        for v in grid:
            out = [run(PermutedDigits(N_EXP, seed=s), s, lambda m, v=v, make=make: [make(v)], lr,
                       args.optimizer) for s in seeds]
            accs = [o[0] for o in out]
            print(f"{name + f' {v:g}':24s} " + " ".join(f"{a:.3f}" for a in accs)
                  + f"  mean {statistics.mean(accs):.3f}  diverged {sum(o[1] for o in out)}"
                  f"/{len(out)}  warned {sum(o[2] for o in out)}/{len(out)}", flush=True)


def pretrained(seed: int, classes: list[int] | None) -> nn.Module:
    """The MLP after 10 epochs of joint training on ``classes`` (all if None; SGD lr 0.01),
    with its output layer re-initialised: good features, an untrained classifier."""
    bench = SplitDigits(1, seed=seed)
    data = bench.train_stream[0].dataset
    if classes is not None:
        data = data.subset(torch.nonzero(torch.isin(data.targets, torch.tensor(classes)))
                           .flatten())
    model = mlp(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=MOMENTUM)
    for _ in range(10):
        for idx in torch.randperm(len(data)).split(BATCH):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.targets[idx]).backward()
            opt.step()
    model.classifier.reset_parameters()  # a fresh head on the pretrained trunk
    return model


def cwr(args: argparse.Namespace) -> None:
    seeds = range(args.seeds)
    rows: list[tuple[str, dict]] = [
        ("from scratch, lr 0.05", {}),
        ("from scratch, lr 0.01", {"lr": 0.01}),
        ("first experience 20 epochs, lr 0.05", {"first_epochs": 20}),
        ("first experience 20 epochs, lr 0.01", {"first_epochs": 20, "lr": 0.01}),
        ("trunk pretrained on all classes, lr 0.05", {"pre": None}),
        ("trunk pretrained on all classes, lr 0.01", {"pre": None, "lr": 0.01}),
    ]
    print(f"# CWR* vs naive, class-IL SplitDigits, seeds 0-{args.seeds - 1}")
    for label, kw in rows:
        res: dict[str, list[float]] = {"naive": [], "CWR*": []}
        for s in seeds:
            bench = SplitDigits(N_EXP, seed=s)
            opts = {k: v for k, v in kw.items() if k != "pre"}
            for name in res:
                model = pretrained(s, kw["pre"]) if "pre" in kw else None
                make = (lambda m: [CWRStarPlugin(m)]) if name == "CWR*" else (lambda m: [])
                res[name].append(run(bench, s, make, model=model, **opts)[0])
        print(f"{label:42s} " + "  ".join(
            f"{k} " + " ".join(f"{a:.3f}" for a in v) + f" (mean {statistics.mean(v):.3f})"
            for k, v in res.items()), flush=True)


#: ``plugins``: every plugin issue 17 touched, at a setting where it trains (lr 0.05 diverges
#: for naive and the memory methods on the digits at this size, so they use lr 0.01).
TOUCHED: dict[str, tuple[str, float, Callable[[nn.Module], list[StrategyPlugin]]]] = {
    "EWC 100": ("permuted", LR, lambda m: [EWCPlugin(100.0)]),
    "online EWC 100, 0.9": ("permuted", LR,
                            lambda m: [EWCPlugin(100.0, mode="online", decay_factor=0.9)]),
    "SI 0.1": ("permuted", LR, lambda m: [SynapticIntelligencePlugin(0.1)]),
    "RWalk 10": ("permuted", LR, lambda m: [RWalkPlugin(10.0)]),
    "Replay 200": ("split", 0.01, lambda m: [ReplayPlugin(200)]),
    "GEM 100, 0.5": ("split", 0.01, lambda m: [GEMPlugin(100, 0.5)]),
    "A-GEM 100, 100": ("split", 0.01, lambda m: [AGEMPlugin(100, 100)]),
    "CWR* (pretrained trunk)": ("split-pretrained", 0.01, lambda m: [CWRStarPlugin(m)]),
}


def touched(args: argparse.Namespace) -> None:
    print(f"# every plugin issue 17 touched, seeds 0-{args.seeds - 1}: accuracy per seed, mean")
    for name, (data, lr, make) in TOUCHED.items():
        accs = []
        for s in range(args.seeds):
            bench = PermutedDigits(N_EXP, seed=s) if data == "permuted" else SplitDigits(
                N_EXP, seed=s)
            model = pretrained(s, None) if data == "split-pretrained" else None
            accs.append(run(bench, s, make, lr, model=model)[0])
        print(f"{name:26s} lr {lr:<5g} " + " ".join(f"{a:.4f}" for a in accs)
              + f"  mean {statistics.mean(accs):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("replay", "lambdas", "cwr", "plugins"))
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--mem", default="100,200")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--methods", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.seeds is None:
        args.seeds = 10 if args.part == "replay" else 3
    {"replay": replay, "lambdas": lambdas, "cwr": cwr, "plugins": touched}[args.part](args)


if __name__ == "__main__":
    main()
