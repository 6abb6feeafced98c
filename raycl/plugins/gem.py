"""GEM: Gradient Episodic Memory, projecting each update so no past experience's loss increases.

Lopez-Paz and Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (NeurIPS).
After each experience ``patterns_per_experience`` random samples of it are stored. Every training
step computes the gradient ``g_e`` of the mean loss on each past experience's memory (rows of G);
when the current gradient g has ``G g < 0`` somewhere, the dual QP
``min_v 1/2 v^T (G G^T + 1e-3 I) v + (G g)^T v  s.t.  v >= memory_strength`` is solved with
quadprog in float64 and the gradient becomes ``G^T v + g``.

Engineering, not math: the rows of G come from one fused forward/backward over all memories
with per-experience weight gradients (models of ``nn.Linear`` layers, see ``_episodic``),
else one vectorised pass (``torch.func``: ``vmap`` over experiences of ``grad`` of the mean
loss) when the model allows it, else one backward per experience (e.g. multi-task models, whose
routing depends on the data). The ridge 1e-3 leaves the
constraints violated by up to ``1e-3 * v``; a few proximal-point steps (each a quadprog call with
a shifted linear term, starting from the reference's solution) converge to the ridge-free
solution, so ``G g >= 0`` holds to rounding after projection. Only parameters that have a gradient
this step take part (the others keep ``grad is None``, so the optimizer leaves them alone).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from raycl.benchmarks.base import TensorCLDataset
from raycl.checks import check_int, check_number
from raycl.models import MultiTaskModule
from raycl.plugins._episodic import (
    EpisodicMemory,
    linear_stack_gradients,
    linear_stack_supported,
    loss_gradients,
)
from raycl.plugins.base import Strategy, StrategyPlugin
from raycl.plugins.storage_policy import load_memory_state, memory_state

__all__ = ["EpisodicMemory", "GEMPlugin", "loss_gradients"]


class GEMPlugin(EpisodicMemory, StrategyPlugin):
    """Gradient Episodic Memory.

    Args:
        patterns_per_experience: samples stored per experience (>= 1).
        memory_strength: the QP's lower bound on the dual variables (>= 0); larger values push
            the update further towards the past experiences' gradients.
    """

    ridge = 1e-3  # added to G G^T, as in the reference
    refine_steps = 50  # at most this many proximal-point steps after the reference's solution
    _chunk = 1 << 15  # columns of G cast to float64 at a time
    #: False: always one backward per past experience (no fused pass, no vmap)
    vectorize = True

    def __init__(self, patterns_per_experience: int, memory_strength: float) -> None:
        super().__init__()
        self.patterns_per_experience = check_int("patterns_per_experience",
                                                 patterns_per_experience, minimum=1)
        self.memory_strength = check_number("memory_strength", memory_strength, low=0.0)
        self.ext_mem: dict[int, TensorCLDataset] = {}
        self._blocks: list[Tensor] | None = None  # per parameter: (past exps, numel)
        self._params: list[nn.Parameter] = []
        self._stacks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # equal-size groups
        self._vmap_ok: bool | None = None
        self._linear_ok: bool | None = None  # the fused nn.Linear pass applies (None: unknown)
        self._per_exp: tuple[tuple[int, int], Any] | None = None  # (model, criterion) ids, fn

    # ---- memory: update_memory / after_training_exp from EpisodicMemory ------------------------

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        self._per_exp = None
        # memories of equal size are stacked (experience, sample, ...) for the vectorised pass
        by_size: dict[int, list[int]] = {}
        mems = [m.to(strategy.device) for m in self.ext_mem.values()]
        for i, m in enumerate(mems):
            if len(m):
                by_size.setdefault(len(m), []).append(i)
        self._stacks = [(torch.tensor(rows, device=strategy.device),
                         torch.stack([mems[i].x for i in rows]),
                         torch.stack([mems[i].targets for i in rows]),
                         torch.stack([mems[i].task_labels for i in rows]))
                        for rows in by_size.values()]

    # ---- gradients ------------------------------------------------------------------------------
    @property
    def G(self) -> Tensor | None:
        """This step's past-experience gradients: one row per past experience (flat copy)."""
        if self._blocks is None:
            return None
        return self._blocks[0] if len(self._blocks) == 1 else torch.cat(self._blocks, 1)

    @G.setter
    def G(self, value: Tensor | None) -> None:
        # lets solve_quadprog(g) be called on a hand-made G, as with the reference's self.G
        self._blocks = None if value is None else [value]

    def before_training_iteration(self, strategy: Strategy, **kwargs: Any) -> None:
        self._blocks = None
        if not self._stacks:
            return
        # kept per parameter, (experiences, numel) each: no copy into one flat matrix
        self._params = [p for p in strategy.model.parameters() if p.requires_grad]
        blocks = self._gradients_linear(strategy) if self.vectorize else None
        if blocks is None and self.vectorize and self._vmap_ok is not False:
            blocks = self._gradients_vmap(strategy)
        if blocks is None:
            rows = [loss_gradients(strategy, self._params, x[i], y[i], t[i])
                    for _, x, y, t in self._stacks for i in range(len(x))]
            blocks = [torch.stack(col) for col in zip(*rows, strict=True)]
        if len(self._stacks) > 1:  # rows back in experience order
            order = torch.argsort(torch.cat([rows for rows, *_ in self._stacks]))
            blocks = [b[order] for b in blocks]
        self._blocks = blocks

    def _gradients_linear(self, strategy: Strategy) -> list[Tensor] | None:
        """Blocks from one fused pass per stack, or None if the model does not allow it."""
        if self._linear_ok is None:
            self._linear_ok = linear_stack_supported(strategy.model, strategy.criterion,
                                                     self._params)
        parts = []
        for _, x, y, _ in self._stacks if self._linear_ok else ():
            blocks = linear_stack_gradients(strategy.model, strategy.criterion, self._params, x,
                                            y)
            if blocks is None:  # a layer called twice, or on 3-D input: not again
                self._linear_ok = False
                return None
            parts.append(blocks)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else [torch.cat(c) for c in zip(*parts, strict=True)]

    def _gradients_vmap(self, strategy: Strategy) -> list[Tensor] | None:
        """Blocks from one vectorised pass, or None if this model does not support it."""
        if self._vmap_ok is None:  # first use: find out, leaving the RNG as if never tried
            if isinstance(strategy.model, MultiTaskModule):
                self._vmap_ok = False
                return None
            rng = torch.get_rng_state()
            cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
            try:
                blocks = self._vmap_pass(strategy)
            except Exception as e:  # noqa: BLE001 - any failure means: one backward per experience
                torch.set_rng_state(rng)
                if cuda is not None:
                    torch.cuda.set_rng_state_all(cuda)
                warnings.warn(f"GEMPlugin: vectorised gradients unavailable for this model "
                              f"({type(e).__name__}: {e}); using one backward per past experience",
                              stacklevel=3)
                self._vmap_ok = False
                return None
            self._vmap_ok = True
            return blocks
        return self._vmap_pass(strategy)

    def _vmap_pass(self, strategy: Strategy) -> list[Tensor]:
        """``vmap`` over experiences of ``grad`` of the mean loss on each one's memory."""
        from torch.func import functional_call, grad, vmap

        model, criterion = strategy.model, strategy.criterion
        key = (id(model), id(criterion))
        if self._per_exp is None or self._per_exp[0] != key:  # built once per experience
            def loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
                return criterion(functional_call(model, params, (x,)), y)

            self._per_exp = key, vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")
        per_exp = self._per_exp[1]
        named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        parts = []
        for _, x, y, _ in self._stacks:
            grads = per_exp(named, x, y)
            parts.append([grads[n].reshape(len(x), -1) for n in named])
        return parts[0] if len(parts) == 1 else [torch.cat(c) for c in zip(*parts, strict=True)]

    @torch.no_grad()
    def after_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        if self._blocks is None:
            return
        blocks, grads = [], []
        for b, p in zip(self._blocks, self._params, strict=True):
            if p.grad is not None:
                blocks.append(b)
                grads.append(p.grad)
        flat = [g.reshape(-1) for g in grads]  # views of .grad (copies if not contiguous)
        dots = torch.stack([b @ g for b, g in zip(blocks, flat, strict=True)]).sum(0)
        if bool((dots < 0).any()):  # host sync: the QP runs on the CPU anyway
            self._project(blocks, flat, out=flat)  # G^T v + g written over g
            for g, f in zip(grads, flat, strict=True):
                if f.data_ptr() != g.data_ptr():  # a non-contiguous .grad: reshape copied it
                    g.copy_(f.view_as(g))

    def solve_quadprog(self, g: Tensor, G: Tensor | None = None) -> Tensor:
        """The projected gradient ``G^T v + g`` for the dual QP's solution v (float64 solve)."""
        G = self.G if G is None else G
        if G is None:
            raise RuntimeError("solve_quadprog: no past-experience gradients (G) to project on")
        return self._project([G], [g])[0]

    def _project(self, blocks: list[Tensor], grads: list[Tensor],
                 out: list[Tensor] | None = None) -> list[Tensor]:
        """Solve the dual QP for G (given in column blocks) and g; return G^T v + g in blocks.

        The result is written into ``out`` when given (it may be ``grads`` itself: each column
        chunk of g is read, in float64, before any is written)."""
        import quadprog

        # float64 sums over column chunks: each chunk is cast while in cache, no full copies;
        # g's chunks are kept in float64 for the final G^T v + g (cast once, not twice)
        pieces = [(b[:, j:j + self._chunk], g[j:j + self._chunk]) for b, g in
                  zip(blocks, grads, strict=True) for j in range(0, b.shape[1], self._chunk)]
        gram_t = blocks[0].new_zeros((len(blocks[0]),) * 2, dtype=torch.float64)
        Gg_t = gram_t.new_zeros(len(blocks[0]))
        grads64 = []
        for b, g in pieces:
            bd, gd = b.double(), g.double()
            gram_t.addmm_(bd, bd.T)
            Gg_t.addmv_(bd, gd)
            grads64.append(gd)
        gram, Gg = gram_t.cpu().numpy(), Gg_t.cpu().numpy()
        gram = 0.5 * (gram + gram.T)
        if not (np.isfinite(gram).all() and np.isfinite(Gg).all()):
            warnings.warn("GEMPlugin: non-finite gradients, step left unprojected", stacklevel=3)
            return grads if out is None else out
        # Solved for w = v / d with d = 1/sqrt(diag(gram) + ridge): the same minimiser, but a
        # unit diagonal, so quadprog copes with gradients of very different sizes.
        d = 1.0 / np.sqrt(np.diag(gram) + self.ridge)
        eye, t = np.eye(len(d)), len(d)
        scaled, q, low = gram * np.outer(d, d), Gg * d, self.memory_strength / d
        w = quadprog.solve_qp(scaled + self.ridge * np.diag(d * d), -q, eye, low)[0]  # reference
        # Proximal point on the ridge-free QP: each step leaves G g' = (lambda - rho dw) / d, so
        # the constraints G g' >= 0 hold once w stops moving.
        rho, tol = 1e-4, 1e-9 * max(float(np.abs(Gg).max()), 1e-30)
        prox = scaled + rho * eye  # the same matrix at every step (quadprog copies it)
        for _ in range(self.refine_steps if t else 0):
            w_next = quadprog.solve_qp(prox, -q + rho * w, eye, low)[0]
            step = float((rho * np.abs(w_next - w) / d).max())
            w = w_next
            if step <= tol:
                break
        # in float64 too: v rounded to float32 would break the constraints by ~1e-7 * |G|^2
        vd = torch.from_numpy(w * d).to(gram_t)
        if out is None:
            out = [torch.empty_like(g) for g in grads]
        targets = [o[j:j + self._chunk] for o in out for j in range(0, o.shape[0], self._chunk)]
        for (b, _), gd, o in zip(pieces, grads64, targets, strict=True):
            o.copy_(gd.addmv_(b.double().T, vd))
        return out

    # ---- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The episodic memory."""
        return {"ext_mem": memory_state(self.ext_mem)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        load_memory_state(self.ext_mem, state["ext_mem"])
