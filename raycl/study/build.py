"""From a study's specs to the objects a trial trains: benchmark, model, optimizer, plugins."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from raycl.benchmarks.base import CLBenchmark
from raycl.benchmarks.registry import benchmark_entry
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
    "slice_benchmark",
]

#: Space names that override the study's training settings for an arm.
OVERRIDABLE: tuple[str, ...] = ("lr", "momentum", "weight_decay", "train_epochs",
                                "train_mb_size")

def nominal_shape(spec: Benchmark) -> tuple[tuple[int, ...], int]:
    """(sample shape, number of classes) of a benchmark, without loading it."""
    entry = benchmark_entry(spec.name)
    return entry.input_shape, entry.n_classes


def build_benchmark(spec: Benchmark, trial_seed: int) -> CLBenchmark:
    """The benchmark of ``spec``; ``spec.seed=None`` uses the trial's seed."""
    return benchmark_entry(spec.name).build(
        spec.n_experiences, seed=trial_seed if spec.seed is None else spec.seed,
        task_labels=spec.resolved_scenario == "task", root=spec.root, download=spec.download,
        validation_size=spec.validation_size)


def slice_benchmark(bench: CLBenchmark, start: int, stop: int) -> CLBenchmark:
    """Experiences ``[start, stop)`` of ``bench`` as a benchmark of their own, numbered from 0
    (the learner sees a stream of ``stop - start`` experiences; task labels and classes stay)."""
    from raycl.benchmarks.base import Experience

    n = bench.n_experiences
    if not (0 <= start < stop <= n):
        raise ValueError(f"stream: experiences [{start}, {stop}) are not within the "
                         f"{n} experiences of {bench.name}")

    def part(stream: list[Experience]) -> list[Experience]:
        return [Experience(e.dataset, e.current_experience - start,
                           list(e.classes_in_this_experience), e.task_label, e.origin_stream)
                for e in stream[start:stop]]

    return CLBenchmark(part(bench.train_stream), part(bench.test_stream), bench.n_classes,
                       list(bench.classes_order), bench.task_labels,
                       f"{bench.name}[{start}:{stop}]",
                       list(bench.original_classes_in_exp[start:stop]),
                       part(bench.valid_stream))


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
