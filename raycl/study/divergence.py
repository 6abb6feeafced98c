"""Stopping a trial whose training loss became NaN or infinite, at little cost per iteration.

A diverged trial is a result of its hyperparameters (a learning rate or a penalty too large for
the optimizer), not a failure: :func:`raycl.study.trial.run_trial` ends it with one last report
that says why, and the study records it as ERROR with that reason.
"""

from __future__ import annotations

from typing import Any

import torch

from raycl.checks import check_int
from raycl.plugins.base import Strategy, StrategyPlugin

__all__ = ["DivergenceGuard", "TrialDiverged"]


class TrialDiverged(RuntimeError):
    """The training loss of a trial became NaN or infinite."""


class DivergenceGuard(StrategyPlugin):
    """Stops training with :class:`TrialDiverged` once the training loss is NaN or infinite.

    Cheap in the hot loop: every iteration folds the loss into a running ``max(|loss|)`` on the
    loss's own device (NaN propagates through ``torch.maximum``, inf stays inf, and a max of
    finite values never overflows); only every ``check_every`` iterations, and at the end of
    every epoch, is that one value inspected, which is the only host synchronisation on a GPU.

    Args:
        check_every: iterations between checks (>= 1); 1 stops at the very iteration.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = check_int("check_every", check_every, minimum=1)
        self._worst: torch.Tensor | None = None
        self._since = 0
        self._iterations = 0  # of the current epoch, counted here: clocks tick at other times

    def before_training_epoch(self, strategy: Strategy, **kwargs: Any) -> None:
        """Start a new window."""
        self._worst, self._since, self._iterations = None, 0, 0

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Fold this iteration's loss in; check every ``check_every`` iterations."""
        loss = strategy.loss
        if not isinstance(loss, torch.Tensor):
            loss = torch.as_tensor(float(loss))
        loss = loss.detach().abs()
        self._worst = loss if self._worst is None else torch.maximum(self._worst, loss)
        self._since += 1
        self._iterations += 1
        if self._since >= self.check_every:
            self._check(strategy)

    def after_training_epoch(self, strategy: Strategy, **kwargs: Any) -> None:
        """Check what the epoch's last iterations left."""
        self._check(strategy)

    def _check(self, strategy: Strategy) -> None:
        worst, self._worst, self._since = self._worst, None, 0
        if worst is None or bool(torch.isfinite(worst)):
            return
        clock = strategy.clock
        value = "NaN" if bool(torch.isnan(worst)) else "inf"
        raise TrialDiverged(
            f"training loss became {value} in experience {clock.train_exp_counter}, epoch "
            f"{clock.train_exp_epochs}, by iteration {self._iterations} of the epoch")
