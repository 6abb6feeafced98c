"""CoPE and CWR* training time against a plain PyTorch loop in the same process.

    .venv/bin/python bench/bench_cope.py [--device cuda] [--repeats 5] [--threads 1]

Workloads (see bench/common.py; random tensors with a class structure, so accuracies are
only comparable with each other):
- the online stream of shared/reference/peer-timings.md: the class-IL split cut into 400
  experiences of 10 samples, one pass, batch 10, SGD lr 0.01 momentum 0.9. The plain loop does
  the same 400 steps on batches of 10; Naive and CWR* train the 784-256-256-10 MLP, CoPE a
  784-256-256-32 embedding (p_size 32, mem_size 500, so its steps see 10 + 10 samples).
- the class-IL split itself (5 experiences, 2 epochs, batch 32, SGD lr 0.05 momentum 0.9) for
  CWR*, whose peer figure is on that workload (reference library: 0.63 s).
Time = training wall time of the whole stream, median of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BATCH,
    EPOCHS,
    ONLINE_LR,
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
from raycl.evaluation import EvaluationPlugin, accuracy_metrics  # noqa: E402
from raycl.plugins import CoPEPlugin, CWRStarPlugin  # noqa: E402
from raycl.training import Naive  # noqa: E402

P_SIZE, MEM = 32, 500


def embedder(seed: int = 0) -> nn.Module:
    """The peer MLP with a 32-wide embedding instead of 10 logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, P_SIZE))



def strategy(kind: str, device: str, online: bool, adam: bool = False) -> Naive:
    """Naive, CWR* or CoPE with the workload's settings (``adam``: Adam lr 1e-3 instead)."""
    model = embedder() if kind == "cope" else make_mlp()
    if adam:
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = make_optimizer(model)
        for g in opt.param_groups:
            g["lr"] = ONLINE_LR if online else g["lr"]
    plugins = {"naive": [], "cwr": [CWRStarPlugin(model)],
               "cope": [CoPEPlugin(mem_size=MEM, n_classes=10, p_size=P_SIZE)]}[kind]
    return Naive(model, opt, train_mb_size=10 if online else BATCH,
                 train_epochs=1 if online else EPOCHS, eval_mb_size=256, device=device,
                 plugins=plugins, evaluator=EvaluationPlugin(accuracy_metrics(stream=True)))


def accuracy(make: Callable[[], Naive], bench) -> float:
    """Stream accuracy on the test stream after training on the whole train stream."""
    s = make()
    for exp in bench.train_stream:
        s.train(exp)
    return s.eval(bench.test_stream)["Top1_Acc_Stream/eval_phase/test_stream/Task000"]


def report(title: str, res: dict[str, float], accs: dict[str, float], floor: str) -> None:
    print(title)
    for k, v in res.items():
        acc = f"   acc {accs[k]:.3f}" if k in accs else ""
        print(f"{k:30s} {v:7.3f} s   {v / res[floor]:5.2f}x{acc}")


def main() -> None:
    args = bench_args(__doc__)
    dev = args.device

    bench = make_benchmark("class")
    online = data_incremental_benchmark(bench, 10)
    online_plain(online, dev)  # warm-up
    makers = {
        "Naive": lambda: strategy("naive", dev, True),
        "CWR*": lambda: strategy("cwr", dev, True),
        f"CoPE (mem {MEM}, p_size {P_SIZE})": lambda: strategy("cope", dev, True),
    }
    res = interleaved({"plain loop, batch 10": lambda: online_plain(online, dev),
                       **{k: (lambda m=m: time_strategy(m, online)) for k, m in makers.items()}},
                      args.repeats)
    accs = {k: accuracy(m, online) for k, m in makers.items()}
    report(f"# online stream: {len(online.train_stream)} experiences of 10 samples, one pass, "
           f"SGD lr {ONLINE_LR}, device={dev}, threads={args.threads}, median of "
           f"{args.repeats}", res, accs, "plain loop, batch 10")
    adam = accuracy(lambda: strategy("cope", dev, True, adam=True), online)
    print(f"{'  CoPE with Adam lr 1e-3':30s} accuracy {adam:.3f} (not timed)")

    makers = {"Naive": lambda: strategy("naive", dev, False),
              "CWR*": lambda: strategy("cwr", dev, False)}
    plain_loop(bench, make_mlp(), dev)  # warm-up
    res = interleaved({"plain loop": lambda: plain_loop(bench, make_mlp(), dev),
                       **{k: (lambda m=m: time_strategy(m, bench)) for k, m in makers.items()}},
                      args.repeats)
    accs = {k: accuracy(m, bench) for k, m in makers.items()}
    report(f"# peer-timings workload, class-IL split, {EPOCHS} epochs, batch {BATCH}", res, accs,
           "plain loop")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
