"""A-GEM: Averaged GEM, one reference gradient from a memory sample instead of one per experience.

Chaudhry, Ranzato, Rohrbach and Elhoseiny 2019, "Efficient Lifelong Learning with A-GEM" (ICLR).
After each experience ``patterns_per_experience`` random samples of it are stored (as in GEM).
Every training step computes a reference gradient ``g_ref`` on ``sample_size`` memory samples
balanced over the stored experiences; after the backward pass, when ``g . g_ref < 0`` the gradient
becomes ``g - (g . g_ref / g_ref . g_ref) g_ref``.

On an accelerator the test ``g . g_ref < 0`` is folded into the arithmetic (the coefficient is
clamped at zero), so the step never waits on the device; on the CPU, where reading the scalar
is free, a step without conflict skips the update. Only parameters that have a gradient this step
take part.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from raycl.benchmarks.base import TensorCLDataset
from raycl.checks import check_int
from raycl.plugins._episodic import EpisodicMemory, loss_gradients
from raycl.plugins.base import Strategy, StrategyPlugin
from raycl.plugins.storage_policy import load_memory_state, memory_state


class AGEMPlugin(EpisodicMemory, StrategyPlugin):
    """Averaged Gradient Episodic Memory.

    Args:
        patterns_per_experience: samples stored per experience (>= 1).
        sample_size: memory samples per reference gradient (>= 1), balanced over experiences
            (groups smaller than their share are cycled).
    """

    def __init__(self, patterns_per_experience: int, sample_size: int) -> None:
        super().__init__()
        self.patterns_per_experience = check_int("patterns_per_experience",
                                                 patterns_per_experience, minimum=1)
        self.sample_size = check_int("sample_size", sample_size, minimum=1)
        self.ext_mem: dict[int, TensorCLDataset] = {}
        self._ref: list[Tensor] | None = None  # g_ref, flattened per parameter
        self._params: list[nn.Parameter] = []
        self._mem: TensorCLDataset | None = None  # every stored sample, on the device
        self._sizes = self._offsets = self._pad = torch.zeros(0, dtype=torch.long)

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        groups = [m.to(strategy.device) for m in self.ext_mem.values() if len(m)]
        self._mem = TensorCLDataset.concat(groups) if groups else None
        sizes = torch.tensor([len(m) for m in groups], dtype=torch.long)
        self._sizes = sizes
        self._offsets = torch.cumsum(sizes, 0) - sizes
        width = int(sizes.max()) if len(sizes) else 0
        self._pad = torch.arange(width)[None, :] >= sizes[:, None]  # past a group's end

    def sample_from_memory(self) -> tuple[Tensor, Tensor, Tensor]:
        """``sample_size`` memory samples ``(x, y, task_labels)``, balanced over experiences.

        Each experience gives ``sample_size // T`` samples; the remainder goes one each to
        randomly chosen experiences. Draws use torch's global generator (resume-exact).
        """
        if self._mem is None:
            raise RuntimeError("sample_from_memory: the memory is empty")
        n_groups, sizes = len(self._sizes), self._sizes
        base, rem = divmod(self.sample_size, n_groups)
        counts = base + (torch.randperm(n_groups) < rem).long()
        keys = torch.rand(self._pad.shape).masked_fill_(self._pad, 2.0)
        perm = keys.argsort(dim=1)  # a random order of each group's samples, padding last
        cols = torch.arange(int(counts.max()))
        local = perm.gather(1, cols[None, :] % sizes[:, None])  # wraps for small groups
        idx = (local + self._offsets[:, None])[cols[None, :] < counts[:, None]]
        idx = idx.to(self._mem.device)
        return self._mem.x[idx], self._mem.targets[idx], self._mem.task_labels[idx]

    @property
    def reference_gradients(self) -> Tensor | None:
        """This step's reference gradient g_ref as one flat vector (None without memory)."""
        return None if self._ref is None else torch.cat(self._ref)

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        self._ref = None
        if self._mem is None:
            return
        self._params = [p for p in strategy.model.parameters() if p.requires_grad]
        x, y, t = self.sample_from_memory()
        self._ref = loss_gradients(strategy, self._params, x, y, t)

    @torch.no_grad()
    def after_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        if self._ref is None:
            return
        # per parameter, in place: no flat copy of g in or out
        pairs = [(g, r.view_as(g)) for p, r in zip(self._params, self._ref, strict=True)
                 if (g := p.grad) is not None]
        grads, refs = [g for g, _ in pairs], [r for _, r in pairs]
        dot = torch.stack([torch.vdot(g.reshape(-1), r.reshape(-1)) for g, r in pairs]).sum()
        if dot.device.type == "cpu":  # reading a CPU scalar costs no sync: skip what is not needed
            d = float(dot)
            if d < 0:
                sq = sum(float(torch.vdot(r.reshape(-1), r.reshape(-1))) for r in refs)
                torch._foreach_add_(grads, refs, alpha=-d / max(sq, 1e-30))
            return
        sq = torch.stack([torch.vdot(r.reshape(-1), r.reshape(-1)) for r in refs]).sum()
        # coefficient 0 when g . g_ref >= 0 (g unchanged), decided without a host sync
        coef = dot.clamp(max=0) / sq.clamp(min=1e-30)
        torch._foreach_add_(grads, torch._foreach_mul(refs, -coef))

    def state_dict(self) -> dict[str, Any]:
        """The episodic memory."""
        return {"ext_mem": memory_state(self.ext_mem)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        load_memory_state(self.ext_mem, state["ext_mem"])
