"""Riemannian Walk (RWalk).

Chaudhry, Dokania, Ajanthan and Torr, "Riemannian Walk for Incremental Learning: Understanding
Forgetting and Intransigence", ECCV 2018. Two importances per weight: a Fisher moving average
(EWC++) ``F <- alpha g^2 + (1 - alpha) F`` updated every iteration, and a path score: the loss
change ``dL -= g * (theta_new - theta_old)`` accumulated over ``delta_t`` iterations is divided
by ``0.5 F (theta - theta_checkpoint)^2 + eps`` and added to the score. After an experience the
scores are averaged 0.5/0.5 with the previous ones, and later experiences pay
``lambda * sum_k (F_k / max F + relu(s_k) / max s) (theta_k - theta*_k)^2``.

Differences from Avalanche 0.6 (documented choices): ``g`` is the gradient the strategy already
computed, taken before the penalty's closed-form gradient is added to ``.grad`` (see
``QuadraticPenalty``), i.e. exactly the gradient of the loss without the penalty at the same
weights -- the reference instead runs a second forward/backward per iteration, in eval mode;
the two agree for models without dropout or batch norm. State is keyed by parameter name, so heads
that appear in later experiences join (the reference crashes) and widened heads are penalised on
their old slice only. The score window restarts with each experience, so a checkpoint between
experiences holds all the state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from raycl.checks import check_int, check_number
from raycl.plugins._params import (
    QuadraticPenalty,
    pad_to,
    pick,
    snapshot,
    task_grads,
    trainable_params,
)
from raycl.plugins._path_integral import StepPath
from raycl.plugins._stability import warn_if_unstable
from raycl.plugins.base import Strategy, StrategyPlugin


class RWalkPlugin(StrategyPlugin):
    """RWalk: EWC++ Fisher plus path-integral scores, updated every ``delta_t`` iterations.

    Args:
        ewc_lambda: weight of the penalty (>= 0). With SGD momentum 0.9, ``lr * ewc_lambda
            <~ 0.5`` trains; past the optimizer's stability limit a ``PenaltyStabilityWarning``
            says so once (``docs/methods.md``, "Quadratic penalties").
        ewc_alpha: weight of the newest squared gradient in the Fisher moving average, in [0, 1].
        delta_t: iterations between score updates (>= 1).
    """

    #: read each step from a plain SGD optimizer instead of copying the weights before it
    #: (``_path_integral``); False copies, exact whatever else moves the weights
    read_sgd_step = True

    def __init__(self, ewc_lambda: float = 0.1, ewc_alpha: float = 0.9, delta_t: int = 10) -> None:
        self.ewc_lambda = check_number("ewc_lambda", ewc_lambda, low=0.0)
        self.ewc_alpha = check_number("ewc_alpha", ewc_alpha, low=0.0, high=1.0)
        self.delta_t = check_int("delta_t", delta_t, minimum=1)
        #: by parameter name: Fisher at the end of the last experience, averaged scores, anchors
        self.importance: dict[str, Tensor] = {}
        self.scores: dict[str, Tensor] = {}
        self.theta_star: dict[str, Tensor] = {}
        # per-experience state (rebuilt by before_training_exp)
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._fisher: list[Tensor] = []  # F / _fisher_scale
        self._fisher_scale = 1.0
        self._loss: list[Tensor] = []
        self._score: list[Tensor] = []
        self._ckpt: list[Tensor] = []
        self._step = StepPath([])
        self._grads: tuple[list[int] | None, list[Tensor]] = (None, [])
        self._penalty: QuadraticPenalty | None = None
        self._pen_pos: list[int] = []

    # ---- callbacks --------------------------------------------------------------------------
    @torch.no_grad()
    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Reset the score window and build this experience's penalty."""
        params = trainable_params(strategy.model)
        self._names, self._params = list(params), list(params.values())
        self._fisher = [pad_to(self.importance[n].to(p.device), p.shape).clone()
                        if n in self.importance else torch.zeros_like(p)
                        for n, p in params.items()]
        self._fisher_scale = 1.0
        self._loss = [torch.zeros_like(p) for p in self._params]
        self._score = [torch.zeros_like(p) for p in self._params]
        self._ckpt = [p.detach().clone() for p in self._params]
        self._step = StepPath(self._params, self.read_sgd_step)
        self._penalty = None
        if self.scores and self.ewc_lambda > 0:
            weights = self.penalty_weights()
            self._penalty = QuadraticPenalty({n: self.ewc_lambda * w for n, w in weights.items()},
                                             self.theta_star, params, keep_task_grads=True)
            index = {n: i for i, n in enumerate(self._names)}
            self._pen_pos = [index[n] for n in self._penalty.names]
        warn_if_unstable(self, strategy.optimizer, self._penalty, "ewc_lambda", self.ewc_lambda)

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
        """Fisher moving average from the task-loss gradient; keep the weights before the step."""
        self._grads = pos, grads = task_grads(self._params, self._penalty, self._pen_pos)
        # F = scale * _fisher: decaying F is a scalar update, one pass per iteration instead of 2
        alpha, decayed = self.ewc_alpha, self._fisher_scale * (1.0 - self.ewc_alpha)
        if decayed < 1e-20:  # renormalise before 1 / scale gets large (or alpha = 1)
            torch._foreach_mul_(self._fisher, decayed)
            self._fisher_scale = decayed = 1.0
        if alpha and grads:
            torch._foreach_addcmul_(pick(self._fisher, pos), grads, grads, value=alpha / decayed)
        self._fisher_scale = decayed
        self._step.before_step(strategy.optimizer)

    @torch.no_grad()
    def after_update(self, strategy: Strategy, **kwargs: Any) -> None:
        """Loss change of the step: ``dL -= g * (theta_new - theta_old)``."""
        pos, grads = self._grads
        self._step.accumulate(self._loss, pos, grads)
        self._grads = (None, [])
        if self._penalty:  # let the loss's gradients go
            self._penalty.task_grads = []

    @torch.no_grad()
    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Every ``delta_t`` iterations: ``s += dL / (0.5 F (theta - theta_ckpt)^2 + eps)``."""
        if (strategy.clock.train_iterations + 1) % self.delta_t or not self._params:
            return
        # s += dL / (0.5 F d^2 + eps) = dL * (2 / scale) / (F_scaled d^2 + 2 eps / scale)
        eps, scale = torch.finfo(self._params[0].dtype).eps, self._fisher_scale
        den = torch._foreach_sub(self._params, self._ckpt)
        torch._foreach_mul_(den, den)
        torch._foreach_mul_(den, self._fisher)
        torch._foreach_add_(den, 2.0 * eps / scale)
        torch._foreach_addcdiv_(self._score, self._loss, den, value=2.0 / scale)
        torch._foreach_zero_(self._loss)
        torch._foreach_copy_(self._ckpt, self._params)

    @torch.no_grad()
    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Average the scores with the previous experience's; save the Fisher and weights."""
        for n, f, s in zip(self._names, self._fisher, self._score):
            old = self.scores.get(n)
            self.scores[n] = s if old is None else 0.5 * (pad_to(old.to(s.device), s.shape, s) + s)
            self.importance[n] = f.mul_(self._fisher_scale)
        self.theta_star.update(snapshot(dict(zip(self._names, self._params))))
        self._fisher, self._loss, self._score, self._ckpt = [], [], [], []
        self._step = StepPath([])
        self._penalty = None

    def penalty_weights(self) -> dict[str, Tensor]:
        """``F / max F + relu(s) / max relu(s)`` by name (a zero maximum drops its term)."""
        max_f = max(float(f.max()) for f in self.importance.values()) if self.importance else 0.0
        max_s = max(float(s.clamp_min(0).max()) for s in self.scores.values())
        out = {}
        for n, s in self.scores.items():
            w = s.clamp_min(0) / max_s if max_s > 0 else torch.zeros_like(s)
            if n in self.importance and max_f > 0:
                w = w + pad_to(self.importance[n].to(s.device), s.shape) / max_f
            out[n] = w
        return out

    # ---- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Fisher, scores and anchor weights by parameter name."""
        return {"importance": dict(self.importance), "scores": dict(self.scores),
                "theta_star": dict(self.theta_star)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.importance = dict(state["importance"])
        self.scores = dict(state["scores"])
        self.theta_star = dict(state["theta_star"])
        self._penalty = None
