"""CoPE: Continual Prototype Evolution, with the Pseudo-Prototypical Proxy (PPP) loss.

De Lange and Tuytelaars, "Continual Prototype Evolution: Learning Online from Non-Stationary Data
Streams", ICCV 2021. The model outputs an embedding (L2-normalised here); each class's prototype
follows its embeddings by an EMA after every optimizer step; class-balanced replay joins every
minibatch; inference is nearest prototype. Designed for online learning (one pass).

Losses: CoPE puts its :class:`PPPloss` in ``strategy.criterion`` during ``train`` and ``eval``,
then restores the user's. The eval loss is the PPP loss of the test embeddings (computed before
``mb_output`` becomes class probabilities), leaving out classes without a prototype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from raycl.checks import check_int, check_number
from raycl.plugins.base import Strategy, StrategyPlugin
from raycl.plugins.storage_policy import balanced_sizes, materialize


class PrototypeMemory(Mapping[int, Tensor]):
    """Class id -> prototype ``(p_size,)`` for the classes seen, backed by one tensor."""

    def __init__(self, n_classes: int, p_size: int) -> None:
        # random unit vectors as in the reference, drawn up front (no draw in the loop)
        self.protos = F.normalize(torch.empty(n_classes, p_size).uniform_(-1, 1), dim=1)
        self.seen = torch.zeros(n_classes, dtype=torch.bool)

    def __getitem__(self, c: int) -> Tensor:
        if not 0 <= c < len(self.seen) or not bool(self.seen[c]):
            raise KeyError(c)
        return self.protos[c]

    def __iter__(self) -> Iterator[int]:
        return iter(torch.nonzero(self.seen).flatten().tolist())

    def __len__(self) -> int:
        return int(self.seen.sum())


class PPPloss:
    """Pseudo-Prototypical Proxy loss ``PPPloss(p_mem, T)(x, y)`` on L2-normalised embeddings.

    ``P(c | x; q) = e^{x.q/T} / (e^{x.q/T} + sum_{k != c} e^{x.p_k/T})`` for a proxy ``q`` of
    class c (``p_c`` or a same-class sample); loss ``-(attractor + repellor) / batch_size``.
    As in the reference, prototypes and pseudo-prototypes pass no gradient.

    Args:
        p_mem: class id -> prototype (a :class:`PrototypeMemory` or any mapping of tensors).
        T: softmax temperature (> 0).
    """

    def __init__(self, p_mem: Mapping[int, Tensor], T: float = 0.1) -> None:
        self.p_mem = p_mem
        self.T = check_number("T", T, low=0.0, low_open=True)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return -sum(self._terms(x, y)) / x.shape[0]

    def attractor(self, x: Tensor, y: Tensor) -> Tensor:
        """``sum_i log mean_q P(y_i | x_i; q)``, q: p_{y_i} and the other samples of y_i."""
        return self._terms(x, y)[0]

    def repellor(self, x: Tensor, y: Tensor) -> Tensor:
        """``sum_{r, j: y_r != y_j} log(1 - (P(y_r | x_j; x_r) + P(y_r | x_j; p_{y_r})) / 2)``."""
        return self._terms(x, y)[1]

    def _terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.reshape(x.shape[0], -1)
        if isinstance(self.p_mem, PrototypeMemory):  # no host sync: unseen rows are masked
            protos, valid = self.p_mem.protos.to(x), self.p_mem.seen.to(x.device)
            ids = torch.arange(len(valid), device=x.device)
        else:
            keys = list(self.p_mem)
            protos = torch.stack([self.p_mem[c].reshape(-1) for c in keys] or [x[0]]).to(x)
            ids = torch.tensor(keys or [0], device=x.device)  # empty memory: one dead row
            valid = torch.full_like(ids, bool(keys), dtype=torch.bool)
        own = (y[:, None] == ids) & valid
        n, neg = x.shape[0], -(4.0 / self.T + 1e3)  # neg stands for -inf, gradients stay finite
        # s[q, i] = q . x_i / T for proxies q (samples, prototypes): constants, no gradient
        s = torch.cat([x.detach(), protos.detach()]) @ x.T / self.T
        a, b = s[:n], s[n:].masked_fill(~valid[:, None], neg)  # pseudo-prototype r, prototype k
        has = own.any(1)  # samples whose class has a prototype (all of them in training)
        b_own = own.to(x.dtype) @ b  # b_own[r, j] = p_{y_r} . x_j / T
        # den[r, j] = log sum_{k != y_r} exp(p_k . x_j / T): the other classes' prototypes
        den = torch.logsumexp(b.unsqueeze(0).masked_fill(own.unsqueeze(2), neg), dim=1)
        both = has[:, None] & has[None, :]
        same, den_i = (y[:, None] == y[None, :]) & both, den.diagonal()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        log_pseudo = F.logsigmoid(a - den_i).masked_fill(~same | eye, neg)
        log_proto = F.logsigmoid(b_own.diagonal() - den_i)
        log_e = torch.logsumexp(torch.cat([log_pseudo, log_proto[None]]), 0)
        attr = torch.where(has, log_e - same.sum(0).clamp_min(1).log(), 0.0).sum()
        log_not = torch.logaddexp(F.logsigmoid(den - a), F.logsigmoid(den - b_own))
        rep = torch.where(~same & both, log_not - math.log(2), 0.0).sum()
        return attr, rep


class CoPEPlugin(StrategyPlugin):
    """Continual Prototype Evolution (see the module docstring).

    Args:
        mem_size: replay memory size, balanced over the classes seen (reservoir per class).
        n_classes: classes the stream can hold (ids 0..n_classes-1); predictions cover them all.
        p_size: embedding size the model outputs (the prototypes' size).
        alpha: prototype momentum, ``p <- normalize(alpha p + (1 - alpha) normalize(mean))``.
        T: PPP-loss temperature; eval probabilities are ``softmax(x . p / T)`` over seen classes.
    """

    def __init__(self, mem_size: int = 200, n_classes: int = 10, p_size: int = 100,
                 alpha: float = 0.99, T: float = 0.1) -> None:
        self.mem_size = mem_size = check_int("mem_size", mem_size, minimum=1)
        self.n_classes = n_classes = check_int("n_classes", n_classes, minimum=1)
        self.p_size = p_size = check_int("p_size", p_size, minimum=1)
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0)
        self.T = check_number("T", T, low=0.0, low_open=True)
        self.p_mem = PrototypeMemory(n_classes, p_size)
        self.ppp_loss = PPPloss(self.p_mem, T=self.T)
        self._sum = torch.zeros(n_classes, p_size)  # embeddings per class since the last step
        self._cnt = torch.zeros(n_classes)
        self.mem: dict[str, Tensor] = {"x": torch.zeros(0), "y": torch.zeros(0, dtype=torch.long),
                                       "t": torch.zeros(0, dtype=torch.long), "w": torch.zeros(0)}
        self._saved: list[Any] = []  # the user's criterion while ours is in place

    def _swap_in(self, strategy: Strategy, **kwargs: Any) -> None:
        """Put the PPP loss in place for ``train`` / ``eval`` and the state on the device."""
        self._saved.append(strategy.criterion)
        strategy.criterion, dev = self.ppp_loss, strategy.device
        self.p_mem.protos, self.p_mem.seen = self.p_mem.protos.to(dev), self.p_mem.seen.to(dev)
        self._sum, self._cnt = self._sum.to(dev), self._cnt.to(dev)
        self.mem = {k: v.to(dev) for k, v in self.mem.items()}

    def _swap_out(self, strategy: Strategy, **kwargs: Any) -> None:
        strategy.criterion = self._saved.pop()  # the criterion ``train`` / ``eval`` started with

    def _check_targets(self, strategy: Strategy, **kwargs: Any) -> None:
        """Check the experience's class ids fit ``n_classes``."""
        targets = strategy.experience.dataset.targets  # type: ignore[union-attr]
        top = int(targets.max()) if targets.numel() else -1
        if top >= self.n_classes:
            raise ValueError(f"n_classes is {self.n_classes} but the data has class {top}")

    # a periodic eval inside ``train`` finds the PPP loss in place and leaves it there
    before_training = before_eval = _swap_in
    after_training = after_eval = _swap_out
    before_training_exp = before_eval_exp = _check_targets

    def before_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Append up to ``train_mb_size`` random memory samples to the minibatch."""
        if (n_mem := self.mem["y"].shape[0]) == 0:
            return
        idx = torch.randperm(n_mem)[:strategy.train_mb_size].to(self.mem["y"].device)
        strategy.mb_x = torch.cat([strategy.mb_x, self.mem["x"][idx]])
        strategy.mb_y = torch.cat([strategy.mb_y, self.mem["y"][idx]])
        strategy.mb_task_id = torch.cat([strategy.mb_task_id, self.mem["t"][idx]])

    def after_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """L2-normalise the embedding, activate new classes' prototypes, accumulate sums."""
        z = self._embedding(strategy).detach()
        self._sum.index_add_(0, strategy.mb_y, z)
        self._cnt.index_add_(0, strategy.mb_y, torch.ones_like(z[:, 0]))
        self.p_mem.seen |= self._cnt > 0

    def after_update(self, strategy: Strategy, **kwargs: Any) -> None:
        """EMA step of the prototypes of the classes in the minibatch."""
        mean = F.normalize(self._sum, dim=1)  # the direction of the sum is that of the mean
        new = F.normalize(self.alpha * self.p_mem.protos + (1 - self.alpha) * mean, dim=1)
        self.p_mem.protos = torch.where((self._cnt > 0)[:, None], new, self.p_mem.protos)
        self._sum.zero_()
        self._cnt.zero_()

    def after_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Turn ``mb_output`` into class probabilities so training metrics see predictions."""
        strategy.mb_output = self.predict_proba(strategy.mb_output.detach())

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add the experience's samples to the class-balanced memory (a reservoir per class:
        the samples of highest random priority win, so each class keeps a uniform sample)."""
        ds = materialize(strategy.experience.dataset)  # type: ignore[union-attr]
        dev, n_old = strategy.device, len(self.mem["y"])  # (a transform is applied once, here)
        new = {"x": ds.x.to(dev), "y": ds.targets.to(dev), "t": ds.task_labels.to(dev),
               "w": torch.rand(len(ds)).to(dev)}
        if n_old + len(ds) <= self.mem_size:  # still filling: keep everything (copies)
            self.mem = {k: torch.cat([self.mem[k], v]) for k, v in new.items()}
            return
        y, w = torch.cat([self.mem["y"], new["y"]]), torch.cat([self.mem["w"], new["w"]])
        order = torch.argsort(2.0 * y.double() - w.double())  # by class, then priority
        ys = y[order]
        counts = torch.bincount(ys, minlength=self.n_classes)
        caps = torch.tensor(balanced_sizes(counts.tolist(), self.mem_size), device=dev)
        rank = torch.arange(len(y), device=dev) - (counts.cumsum(0) - counts)[ys]
        keep = torch.zeros_like(y, dtype=torch.bool).index_fill_(0, order[rank < caps[ys]], True)
        if n_old < self.mem_size:  # grow; then new winners fill the losers' and the new slots
            self.mem = {k: torch.cat([v, new[k][:self.mem_size - n_old]])
                        for k, v in self.mem.items()}
        free = torch.cat([torch.nonzero(~keep[:n_old]).flatten(),
                          torch.arange(n_old, self.mem_size, device=dev)])
        won = torch.nonzero(keep[n_old:]).flatten()
        for k, v in self.mem.items():
            v[free] = new[k][won]

    def after_eval_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        """Replace the embedding by nearest-prototype class probabilities for the metrics."""
        strategy.mb_output = self.predict_proba(strategy.mb_output)

    def predict_proba(self, z: Tensor) -> Tensor:
        """``softmax(z . p_c / T)`` over the seen classes, zero for the unseen (argmax = nearest
        prototype); uniform before any class is seen. ``z``: normalised embeddings (n, p_size)."""
        seen, logits = self.p_mem.seen, z.reshape(len(z), -1) @ self.p_mem.protos.to(z).T / self.T
        probs = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=1)
        return torch.where(seen.any(), probs, torch.full_like(probs, 1.0 / self.n_classes))

    def _embedding(self, strategy: Strategy, **kwargs: Any) -> Tensor:
        """L2-normalise the embedding in ``mb_output`` (the PPP loss is computed on it)."""
        out = strategy.mb_output
        z = out.reshape(out.shape[0], -1)  # type: ignore[union-attr]
        if z.shape[1] != self.p_size:
            raise ValueError(f"p_size is {self.p_size} but the model outputs embeddings of "
                             f"size {z.shape[1]}")
        strategy.mb_output = z = F.normalize(z, dim=1)
        return z

    after_eval_forward = _embedding

    def state_dict(self) -> dict[str, Any]:
        """Prototypes, seen classes, pending per-class sums and the replay memory (tensors)."""
        return {"protos": self.p_mem.protos.clone(), "seen": self.p_mem.seen.clone(),
                "sum": self._sum.clone(), "cnt": self._cnt.clone(),
                "mem": {k: v.clone() for k, v in self.mem.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if (shape := tuple(state["protos"].shape)) != (self.n_classes, self.p_size):
            raise ValueError(f"state: prototypes {shape} do not fit n_classes, p_size")
        self.p_mem.protos, self.p_mem.seen = state["protos"].clone(), state["seen"].clone()
        self._sum, self._cnt = state["sum"].clone(), state["cnt"].clone()
        self.mem = {k: v.clone() for k, v in state["mem"].items()}

