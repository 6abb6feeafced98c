"""A one-line warning when a quadratic penalty is too stiff for the optimizer's step.

Gradient descent on ``h x^2 / 2`` with step ``lr`` converges only while ``lr * h < 2``; with
heavy-ball momentum m (PyTorch's SGD) the bound is ``2 (1 + m)``, with Nesterov momentum
``2 (1 + m) / (1 + 2 m)``. A quadratic penalty ``sum_k w_k (theta_k - c_k)^2`` has curvature
``2 w_k`` on weight k, and importances (Fisher, SI's Omega, RWalk's scores) span orders of
magnitude, so one stiff weight past that bound grows geometrically and takes the run to NaN.
The regularisers (EWC, online EWC, RWalk, SI) call :func:`warn_if_unstable` when they build an
experience's penalty, so a trial learns it before spending its time diverging.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from raycl.plugins._params import QuadraticPenalty

__all__ = ["PenaltyStabilityWarning", "sgd_stability_limit", "warn_if_unstable"]


class PenaltyStabilityWarning(UserWarning):
    """A quadratic penalty is stiffer than the optimizer's step keeps stable: expect divergence."""


def sgd_stability_limit(group: dict[str, Any]) -> tuple[float, float, str]:
    """``(step, limit, name)``: SGD on ``h x^2 / 2`` is stable while ``step * h < limit``.

    Plain SGD: ``lr * h < 2``. Heavy-ball momentum m with dampening d (PyTorch's form): the
    step is ``lr (1 - d)`` and the limit ``2 (1 + m)``; Nesterov: ``2 (1 + m) / (1 + 2 m)``.
    """
    lr, m = float(group["lr"]), float(group.get("momentum", 0.0))
    if m == 0.0:
        return lr, 2.0, "SGD"
    if group.get("nesterov", False):
        return lr, 2.0 * (1.0 + m) / (1.0 + 2.0 * m), f"SGD (Nesterov momentum {m:g})"
    return lr * (1.0 - float(group.get("dampening", 0.0))), 2.0 * (1.0 + m), \
        f"SGD (momentum {m:g})"


def warn_if_unstable(plugin: Any, optimizer: torch.optim.Optimizer,
                     penalty: QuadraticPenalty | None, lam_name: str, lam: float) -> None:
    """Warn once per ``plugin``, in one line, when ``penalty`` makes ``optimizer`` unstable.

    The penalty's second derivative on weight k is ``2 w_k`` (``lam`` folded into w); with
    ``torch.optim.SGD`` a weight whose ``step * (2 w_k + weight_decay)`` exceeds the limit of
    :func:`sgd_stability_limit` grows geometrically whatever the task loss does: the run
    diverges.
    Other optimizers are not checked: Adam-type steps are normalised per weight, so a stiff
    penalty makes them oscillate by about ``lr``, not diverge.
    """
    if (getattr(plugin, "_stability_warned", False) or not penalty or lam <= 0
            or not isinstance(optimizer, torch.optim.SGD)):
        return
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    worst = (0.0, 0.0, 0.0, 0.0, "", "")  # ratio, curvature, step, limit, optimizer, weight
    for name, p, h in zip(penalty.names, penalty.params, penalty.max_curvatures()):
        group = group_of.get(id(p))
        if group is None:
            continue
        step, limit, opt_name = sgd_stability_limit(group)
        h += float(group.get("weight_decay", 0.0))
        if step * h / limit > worst[0]:
            worst = (step * h / limit, h, step, limit, opt_name, name)
    ratio, h, step, limit, opt_name, name = worst
    if ratio <= 1.0:
        return
    plugin._stability_warned = True
    safe = lam / ratio
    warnings.warn(
        f"{type(plugin).__name__}: {lam_name}={lam:g} gives the penalty a curvature of {h:.4g} "
        f"on {name}; times the {opt_name} step {step:g} that is {step * h:.3g}, past {limit:.3g}"
        f", the most that optimizer keeps stable: training will likely diverge (use "
        f"{lam_name} < {safe:.3g} or a smaller learning rate)", PenaltyStabilityWarning,
        stacklevel=3)

