"""Synaptic Intelligence (SI).

Zenke, Poole and Ganguli, "Continual Learning Through Synaptic Intelligence", ICML 2017.
During an experience each weight accumulates the path integral of its contribution to the loss
decrease, ``w_k += -g_k * (theta_k after - theta_k before)`` per step; at its end the importance
grows by ``Omega_k += w_k / ((theta_k end - theta_k start)^2 + eps)`` and later experiences pay
``si_lambda * sum_k Omega_k (theta_k - theta*_k)^2``.

Choices (documented differences from Avalanche 0.6, whose SI had no measurable effect):
``g`` is the gradient of the loss *without* this plugin's penalty -- the gradient the strategy
computed, taken before the penalty's closed-form gradient is added to ``.grad`` (see
``QuadraticPenalty``): exact and free; the importance is not clipped to 0.001 (the reference's
clip is what made it inert), but a negative per-experience contribution is dropped (a negative
weight would reward drift); the damping ``eps`` defaults to 1e-3 instead of 1e-7 (with 1e-7,
weights that barely moved get importances near 1e4 and SGD diverges at any lambda that has an
effect); the penalty has no 1/2. All state lives on the strategy's device: no per-iteration
host copy. A quadratic penalty is stable under SGD only while ``lr * 2 * si_lambda * max Omega``
stays below 2 (1 + momentum); Omega grows over experiences and is not clipped, so the usable
``si_lambda`` is about 100 times below the reference's documented 1-10: with SGD momentum 0.9,
``lr * si_lambda <~ 0.015`` (<= 0.3 at lr 0.05, <= 1 at lr 0.01; every value >= 1 diverged at lr
0.05). A ``PenaltyStabilityWarning`` says so, once, when an experience's penalty is past the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from raycl.checks import check_number
from raycl.plugins._params import (
    QuadraticPenalty,
    at_experience,
    check_schedule,
    pad_to,
    task_grads,
)
from raycl.plugins._path_integral import StepPath
from raycl.plugins._stability import warn_if_unstable
from raycl.plugins.base import Strategy, StrategyPlugin


class SynapticIntelligencePlugin(StrategyPlugin):
    """SI: a quadratic penalty weighted by each weight's path-integral importance.

    Args:
        si_lambda: penalty weight (>= 0), or a list indexed by experience (the last entry
            applies to later experiences). Usable range: see the module docstring and
            ``docs/methods.md`` ("Quadratic penalties").
        excluded_parameters: parameter-name patterns (``fnmatch``) left out; a trailing
            ``.*`` is implied, so ``'classifier'`` excludes ``classifier.weight``. Parameters of
            batch-norm layers are always left out, as in the reference.
        device: where the importances live: ``'as_strategy'`` (default) for the strategy's
            device, or a device.
        eps: damping of the importance denominator (> 0; the reference uses 1e-7).
    """

    #: read each step from a plain SGD optimizer instead of copying the weights before it
    #: (``_path_integral``); False copies, exact whatever else moves the weights
    read_sgd_step = True

    def __init__(self, si_lambda: float | Sequence[float],
                 excluded_parameters: Sequence[str] | None = None,
                 device: str | torch.device = "as_strategy", *, eps: float = 1e-3) -> None:
        self.si_lambda = check_schedule("si_lambda", si_lambda)
        if isinstance(excluded_parameters, str) or not all(
                isinstance(p, str) for p in (excluded_parameters or [])):
            raise ValueError("excluded_parameters must be a list of parameter-name patterns")
        self.excluded_parameters = list(excluded_parameters or [])
        self._patterns = [q for p in self.excluded_parameters
                          for q in ((p,) if p.endswith("*") else (p, p + ".*"))]
        if device != "as_strategy":
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device must be 'as_strategy' or a device: {e}") from None
        self.device = device
        self.eps = check_number("eps", eps, low=0.0, low_open=True)
        #: accumulated importance and the weights at the end of the last experience, by name
        self.omega: dict[str, Tensor] = {}
        self.theta_star: dict[str, Tensor] = {}
        # per-experience state (rebuilt by before_training_exp)
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._start: list[Tensor] = []
        self._path: list[Tensor] = []
        self._step = StepPath([])
        self._grads: tuple[list[int] | None, list[Tensor]] = (None, [])
        self._penalty: QuadraticPenalty | None = None
        self._pen_pos: list[int] = []

    def tracked_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters SI regularises: trainable, not excluded, not in a batch-norm layer."""
        norm = {f"{m}.{n}" if m else n for m, mod in model.named_modules()
                if isinstance(mod, _NormBase) for n, _ in mod.named_parameters(recurse=False)}
        return {n: p for n, p in model.named_parameters()
                if p.requires_grad and n not in norm
                and not any(fnmatch(n, pat) for pat in self._patterns)}

    # ---- callbacks --------------------------------------------------------------------------
    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Start the path integrals and build this experience's penalty."""
        params = self.tracked_parameters(strategy.model)
        self._names, self._params = list(params), list(params.values())
        self._start = [p.detach().clone() for p in self._params]
        self._path = [torch.zeros_like(p) for p in self._params]
        self._step = StepPath(self._params, self.read_sgd_step)
        lam = at_experience(self.si_lambda, strategy.clock.train_exp_counter)
        self._penalty = None
        if self.omega and lam > 0:
            self._penalty = QuadraticPenalty({n: lam * o for n, o in self.omega.items()},
                                             self.theta_star, params, keep_task_grads=True)
            index = {n: i for i, n in enumerate(self._names)}
            self._pen_pos = [index[n] for n in self._penalty.names]
        warn_if_unstable(self, strategy.optimizer, self._penalty, "si_lambda", lam)

    def before_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the penalty to the loss (none during the first experience)."""
        if self._penalty:
            strategy.loss = self._penalty.add_to(strategy.loss)

    def after_loss_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the penalty's closed-form gradient to ``.grad``."""
        if self._penalty:
            self._penalty.apply_gradient()

    @torch.no_grad()
    def after_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Keep the task-loss gradient and the weights before the update."""
        self._grads = task_grads(self._params, self._penalty, self._pen_pos)
        self._step.before_step(strategy.optimizer)

    @torch.no_grad()
    def after_update(self, strategy: Strategy, **kwargs: Any) -> None:
        """Path integral: ``w += -g * (theta_new - theta_old)``."""
        pos, grads = self._grads
        self._step.accumulate(self._path, pos, grads)
        self._grads = (None, [])
        if self._penalty:  # let the loss's gradients go
            self._penalty.task_grads = []

    @torch.no_grad()
    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """``Omega += relu(w / ((theta_end - theta_start)^2 + eps))``; ``theta* = theta_end``."""
        dev = strategy.device if isinstance(self.device, str) else self.device
        for n, p, start, w in zip(self._names, self._params, self._start, self._path):
            gain = (w / ((p - start).square() + self.eps)).clamp_min(0)
            old = self.omega.get(n)
            self.omega[n] = (gain if old is None else gain + pad_to(old.to(gain.device),
                                                                      gain.shape)).to(dev)
            self.theta_star[n] = p.detach().clone().to(dev)
        self._start, self._path, self._step = [], [], StepPath([])
        self._penalty = None

    # ---- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Importances and anchor weights by parameter name."""
        return {"omega": dict(self.omega), "theta_star": dict(self.theta_star)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.omega = dict(state["omega"])
        self.theta_star = dict(state["theta_star"])
        self._penalty = None

