"""Elastic Weight Consolidation, separate and online.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017 (EWC);
Schwarz et al., "Progress & Compress: A scalable framework for continual learning", ICML 2018
(online EWC). After each experience a diagonal Fisher ``F`` is estimated on its data and the
weights ``theta*`` are saved; later experiences pay ``lambda * sum_k F_k (theta_k - theta*_k)^2``.

Speed: the penalty is a :class:`QuadraticPenalty` (foreach kernels, no host sync). Separate
mode folds the past experiences, once per experience, into one quadratic ``S (theta - c)^2 + C``
(``S = lambda sum_e F_e``, ``c = sum_e F_e theta*_e / S``): the same value, at a per-iteration
cost that does not grow with the number of experiences, while each ``(F_e, theta*_e)`` is kept
(memory grows linearly in separate mode, flat in online mode). The Fisher pass differentiates
many minibatches at once with ``torch.func.vmap``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from raycl.checks import check_choice, check_number
from raycl.plugins._params import (
    QuadraticPenalty,
    model_forward,
    pad_to,
    snapshot,
    tensor_batches,
    trainable_params,
)
from raycl.plugins._stability import warn_if_unstable
from raycl.plugins.base import Strategy, StrategyPlugin

ParamDict = dict[str, Tensor]


class EWCPlugin(StrategyPlugin):
    """EWC: a quadratic penalty anchoring the weights important to past experiences.

    Args:
        ewc_lambda: weight of the penalty (>= 0). With SGD momentum 0.9 and the default Fisher
            at batch 32, ``lr * ewc_lambda <~ 30`` trains; past the optimizer's stability limit
            a ``PenaltyStabilityWarning`` says so once (``docs/methods.md``, "Quadratic
            penalties").
        mode: ``'separate'`` keeps one ``(F, theta*)`` per past experience and sums their
            penalties; ``'online'`` keeps one decayed ``F~_t = decay_factor * F~_(t-1) + F_t``
            and the latest ``theta*``.
        decay_factor: in [0, 1], required in online mode (and only allowed there).
        keep_importance_data: online mode keeps the history of ``F~`` and ``theta*`` too
            (separate mode always keeps it: it needs it).
        fisher: ``'minibatch'`` (the reference's estimate, default): mean over minibatches of
            the squared gradient of the batch-mean loss. ``'empirical'``: the per-sample empirical
            Fisher, mean over samples of squared per-sample gradients, one vectorised pass per
            minibatch (``torch.func.vmap(grad)``); up to ``train_mb_size`` times larger, so it
            wants a smaller lambda.
    """

    def __init__(self, ewc_lambda: float, mode: str = "separate",
                 decay_factor: float | None = None, keep_importance_data: bool = False, *,
                 fisher: str = "minibatch") -> None:
        self.ewc_lambda = check_number("ewc_lambda", ewc_lambda, low=0.0)
        check_choice("mode", mode, ("separate", "online"))
        if (decay_factor is None) == (mode == "online"):
            raise ValueError("decay_factor (a number in [0, 1]) is required in online mode and "
                             f"only allowed there; got {decay_factor!r} with mode={mode!r}")
        if decay_factor is not None:
            decay_factor = check_number("decay_factor", decay_factor, low=0.0, high=1.0)
        check_choice("fisher", fisher, ("minibatch", "empirical"))
        self.mode = mode
        self.decay_factor = decay_factor
        self.keep_importance_data = bool(keep_importance_data) or mode == "separate"
        self.fisher = fisher
        #: experience -> parameter name -> importance / saved weights
        self.importances: dict[int, ParamDict] = {}
        self.saved_params: dict[int, ParamDict] = {}
        self._penalty: QuadraticPenalty | None = None

    # ---- callbacks --------------------------------------------------------------------------
    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Fold the stored importances into this experience's penalty."""
        self._penalty = self._build_penalty(trainable_params(strategy.model))
        warn_if_unstable(self, strategy.optimizer, self._penalty, "ewc_lambda", self.ewc_lambda)

    def before_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the penalty to the loss (nothing before the first importances exist)."""
        if self._penalty:
            strategy.loss = self._penalty.add_to(strategy.loss)

    def after_loss_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the penalty's closed-form gradient to ``.grad``."""
        if self._penalty:
            self._penalty.apply_gradient()

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Estimate this experience's importances and save its weights."""
        t, exp = strategy.clock.train_exp_counter, strategy.experience
        self.update_importances(self.compute_importances(
            strategy.model, strategy.criterion, strategy.optimizer, exp.dataset,  # type: ignore
            strategy.device, strategy.train_mb_size), t)
        self.saved_params[t] = snapshot(trainable_params(strategy.model))
        if not self.keep_importance_data:
            self.saved_params = {t: self.saved_params[t]}
        self._penalty = None

    def compute_importances(self, model: nn.Module, criterion: Any,
                            optimizer: torch.optim.Optimizer | None, dataset: Any,
                            device: torch.device | str, batch_size: int) -> ParamDict:
        """Diagonal Fisher of ``model`` on ``dataset`` in eval mode (modes are restored).

        ``.grad`` and the ``optimizer`` (kept for compatibility) are left untouched."""
        params = trainable_params(model)
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.enable_grad():
                return _fisher(model, criterion, params, dataset, torch.device(device),
                               batch_size, per_sample=self.fisher == "empirical")
        finally:
            for m, mode in modes:
                m.train(mode)

    @torch.no_grad()
    def update_importances(self, importances: ParamDict, t: int) -> None:
        """Store experience ``t``'s importances (online: decayed sum with the previous ones)."""
        if self.mode == "separate" or not self.importances:
            self.importances[t] = importances
            return
        prev, d = self.importances[max(self.importances)], self.decay_factor
        merged = {n: d * f for n, f in prev.items() if n not in importances}  # a lost module
        merged.update({n: d * pad_to(prev[n], f.shape) + f if n in prev else f
                       for n, f in importances.items()})
        self.importances = {**self.importances, t: merged} if self.keep_importance_data else {
            t: merged}

    @torch.no_grad()
    def _build_penalty(self, params: dict[str, nn.Parameter]) -> QuadraticPenalty | None:
        if not self.importances or self.ewc_lambda == 0:
            return None
        lam = self.ewc_lambda
        if self.mode == "online":
            last = max(self.importances)
            return QuadraticPenalty({n: lam * f for n, f in self.importances[last].items()},
                                    self.saved_params[last], params)
        # separate: sum_e F_e (theta - a_e)^2 = S (theta - c)^2 + sum_e F_e (a_e - c)^2, with
        # S = sum_e F_e and c = sum_e F_e a_e / S. Every term is non-negative: no cancellation.
        exps = sorted(self.importances)
        weights, centres, const = {}, {}, 0.0
        for n in dict.fromkeys(n for e in exps for n in self.importances[e]):
            terms = [(self.importances[e][n], self.saved_params[e][n]) for e in exps
                     if n in self.importances[e]]
            shape = torch.Size([max(dims) for dims in zip(*(f.shape for f, _ in terms))])
            terms = [(pad_to(f, shape), pad_to(a, shape)) for f, a in terms]
            s, m = torch.zeros_like(terms[0][0]), torch.zeros_like(terms[0][0])
            for f, a in terms:
                s += f
                m.addcmul_(f, a)
            c = m.div_(s.clamp_min(torch.finfo(s.dtype).tiny))  # 0 where S = 0 (m = 0 there)
            const += sum(float((f * (a - c).square()).sum(dtype=torch.float64)) for f, a in terms)
            weights[n], centres[n] = s.mul_(lam), c
        return QuadraticPenalty(weights, centres, params, const=lam * const)

    def state_dict(self) -> dict[str, Any]:
        """Importances and saved weights per experience (tensors in plain dicts)."""
        return {"importances": {t: dict(d) for t, d in self.importances.items()},
                "saved_params": {t: dict(d) for t, d in self.saved_params.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the penalty is rebuilt at the next experience."""
        self.importances = {int(t): dict(d) for t, d in state["importances"].items()}
        self.saved_params = {int(t): dict(d) for t, d in state["saved_params"].items()}
        self._penalty = None


def _fisher(model: nn.Module, criterion: Any, params: dict[str, nn.Parameter], dataset: Any,
            device: torch.device, batch_size: int, per_sample: bool) -> ParamDict:
    """Mean over units -- minibatches, or samples if ``per_sample`` -- of squared gradients.

    Models made of ``nn.Linear`` layers (see ``_episodic.linear_squared_gradients``) take one
    forward and one backward to the layer outputs for many units, then sum the squares with a
    batched matmul (minibatches) or one matmul (samples: no per-sample gradient is formed);
    ~20% faster than ``vmap`` for minibatches. Other models differentiate units together with
    ``vmap(grad)``: all samples of a minibatch, or up to ~2^24 gradient entries' worth of full
    minibatches (one large forward instead of many small ones, ~30% faster than a loop on CPU).
    A partial or mixed-task minibatch, and any model ``torch.func`` cannot trace (minibatch mode
    only, with a warning), use a plain loop.
    """
    from torch.func import functional_call, grad, vmap

    from raycl.models import MultiTaskModule
    from raycl.plugins._episodic import linear_squared_gradients, linear_stack_supported

    names, plist = list(params), list(params.values())
    imps = [torch.zeros_like(p) for p in plist]
    detached = {n: p.detach() for n, p in params.items()}
    buffers, multi = dict(model.named_buffers()), isinstance(model, MultiTaskModule)
    chunk = max(2, (1 << 24) // max(sum(p.numel() for p in plist), 1))
    vectorise = True
    fused = linear_stack_supported(model, criterion, plist)

    def add_fused(xs: Tensor, ys: Tensor) -> bool:
        nonlocal fused
        sums = linear_squared_gradients(model, criterion, plist, xs, ys, per_sample) if fused \
            else None
        if sums is None:  # a layer called twice, or on 3-D input: vmap from now on
            fused = False
            return False
        torch._foreach_add_(imps, sums)
        return True

    def unit_loss(p: ParamDict, x: Tensor, y: Tensor, task: int | None) -> Tensor:
        if per_sample:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        return criterion(functional_call(model, (p, buffers), (x, task) if multi else (x,)), y)

    def add_units(xs: Tensor, ys: Tensor, task: int | None) -> None:
        per_unit = vmap(grad(unit_loss), in_dims=(None, 0, 0, None))(detached, xs, ys, task)
        stacked = [per_unit[n] for n in names]
        for k in range(xs.shape[0]):
            gk = [g[k] for g in stacked]
            torch._foreach_addcmul_(imps, gk, gk)

    def add_batch(x: Tensor, y: Tensor, t: Tensor) -> None:
        g = torch.autograd.grad(criterion(model_forward(model, x, t), y), plist,
                                allow_unused=True)
        used = [i for i, gi in enumerate(g) if gi is not None]
        torch._foreach_addcmul_([imps[i] for i in used], *[[g[i] for i in used]] * 2)

    def flush(pending: list[tuple[Tensor, Tensor, Tensor, int | None]]) -> None:
        nonlocal vectorise
        if len(pending) > 1 and add_fused(*(torch.stack([b[i] for b in pending]) for i in (0, 1))):
            pending.clear()
        if vectorise and len(pending) > 1:
            try:
                add_units(*(torch.stack([b[i] for b in pending]) for i in (0, 1)), pending[0][3])
                pending.clear()
            except RuntimeError as e:  # an op torch.func cannot batch: loop from now on
                warnings.warn(f"EWC: vectorised Fisher unavailable ({e}); using a loop",
                              stacklevel=4)
                vectorise = False
        for x, y, t, _ in pending:
            add_batch(x, y, t)
        pending.clear()

    def flush_samples(samples: list[tuple[Tensor, Tensor, Tensor, list[Any]]]) -> None:
        if samples and fused and add_fused(  # fused is False for multi-task models
                torch.cat([s[0] for s in samples]).unsqueeze(0),
                torch.cat([s[1] for s in samples]).unsqueeze(0)):
            samples.clear()
        for x, y, t, tasks in samples:  # vmap over each minibatch's samples, task by task
            for task in tasks:
                sel = t == task if len(tasks) > 1 else slice(None)
                add_units(x[sel], y[sel], task)
        samples.clear()

    pending: list[tuple[Tensor, Tensor, Tensor, int | None]] = []
    samples: list[tuple[Tensor, Tensor, Tensor, list[Any]]] = []
    n_units = 0  # minibatches (or samples) seen
    for x, y, t in tensor_batches(dataset, batch_size, device):
        tasks = torch.unique(t).tolist() if multi else [None]
        if per_sample:  # the fused pass takes up to 2048 samples at once (activations only)
            n_units += x.shape[0]
            samples.append((x, y, t, tasks))
            if sum(len(s[0]) for s in samples) >= 2048:
                flush_samples(samples)
            continue
        n_units += 1
        if len(pending) >= chunk or (pending and pending[0][3] != tasks[0]):
            flush(pending)
        if x.shape[0] == batch_size and len(tasks) == 1:
            pending.append((x, y, t, tasks[0]))
        else:
            flush(pending)
            add_batch(x, y, t)
    flush(pending)
    flush_samples(samples)
    torch._foreach_div_(imps, float(max(n_units, 1)))
    return dict(zip(names, imps))
