"""Cost and memory of the regularisation plugins (EWC, online EWC, SI, RWalk, LwF).

    .venv/bin/python bench/bench_regularization.py [--device cuda] [--repeats 5]
        [--scenarios class,task,permuted] [--memory-experiences 10]

For each scenario of the peer-timings workload (see bench/common.py: 4,000 samples,
MLP 784-256-256-10, batch 32, SGD lr 0.05 momentum 0.9, 2 epochs, 5 experiences; task-IL uses
a MultiHeadMLP 784-256-256 with a head per task) prints each plugin's training time, its ratio
to the plain PyTorch loop measured in the same process (runs interleaved, median of
``--repeats``; targets: <= 1.5x for EWC, online EWC, SI, LwF and <= 1.8x for RWalk), the same
ratio in CPU time of the process (robust when other processes share the cores), and the final
stream accuracy. A "floor" row times the plain loop plus EWC's Fisher pass written by hand (the
work EWC cannot avoid, before any penalty) and the last column gives EWC's ratio to it. Then
the bytes held by each plugin's tensors after each of
``--memory-experiences`` permuted experiences: separate-mode EWC grows linearly, online EWC
stays flat. Last, the seconds spent inside each plugin callback (class scenario).

Reading the ratios: this loop is memory-bound on a small CPU. Each parameter-sized array a plugin
streams per iteration (1 MiB here) costs about 7-20% of a plain iteration when it is not in
cache; an exact quadratic penalty needs at least its two state arrays plus a temporary (EWC
streams ~9 MiB per iteration, SI ~13, RWalk ~18 with plain SGD's step read from the optimizer),
and EWC's Fisher pass, a forward and backward over the experience's data as the reference
defines it, is by itself ~0.4x of the plain loop at two epochs per experience (the "floor" row).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BATCH,
    EPOCHS,
    N_EXP,
    bench_args,
    make_benchmark,
    make_data,
    make_mlp,
    make_optimizer,
    plain_loop,
)

from raycl.benchmarks import permuted_benchmark  # noqa: E402
from raycl.evaluation import EvaluationPlugin  # noqa: E402
from raycl.models import MultiHeadMLP  # noqa: E402
from raycl.plugins import (  # noqa: E402
    EWCPlugin,
    LwFPlugin,
    RWalkPlugin,
    StrategyPlugin,
    SynapticIntelligencePlugin,
)
from raycl.training import Naive  # noqa: E402

#: The peer-timings settings of each method (shared/reference/peer-timings.md), except SI:
#: without the reference's 0.001 clip, lambda 1 diverges on this workload (timing does not depend
#: on lambda). The data are random, so accuracies only compare methods with each other.
PLUGINS: dict[str, Callable[[], StrategyPlugin] | None] = {
    "naive": None,
    "EWC (lambda 100)": lambda: EWCPlugin(100.0),
    "online EWC (100, decay 0.9)": lambda: EWCPlugin(100.0, mode="online", decay_factor=0.9),
    "SI (lambda 0.03)": lambda: SynapticIntelligencePlugin(0.03),
    "RWalk (10, 0.9, 10)": lambda: RWalkPlugin(10.0, 0.9, 10),
    "LwF (alpha 1, T 2)": lambda: LwFPlugin(1.0, 2.0),
}
FLOOR = "floor: plain + Fisher pass"
TARGET = {"EWC": 1.5, "online": 1.5, "SI": 1.5, "LwF": 1.5, "RWalk": 1.8}


def _model(scenario: str) -> nn.Module:
    if scenario == "task":
        torch.manual_seed(0)
        return MultiHeadMLP(input_size=784, hidden_size=256, hidden_layers=2)
    return make_mlp()


def _strategy(scenario: str, make: Callable[[], StrategyPlugin] | None, device: str) -> Naive:
    model = _model(scenario)
    return Naive(model, make_optimizer(model), train_mb_size=BATCH, train_epochs=EPOCHS,
                 eval_mb_size=256, device=device, plugins=[make()] if make else [],
                 evaluator=EvaluationPlugin())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _run_plain(bench: Any, device: str) -> tuple[float, float, None]:
    cpu = time.process_time()
    wall = plain_loop(bench, make_mlp(), device)  # times its loop only (data moved before)
    return wall, time.process_time() - cpu, None


def _run_fisher_floor(bench: Any, device: str) -> tuple[float, float, None]:
    """The plain loop plus EWC's Fisher pass written by hand after each experience (one forward
    and backward per minibatch, squared gradients summed; the reference's definition): the
    work EWC cannot avoid, before any penalty."""
    model, crit = make_mlp().to(device), nn.CrossEntropyLoss()
    opt, params = make_optimizer(model), list(model.parameters())
    data = [(e.dataset.x.to(device), e.dataset.targets.to(device)) for e in bench.train_stream]
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in data:
        model.train()
        for _ in range(EPOCHS):
            order = torch.randperm(x.shape[0]).to(device)
            for i in range(0, x.shape[0], BATCH):
                idx = order[i:i + BATCH]
                opt.zero_grad(set_to_none=True)
                crit(model(x[idx]), y[idx]).backward()
                opt.step()
        model.eval()
        fisher = [torch.zeros_like(p) for p in params]
        for i in range(0, x.shape[0], BATCH):
            g = torch.autograd.grad(crit(model(x[i:i + BATCH]), y[i:i + BATCH]), params)
            torch._foreach_addcmul_(fisher, g, g)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, None


def _run_strategy(scenario: str, make: Callable[[], StrategyPlugin] | None, bench: Any,
                  device: str) -> tuple[float, float, Naive]:
    strategy = _strategy(scenario, make, device)  # built outside the timed region
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for exp in bench.train_stream:
        strategy.train(exp)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, strategy


def bench_scenario(scenario: str, device: str, repeats: int) -> None:
    bench = make_benchmark(scenario)
    runs: dict[str, Callable[[], tuple[float, float, Any]]] = {
        "plain loop": lambda: _run_plain(bench, device)}
    if scenario != "task":
        runs[FLOOR] = lambda: _run_fisher_floor(bench, device)
    for name, make in PLUGINS.items():
        runs[name] = lambda make=make: _run_strategy(scenario, make, bench, device)
    runs["plain loop"]()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    last: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            w, c, last[name] = fn()
            wall[name].append(w)
            cpu[name].append(c)
    w0, c0 = statistics.median(wall["plain loop"]), statistics.median(cpu["plain loop"])
    naive = statistics.median(wall["naive"])
    print(f"\n# {scenario} scenario ({N_EXP} experiences), device={device}, "
          f"median of {repeats} interleaved runs")
    floor = statistics.median(wall[FLOOR]) if FLOOR in wall else None
    print(f"{'method':30s} {'train s':>8s} {'x plain':>8s} {'x plain (cpu)':>14s} "
          f"{'x naive':>8s} {'target':>7s} {'accuracy':>9s} {'EWC x floor':>12s}")
    for name in runs:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        target = next((f"{v:.1f}x" for k, v in TARGET.items() if name.startswith(k)), "")
        acc = "" if last[name] is None else f"{_stream_accuracy(last[name], bench):.3f}"
        vs_floor = f"{w / floor:11.2f}x" if floor and "EWC" in name else ""
        print(f"{name:30s} {w:8.3f} {w / w0:7.2f}x {c / c0:13.2f}x {w / naive:7.2f}x "
              f"{target:>7s} {acc:>9s} {vs_floor:>12s}")


def _stream_accuracy(strategy: Naive, bench: Any) -> float:
    """Mean accuracy over the test experiences after training on all of them."""
    correct = total = 0
    for exp in bench.test_stream:
        data = exp.dataset.to(strategy.device)
        with torch.no_grad():
            strategy.model.eval()
            out = (strategy.model(data.x, data.task_labels) if scenario_is_multi(strategy)
                   else strategy.model(data.x))
        correct += int((out.argmax(1) == data.targets).sum())
        total += len(data)
    return correct / total


def scenario_is_multi(strategy: Naive) -> bool:
    return isinstance(strategy.model, MultiHeadMLP)


def tensor_bytes(obj: Any, exclude: set[int], seen: set[int] | None = None) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj``'s attributes, leaving out
    the tensors in ``exclude`` (ids: the strategy model's own parameters)."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if id(obj) in exclude or key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, nn.Module):
        return sum(tensor_bytes(t, exclude, seen)
                   for t in obj.state_dict(keep_vars=True).values())
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, exclude, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_bytes(v, exclude, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(tensor_bytes(v, exclude, seen) for v in vars(obj).values())
    return 0


class _MemoryProbe(StrategyPlugin):
    """Largest plugin footprint seen at the end of each epoch (the per-experience buffers)."""

    def __init__(self, target: StrategyPlugin, exclude: set[int]) -> None:
        self.target, self.exclude, self.peak = target, exclude, 0

    def after_training_epoch(self, strategy: Any, **kwargs: Any) -> None:
        self.peak = max(self.peak, tensor_bytes(self.target, self.exclude))


def bench_memory(n_exp: int, device: str) -> None:
    """Plugin tensor bytes during and after each experience (permuted, 400 samples, 1 epoch)."""
    x_tr, y_tr, x_te, y_te = make_data()
    train = torch.utils.data.TensorDataset(x_tr[:400], y_tr[:400])
    test = torch.utils.data.TensorDataset(x_te[:100], y_te[:100])
    bench = permuted_benchmark(train, test, n_exp, seed=0)
    cols = {name: make for name, make in PLUGINS.items() if make is not None}
    sizes: dict[str, list[tuple[float, float]]] = {}
    for name, make in cols.items():
        model = make_mlp()
        plugin = make()
        exclude = {id(p) for p in model.parameters()}
        probe = _MemoryProbe(plugin, exclude)
        strategy = Naive(model, make_optimizer(model), train_mb_size=BATCH, train_epochs=1,
                         device=device, plugins=[plugin, probe], evaluator=EvaluationPlugin())
        sizes[name] = []
        for exp in bench.train_stream:
            probe.peak = 0
            strategy.train(exp)
            sizes[name].append((probe.peak / 2**20, tensor_bytes(plugin, exclude) / 2**20))
    n_params = sum(p.numel() for p in make_mlp().parameters())
    print(f"\n# MiB held by each plugin's tensors during (end of epoch) / after each experience "
          f"(model: {n_params:,} parameters = {n_params * 4 / 2**20:.2f} MiB)")
    print(f"{'exp':>3s} " + " ".join(f"{k.split(' (')[0]:>17s}" for k in cols))
    for e in range(n_exp):
        print(f"{e + 1:3d} " + " ".join(f"{sizes[k][e][0]:8.2f} /{sizes[k][e][1]:7.2f}"
                                        for k in cols))


def _time_hooks(plugin: StrategyPlugin, spent: dict[str, float]) -> StrategyPlugin:
    """Wrap each callback of ``plugin`` to add its wall time to ``spent[name]``."""
    def wrap(hook: str, fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def timed(strategy: Any) -> None:
            start = time.perf_counter()
            fn(strategy)
            spent[hook] = spent.get(hook, 0.0) + time.perf_counter() - start
        return timed

    for hook in plugin.active_hooks():
        setattr(plugin, hook, wrap(hook, getattr(plugin, hook)))
    return plugin


def bench_breakdown(device: str, repeats: int) -> None:
    """Seconds spent inside each plugin callback (class scenario; median over ``repeats``)."""
    bench = make_benchmark("class")
    print("\n# class scenario: seconds inside each plugin callback (the rest of the overhead is "
          "the loop itself and cache effects)")
    for name, make in PLUGINS.items():
        if make is None:
            continue
        runs: list[dict[str, float]] = []
        for _ in range(repeats):
            spent: dict[str, float] = {}
            plugin = _time_hooks(make(), spent)
            _run_strategy("class", lambda plugin=plugin: plugin, bench, device)
            runs.append(spent)
        parts = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in runs[0]}
        print(f"{name:30s} " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items() if v >= 5e-4))


def main() -> None:
    def options(ap: argparse.ArgumentParser) -> None:
        ap.add_argument("--scenarios", default="class,task,permuted")
        ap.add_argument("--memory-experiences", type=int, default=10)

    args = bench_args(__doc__, options)
    for scenario in args.scenarios.split(","):
        bench_scenario(scenario, args.device, args.repeats)
    if args.memory_experiences:
        bench_memory(args.memory_experiences, args.device)
    bench_breakdown(args.device, args.repeats)


if __name__ == "__main__":
    main()
