"""From a study's specs to the objects a trial trains: benchmark, model, optimizer, plugins."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from raycl.benchmarks.base import CLBenchmark
from raycl.study.spec import Arm, Benchmark, Model, Optimizer

__all__ = [
    "OVERRIDABLE",
    "arm_needs_model",
    "build_benchmark",
    "build_model",
    "build_optimizer",
    "build_plugins",
    "input_shape",
    "nominal_shape",
    "resolve_model_name",
]

#: Space names that override the study's training settings for an arm.
OVERRIDABLE: tuple[str, ...] = ("lr", "momentum", "weight_decay", "train_epochs",
                                "train_mb_size")

# Shape of one sample and number of classes of each benchmark, known without loading the data
# (validation builds models from these on the driver).
_NOMINAL: dict[str, tuple[tuple[int, ...], int]] = {
    "split_digits": ((64,), 10), "permuted_digits": ((64,), 10), "rotated_digits": ((64,), 10),
    "split_mnist": ((784,), 10), "split_fashion_mnist": ((784,), 10),
    "permuted_mnist": ((784,), 10), "split_cifar10": ((3, 32, 32), 10),
    "split_cifar100": ((3, 32, 32), 100),
}


def nominal_shape(spec: Benchmark) -> tuple[tuple[int, ...], int]:
    """(sample shape, number of classes) of a benchmark, without loading it."""
    return _NOMINAL[spec.name]


def build_benchmark(spec: Benchmark, trial_seed: int) -> CLBenchmark:
    """The benchmark of ``spec``; ``spec.seed=None`` uses the trial's seed."""
    import raycl.benchmarks as b

    seed = trial_seed if spec.seed is None else spec.seed
    task = spec.resolved_scenario == "task"
    n = spec.n_experiences
    if spec.name == "split_digits":
        return b.SplitDigits(n, return_task_id=task, seed=seed)
    if spec.name == "permuted_digits":
        return b.PermutedDigits(n, seed=seed, return_task_id=task)
    if spec.name == "rotated_digits":
        return b.RotatedDigits(n, seed=seed, return_task_id=task)
    files = {"root": spec.root, "download": spec.download}
    if spec.name == "split_mnist":
        return b.SplitMNIST(n, return_task_id=task, seed=seed, **files)
    if spec.name == "split_fashion_mnist":
        return b.SplitFashionMNIST(n, return_task_id=task, seed=seed, **files)
    if spec.name == "permuted_mnist":
        return b.PermutedMNIST(n, seed=seed, return_task_id=task, **files)
    if spec.name == "split_cifar10":
        return b.SplitCIFAR10(n, return_task_id=task, seed=seed, **files)
    if spec.name == "split_cifar100":
        return b.SplitCIFAR100(n, return_task_id=task, seed=seed, **files)
    raise ValueError(f"benchmark.name: unknown benchmark {spec.name!r}")


def input_shape(bench: CLBenchmark) -> tuple[int, ...]:
    """Shape of one training sample of ``bench``."""
    ds = bench.train_stream[0].dataset
    x = getattr(ds, "x", None)
    if isinstance(x, torch.Tensor):
        return tuple(x.shape[1:])
    return tuple(ds[0][0].shape)


def resolve_model_name(spec: Model, shape: tuple[int, ...], scenario: str) -> str:
    """The concrete model name ('auto' resolved from the data and the scenario)."""
    if spec.name != "auto":
        return spec.name
    base = "mlp" if len(shape) == 1 else "resnet18"
    return f"multihead_{base}" if scenario == "task" else base


def build_model(spec: Model, shape: tuple[int, ...], n_classes: int, scenario: str) -> nn.Module:
    """A fresh model for samples of ``shape`` (draws its initial weights from torch's RNG)."""
    import raycl.models as m

    name = resolve_model_name(spec, shape, scenario)
    flat = int(torch.tensor(shape).prod())
    channels = shape[0] if len(shape) == 3 else 1  # flat samples: square grey images
    if name == "mlp":
        return m.SimpleMLP(n_classes, flat, spec.hidden_size, spec.hidden_layers, spec.drop_rate)
    if name == "multihead_mlp":
        return m.MultiHeadMLP(flat, spec.hidden_size, spec.hidden_layers, spec.drop_rate)
    if name == "cnn":
        return m.SimpleCNN(n_classes, channels, spec.drop_rate)
    if name == "resnet18":
        return m.ResNet18Reduced(n_classes, in_channels=channels)
    if name == "multihead_resnet18":
        return m.MTResNet18Reduced(in_channels=channels)
    raise ValueError(f"model.name: unknown model {spec.name!r}")


def build_optimizer(spec: Optimizer, params: Any,
                    config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of ``spec`` over ``params``; ``lr``/``momentum``/``weight_decay`` in the
    trial's config take precedence."""
    lr = float(config.get("lr", spec.lr))
    momentum = float(config.get("momentum", spec.momentum))
    weight_decay = float(config.get("weight_decay", spec.weight_decay))
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer.name: unknown optimizer {spec.name!r}")


def _wants_model(factory: Callable[..., Any]) -> bool:
    """True when a plugin factory takes a second positional argument (the model)."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def build_plugins(arm: Arm, config: Mapping[str, Any], model: nn.Module | None) -> list[Any]:
    """The arm's plugins for ``config`` (the model is passed to two-argument factories)."""
    if _wants_model(arm.plugins):
        plugins = arm.plugins(dict(config), model)
    else:
        plugins = arm.plugins(dict(config))
    if plugins is None:
        return []
    return list(plugins)


def arm_needs_model(arm: Arm) -> bool:
    """True when the arm's plugin factory takes the model."""
    return _wants_model(arm.plugins)
