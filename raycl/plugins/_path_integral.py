"""The path integral of SI and RWalk: ``acc += -g * (theta_new - theta_old)`` per optimizer step.

Zenke et al. 2017, eq. 3 (SI's per-weight contribution to the loss decrease); Chaudhry et al.
2018 (RWalk's loss change). :class:`StepPath` needs each step's ``theta_new - theta_old``. In
general it copies the weights before the step and subtracts them after it. For
``torch.optim.SGD`` with momentum and without Nesterov, or without momentum and weight decay, the
step is read from the optimizer instead: ``-lr * momentum_buffer`` (or ``-lr * grad``), the
update the optimizer applied up to the rounding of ``theta`` (relative ~1e-5 of the step here):
no copy and no subtraction, 3 reads and 2 writes of parameter-sized arrays fewer per iteration
(~10% of a plain iteration on a CPU where the loop is memory-bound). Anything that moves the
weights between ``after_backward`` and ``after_update`` other than that SGD step (another
optimizer, a plugin editing the weights in ``before_update``) needs the copy: set the plugin's
``read_sgd_step = False`` to force it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raycl.plugins._params import pick

__all__ = ["StepPath"]


class StepPath:
    """``acc += -g * (theta_new - theta_old)`` over the steps of an experience.

    Args:
        params: the parameters whose path is integrated, in the order of ``acc``.
        read_sgd_step: read the step from a plain SGD optimizer when it allows it (see the
            module docstring); False always copies the weights.
    """

    def __init__(self, params: list[nn.Parameter], read_sgd_step: bool = True) -> None:
        self.params = params
        self.read_sgd_step = read_sgd_step
        self._prev: list[Tensor] | None = None  # theta before the step (copy mode)
        self._plan: list[tuple[float, bool]] | None = None  # per param: (lr, has momentum)
        self._optimizer: torch.optim.Optimizer | None = None

    @torch.no_grad()
    def before_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Call after the backward pass, before ``optimizer.step()``."""
        self._optimizer, self._plan = optimizer, self._sgd_plan(optimizer)
        if self._plan is None:
            if self._prev is None:
                self._prev = [torch.empty_like(p) for p in self.params]
            torch._foreach_copy_(self._prev, self.params)

    @torch.no_grad()
    def accumulate(self, acc: list[Tensor], pos: list[int] | None, grads: list[Tensor]) -> None:
        """After the step: ``acc[i] += -grads * (theta_new - theta_old)`` for the parameters at
        ``pos`` (all if None), ``grads`` being their loss gradients in that order."""
        if self._plan is None:
            old = pick(self._prev, pos)  # type: ignore[arg-type]
            torch._foreach_sub_(old, pick(self.params, pos))  # theta_old - theta_new
            torch._foreach_addcmul_(pick(acc, pos), grads, old)
            return
        idx = range(len(self.params)) if pos is None else pos
        # -g * (theta_new - theta_old) = lr * g * d, d the momentum buffer (or the gradient)
        state = self._optimizer.state  # type: ignore[union-attr]
        by_lr: dict[float, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
        for i, g in zip(idx, grads, strict=True):
            p = self.params[i]
            lr, momentum = self._plan[i]
            if p.grad is None:  # SGD skipped it: it did not move
                continue
            d = state[p].get("momentum_buffer") if momentum else p.grad
            if d is None:
                continue
            a, gs, ds = by_lr.setdefault(lr, ([], [], []))
            a.append(acc[i])
            gs.append(g)
            ds.append(d)
        for lr, (a, gs, ds) in by_lr.items():
            torch._foreach_addcmul_(a, gs, ds, value=lr)

    def _sgd_plan(self, optimizer: torch.optim.Optimizer) -> list[tuple[float, bool]] | None:
        """Per parameter ``(lr, momentum > 0)`` when every step is ``-lr * buffer`` (or
        ``-lr * grad``), else None."""
        if not self.read_sgd_step or type(optimizer) is not torch.optim.SGD:
            return None
        found: dict[int, tuple[float, bool]] = {}
        for group in optimizer.param_groups:
            momentum = group["momentum"] > 0
            if group.get("nesterov") or group.get("maximize") or (
                    not momentum and group["weight_decay"]):
                return None
            for p in group["params"]:
                found[id(p)] = (float(group["lr"]), momentum)
        plan = [found.get(id(p)) for p in self.params]
        return None if any(v is None for v in plan) else plan  # type: ignore[return-value]
