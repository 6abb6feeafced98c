"""Parameter bookkeeping shared by the regularisation plugins (EWC, RWalk, SI).

* Snapshots and per-parameter state are keyed by parameter *name*, so a model that gains heads
  (new names) or widens a head (a larger parameter under the same name) keeps working: a name
  the state does not know gets no penalty, and a grown parameter is penalised on its old slice
  only (its state is zero-padded, so the new slice has zero weight).
* :class:`QuadraticPenalty` is ``sum_k w_k (theta_k - c_k)^2 + const`` over many tensors with
  ``torch._foreach_*`` ops (a few kernels per iteration whatever the number of tensors, no host
  sync). Its gradient has a closed form, so it is not differentiated by autograd but added to
  each parameter's ``.grad`` by :meth:`QuadraticPenalty.apply_gradient`, which the plugins call
  from the loop's ``after_loss_backward`` callback, after the loss's own gradient has been
  accumulated there: the gradient of the loss *without* the penalty comes for free, which SI
  and RWalk need (the reference runs an extra forward/backward for it).
* ``raycl.plugins._stability.warn_if_unstable`` checks the penalty against the optimizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from raycl.checks import check_number

__all__ = ["QuadraticPenalty", "at_experience", "check_schedule", "model_forward", "pad_to",
           "pick", "snapshot", "task_grads", "tensor_batches", "trainable_params"]


def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The model's parameters that require grad, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached copies of ``params``."""
    return {n: p.detach().clone() for n, p in params.items()}


def pad_to(t: Tensor, shape: torch.Size | tuple[int, ...], fill: Tensor | None = None) -> Tensor:
    """``t`` enlarged to ``shape``: the new entries come from ``fill`` (zeros if ``None``).

    ``t`` itself is returned when the shape already matches. A parameter may only grow.
    """
    shape = torch.Size(shape)
    if t.shape == shape:
        return t
    if t.dim() != len(shape) or any(a > b for a, b in zip(t.shape, shape)):
        raise ValueError(f"a parameter changed shape from {tuple(t.shape)} to {tuple(shape)}; "
                         "only growth (e.g. a widened head) is supported")
    out = t.new_zeros(shape) if fill is None else fill.detach().clone()
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def model_forward(model: nn.Module, x: Tensor, task_labels: Tensor) -> Tensor:
    """``model(x, task_labels)`` for a multi-task model, ``model(x)`` otherwise."""
    from raycl.models import MultiTaskModule

    if isinstance(model, MultiTaskModule):
        return model(x, task_labels)
    return model(x)


def tensor_batches(dataset: Any, batch_size: int, device: torch.device
                   ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """In-order minibatches ``(x, y, task_labels)`` of a dataset, on ``device``.

    A ``TensorCLDataset`` is sliced directly; anything else goes through a ``DataLoader``.
    """
    from raycl.benchmarks.base import TensorCLDataset

    if isinstance(dataset, TensorCLDataset):
        data = dataset.to(device)
        for i in range(0, len(data), batch_size):
            yield (data.x[i:i + batch_size], data.targets[i:i + batch_size],
                   data.task_labels[i:i + batch_size])
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        x, y, t = batch[0], batch[1], batch[-1]
        yield x.to(device), y.to(device), torch.as_tensor(t).to(device)


class QuadraticPenalty:
    """``sum_k w_k (theta_k - c_k)^2 + const`` over named parameters, with foreach kernels.

    Args:
        weights: non-negative weight tensor per parameter name (any lambda already folded in).
        centres: the anchor ``c`` per name (same shapes as ``weights``).
        params: the model's current parameters by name (see :func:`trainable_params`).
            Names of ``weights`` the model lacks are skipped; a parameter larger than its
            weight (a widened head) gets zero weight on the new entries.
        const: a constant added to the value (the part of a sum of quadratics that does not
            depend on theta).
        keep_task_grads: keep, per parameter, the gradient found in ``.grad`` before the
            penalty's was added (the gradient of the loss without the penalty) in
            :attr:`task_grads` (``None`` where the loss did not reach the parameter).

    :meth:`add_to` adds the value to a loss; the penalty's gradient ``2 w (theta - c)`` is not
    differentiated by autograd but, known in closed form, added to every parameter's ``.grad``
    by :meth:`apply_gradient` once that loss's backward pass has returned (the strategy's
    ``after_loss_backward`` callback). A hook on the loss records the gradient that reached it,
    so a loss rescaled after the penalty was added stays exact. With ``r = sqrt(w)`` and
    ``u = r * theta - r * c`` (one fused pass) the value is ``|u|^2`` and the gradient
    ``2 r u``: three passes over the parameters per iteration, where autograd through the same
    expression takes five and a custom ``autograd.Function`` four plus its Python overhead.
    """

    def __init__(self, weights: dict[str, Tensor], centres: dict[str, Tensor],
                 params: dict[str, nn.Parameter], const: float = 0.0,
                 keep_task_grads: bool = False) -> None:
        self.const = float(const)
        self.keep_task_grads = keep_task_grads
        self.names = [n for n in weights if n in params]
        self.params = [params[n] for n in self.names]
        self.task_grads: list[Tensor | None] = [None] * len(self.params)
        self._r: list[Tensor] = []  # sqrt(w)
        self._neg_b: list[Tensor] = []  # -sqrt(w) * c
        self._u: list[Tensor] = []
        self._scale: Tensor | None = None
        with torch.no_grad():
            for n, p in zip(self.names, self.params):
                r = pad_to(weights[n].to(p.device, p.dtype).clamp_min(0).sqrt(), p.shape)
                self._r.append(r)
                self._neg_b.append(-(r * pad_to(centres[n].to(p.device, p.dtype), p.shape)))

    def value(self) -> Tensor:
        """The penalty's value at the current parameters (no gradient attached)."""
        with torch.no_grad():
            self._u = torch._foreach_addcmul(self._neg_b, self._r, self.params)
            norms = torch.stack(torch._foreach_norm(self._u))
            value = torch.dot(norms, norms)
        return value + self.const if self.const else value

    def add_to(self, loss: Tensor) -> Tensor:
        """``loss + value``; after its backward, :meth:`apply_gradient` adds the penalty's
        gradient to ``.grad``."""
        total = loss + self.value()
        self._scale, self.task_grads = None, [None] * len(self.params)
        if total.requires_grad:
            total.register_hook(self._record_scale)
        return total

    def _record_scale(self, grad: Tensor) -> None:
        if self._scale is None:  # the first backward through this add_to sets the scale
            self._scale = grad

    def apply_gradient(self) -> None:
        """Add the penalty's gradient, scaled as the loss's was, to each parameter's ``.grad``.

        Call it once the backward pass of the loss returned by :meth:`add_to` has run (the
        plugins do, in ``after_loss_backward``); it does nothing before that backward or a
        second time. With ``keep_task_grads`` the gradients found in ``.grad`` (the loss's
        without the penalty) are kept in :attr:`task_grads` and ``.grad`` gets new tensors.
        """
        u, scale = self._u, self._scale
        if not u or scale is None:
            return
        self._u = []
        with torch.no_grad():
            alpha = 2.0  # d |u|^2 / d theta = 2 r u
            if scale.device.type == "cpu":  # reading a CPU scalar costs no sync
                alpha *= float(scale)
            else:
                u = torch._foreach_mul(u, scale)
            grads = [p.grad for p in self.params]
            have = [i for i, g in enumerate(grads) if g is not None]
            got, r, uu = ([v[i] for i in have] for v in (grads, self._r, u))
            if self.keep_task_grads:  # keep the loss's gradients, install the sums
                self.task_grads = grads
                for i, g in zip(have, torch._foreach_addcmul(got, r, uu, value=alpha) if have
                                else []):
                    self.params[i].grad = g
            elif have:
                torch._foreach_addcmul_(got, r, uu, value=alpha)
            for i, g in enumerate(grads):
                if g is None:  # not reached by the loss: the penalty's gradient alone
                    self.params[i].grad = self._r[i] * u[i] * alpha

    def max_curvatures(self) -> list[float]:
        """Per parameter, the largest second derivative of the penalty, ``2 max w`` (one sync)."""
        tops = [r.amax() if r.numel() else r.new_zeros(()) for r in self._r]
        return torch.stack(tops).float().square().mul(2.0).tolist() if tops else []

    def __bool__(self) -> bool:
        return bool(self.params)


def task_grads(params: list[nn.Parameter], penalty: QuadraticPenalty | None,
               pen_pos: list[int]) -> tuple[list[int] | None, list[Tensor]]:
    """Gradients of the loss without ``penalty``'s term (``penalty`` kept them).

    ``pen_pos[j]`` is the position in ``params`` of ``penalty.params[j]``. Returns
    ``(None, grads)`` when every parameter has a gradient, else ``(positions, grads)`` of
    those that have one (the others count as zero).
    """
    grads: list[Tensor | None] = [p.grad for p in params]
    if penalty is not None:
        for i, g in zip(pen_pos, penalty.task_grads):
            grads[i] = g
    if any(g is None for g in grads):
        pos = [i for i, g in enumerate(grads) if g is not None]
        return pos, [grads[i] for i in pos]  # type: ignore[misc]
    return None, grads  # type: ignore[return-value]


def pick(values: list[Tensor], pos: list[int] | None) -> list[Tensor]:
    """``values`` at ``pos`` (all of them when ``pos`` is None)."""
    return values if pos is None else [values[i] for i in pos]


# ---- hyperparameter checks ----------------------------------------------------------------------
def check_schedule(name: str, value: Any) -> float | list[float]:
    """A finite float >= 0, or a non-empty list of them indexed by experience."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} must be a finite number >= 0 or a non-empty list of them, "
                             "got an empty list")
        return [check_number(f"{name}[{i}]", v, low=0.0) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a finite number >= 0 or a non-empty list of them, "
                        f"got {type(value).__name__}")
    return check_number(name, value, low=0.0)


def at_experience(value: float | list[float], t: int) -> float:
    """The value of a per-experience schedule at experience ``t`` (its last entry beyond it)."""
    if isinstance(value, list):
        return value[min(t, len(value) - 1)]
    return value
