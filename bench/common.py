"""Shared pieces of the benchmark scripts: the peer-timings workload and a plain PyTorch loop.

The workload is the one in shared/reference/peer-timings.md: 4,000 training samples of 28x28
(400 per class), 1,000 test samples, MLP 784-256-256-10, batch 32, SGD lr 0.05 momentum 0.9,
2 epochs per experience, 5 experiences. Timing does not depend on the pixels, so the data are
random tensors of those shapes (class structure kept so accuracy figures are meaningful only
relative to each other).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from raycl.benchmarks import nc_benchmark, permuted_benchmark

N_TRAIN, N_TEST, N_CLASSES, N_EXP = 4000, 1000, 10, 5
BATCH, EPOCHS, LR, MOMENTUM = 32, 2, 0.05, 0.9
ONLINE_LR = 0.01  # the online stream of the peer timings: batch 10, one pass, lr 0.01


def bench_args(doc: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
    """Parse ``--device``, ``--repeats``, ``--threads`` (and ``extra``'s options); set threads."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (peer timings: 1)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random 784-feature samples with a learnable class structure (a mean per class)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N_CLASSES, 784, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(N_CLASSES).repeat_interleave(n // N_CLASSES)
        x = means[y] + 2.0 * torch.randn(n, 784, generator=g)
        return x, y

    x_tr, y_tr = draw(N_TRAIN)
    x_te, y_te = draw(N_TEST)
    return x_tr, y_tr, x_te, y_te


def make_benchmark(scenario: str = "class", seed: int = 0):
    """The 5-experience benchmark of the peer timings: 'class', 'task' or 'permuted'."""
    x_tr, y_tr, x_te, y_te = make_data(seed)
    train = torch.utils.data.TensorDataset(x_tr, y_tr)
    test = torch.utils.data.TensorDataset(x_te, y_te)
    if scenario == "permuted":
        return permuted_benchmark(train, test, N_EXP, seed=seed)
    task = scenario == "task"
    return nc_benchmark(train, test, N_EXP, task_labels=task, seed=seed,
                        fixed_class_order=list(range(N_CLASSES)),
                        class_ids_from_zero_in_each_exp=task)


def make_mlp(seed: int = 0) -> nn.Module:
    """MLP 784-256-256-10 (the peer-timings model)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, N_CLASSES))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD lr 0.05 momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def plain_loop(bench, model: nn.Module, device: str = "cpu") -> float:
    """The floor: a hand-written loop over index-sliced tensors. Returns training seconds."""
    opt = make_optimizer(model)
    crit = nn.CrossEntropyLoss()
    model.to(device).train()
    data = [(e.dataset.x.to(device), e.dataset.targets.to(device)) for e in bench.train_stream]
    _sync(device)
    start = time.perf_counter()
    for x, y in data:
        n = x.shape[0]
        for _ in range(EPOCHS):
            order = torch.randperm(n).to(device)
            for i in range(0, n, BATCH):
                idx = order[i:i + BATCH]
                opt.zero_grad(set_to_none=True)
                loss = crit(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
    _sync(device)
    return time.perf_counter() - start


def online_plain(bench, device: str) -> float:
    """A plain loop over an online stream's minibatches (one per experience), one pass."""
    model = make_mlp().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=ONLINE_LR, momentum=MOMENTUM)
    crit = nn.CrossEntropyLoss()
    data = [(e.dataset.x.to(device), e.dataset.targets.to(device)) for e in bench.train_stream]
    _sync(device)
    start = time.perf_counter()
    for x, y in data:
        order = torch.randperm(x.shape[0]).to(device)
        opt.zero_grad(set_to_none=True)
        crit(model(x[order]), y[order]).backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def time_strategy(make: Callable[[], object], bench) -> float:
    """Training seconds of a strategy over the whole train stream (evaluation excluded)."""
    strategy = make()
    device = str(strategy.device)
    _sync(device)
    start = time.perf_counter()
    for exp in bench.train_stream:
        strategy.train(exp)
    _sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each timing function ``repeats`` times, interleaved; the median of each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(fn())
    return {k: statistics.median(v) for k, v in times.items()}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
