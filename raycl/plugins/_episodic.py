"""GEM's and A-GEM's episodic memory, and gradients of the loss on it (G's rows, g_ref).

:func:`loss_gradients` is one forward/backward. :func:`linear_stack_gradients` gives the
gradient of each of T equal-size memories from *one* forward of all T*m samples and one
backward to the outputs of the ``nn.Linear`` layers, then per memory ``dW_e = delta_e^T A_e``
(a batched matmul) and ``db_e = sum delta_e``: the arithmetic of a single fused pass, where
``torch.func.vmap`` over memories pays a fixed transform cost per call and a loop pays T small
passes. It applies to models whose trainable parameters all belong to ``nn.Linear`` layers, each
called once per forward on 2-D input, with no normalisation layer (batch norm would mix samples
of different memories), and to a mean-reduced, unweighted cross-entropy or NLL criterion (whose
sum of per-memory means is ``T`` times the mean over all samples); anything else returns None
and the caller falls back. :func:`linear_squared_gradients` is the same pass summing squared
gradients over minibatches or samples (EWC's Fisher).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from raycl.benchmarks.base import CLDataset, TensorCLDataset
from raycl.models import MultiTaskModule
from raycl.plugins._params import model_forward
from raycl.plugins.base import Strategy
from raycl.plugins.storage_policy import experience_data, random_subset

__all__ = ["EpisodicMemory", "linear_squared_gradients", "linear_stack_gradients",
           "linear_stack_supported", "loss_gradients"]


class EpisodicMemory:
    """GEM's and A-GEM's memory: ``patterns_per_experience`` random samples of each experience,
    in ``ext_mem`` (experience -> TensorCLDataset), stored after training on it."""

    ext_mem: dict[int, TensorCLDataset]
    patterns_per_experience: int

    @torch.no_grad()
    def update_memory(self, dataset: CLDataset, t: int | None = None,
                      device: torch.device | str | None = None) -> None:
        """Store ``patterns_per_experience`` random samples of ``dataset`` as experience ``t``."""
        t = len(self.ext_mem) if t is None else t
        mem = random_subset(dataset, self.patterns_per_experience)
        self.ext_mem[t] = mem.to(device) if device is not None else mem

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the experience just trained to the memory."""
        self.update_memory(experience_data(strategy), strategy.clock.train_exp_counter,
                           strategy.device)


def loss_gradients(strategy: Strategy, params: list[nn.Parameter], x: Tensor, y: Tensor,
                   t: Tensor) -> list[Tensor]:
    """Flattened gradient, per parameter, of the criterion on ``(x, y, t)`` (zeros if unused)."""
    loss = strategy.criterion(model_forward(strategy.model, x, t), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [p.new_zeros(p.numel()) if g is None else g.reshape(-1)
            for p, g in zip(params, grads, strict=True)]


def linear_stack_supported(model: nn.Module, criterion: Any,
                           params: list[nn.Parameter]) -> bool:
    """Whether :func:`linear_stack_gradients` applies (checked once; it re-checks each call)."""
    if isinstance(model, MultiTaskModule) or any(isinstance(m, _NormBase)
                                                 for m in model.modules()):
        return False
    if not (isinstance(criterion, (nn.CrossEntropyLoss, nn.NLLLoss))
            and criterion.reduction == "mean" and criterion.weight is None):
        return False
    owned = {id(p) for m in model.modules() if isinstance(m, nn.Linear)
             for p in m.parameters(recurse=False)}
    return all(id(p) in owned for p in params)


def _linear_deltas(model: nn.Module, criterion: Any, params: list[nn.Parameter], x: Tensor,
                   y: Tensor, scale: float) -> list[tuple[nn.Linear, Tensor, Tensor]] | None:
    """One forward of the batch ``x`` and one backward of ``criterion(out, y) * scale`` to the
    outputs of the ``nn.Linear`` layers: ``(layer, its input, d loss / d its output)`` for each
    layer the loss reached. None when a parameter is not a Linear layer's, or a layer was not
    called exactly once on a 2-D input."""
    linears = [mod for mod in model.modules() if isinstance(mod, nn.Linear)]
    owned = {id(q) for mod in linears for q in mod.parameters(recurse=False)}
    if any(id(p) not in owned for p in params):  # the model changed since the check
        return None
    seen: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def keep(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        seen.setdefault(id(mod), []).append((inp[0], out))

    handles = [mod.register_forward_hook(keep) for mod in linears]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    used = [mod for mod in linears if id(mod) in seen]
    if any(len(seen[id(mod)]) != 1 or seen[id(mod)][0][0].dim() != 2 for mod in used):
        return None
    deltas = torch.autograd.grad(criterion(out, y) * scale, [seen[id(mod)][0][1] for mod in used],
                                 allow_unused=True)
    return [(mod, seen[id(mod)][0][0].detach(), d)
            for mod, d in zip(used, deltas, strict=True) if d is not None]


def linear_stack_gradients(model: nn.Module, criterion: Any, params: list[nn.Parameter],
                           x: Tensor, y: Tensor) -> list[Tensor] | None:
    """Per parameter, the ``(T, numel)`` gradients of the mean loss on each ``x[e], y[e]``.

    ``x`` is ``(T, m, ...)``, ``y`` is ``(T, m)``. None when a layer was not called exactly once
    on a 2-D input (the caller falls back to another method).
    """
    T, m = y.shape
    # the sum over memories of their mean losses is T times the mean over all samples
    layers = _linear_deltas(model, criterion, params, x.reshape(T * m, *x.shape[2:]),
                            y.reshape(-1), float(T))
    if layers is None:
        return None
    by_param: dict[int, Tensor] = {}
    with torch.no_grad():
        for mod, a, delta in layers:
            d = delta.reshape(T, m, -1)
            by_param[id(mod.weight)] = torch.bmm(d.transpose(1, 2), a.reshape(T, m, -1)
                                                 ).reshape(T, -1)
            if mod.bias is not None:
                by_param[id(mod.bias)] = d.sum(1)
    return [by_param[id(p)] if id(p) in by_param else p.new_zeros(T, p.numel())
            for p in params]


def linear_squared_gradients(model: nn.Module, criterion: Any, params: list[nn.Parameter],
                             x: Tensor, y: Tensor, per_sample: bool) -> list[Tensor] | None:
    """Per parameter (shaped like it), the sum over units of squared loss gradients.

    ``x`` is ``(T, m, ...)``, ``y`` is ``(T, m)``. A unit is one of the T minibatches (the
    gradient of its mean loss), or with ``per_sample`` one of the ``T * m`` samples: then no
    per-unit gradient is formed, since for a linear layer ``sum_i (delta_i a_i^T)^2 =
    (delta^2)^T (a^2)``, one matmul. None when the fused pass does not apply.
    """
    T, m = y.shape
    layers = _linear_deltas(model, criterion, params, x.reshape(T * m, *x.shape[2:]),
                            y.reshape(-1), float(T * m if per_sample else T))
    if layers is None:
        return None
    by_param: dict[int, Tensor] = {}
    with torch.no_grad():
        for mod, a, delta in layers:
            if per_sample:
                by_param[id(mod.weight)] = delta.square().T @ a.square()
                if mod.bias is not None:
                    by_param[id(mod.bias)] = delta.square().sum(0)
                continue
            d = delta.reshape(T, m, -1)
            by_param[id(mod.weight)] = torch.bmm(d.transpose(1, 2), a.reshape(T, m, -1)
                                                 ).square_().sum(0)
            if mod.bias is not None:
                by_param[id(mod.bias)] = d.sum(1).square_().sum(0)
    return [by_param[id(p)].view_as(p) if id(p) in by_param else torch.zeros_like(p)
            for p in params]
