"""Learning without Forgetting (LwF).

Li and Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017. After each experience the
model is copied into a frozen teacher (eval mode, no gradients). While training later experiences
the student's outputs on the current data are distilled towards the teacher's, on the output
units of the classes seen so far only:
``alpha_t * KL(softmax(teacher[:, A] / T) || softmax(student[:, A] / T))``, batch-mean.

Multi-head models (``MultiTaskModule``): every head that has seen classes is distilled on its own
units (the sum over heads, as in the reference). For a model whose heads are the ``nn.Linear`` of
one ``MultiHeadClassifier`` (e.g. ``MultiHeadMLP``) the student's past heads read the features the
training forward already computed (captured by a hook that lives only during that forward), the
teacher runs its trunk once, and all past heads are one matmul and one softmax, so the cost barely
grows with the number of tasks; other multi-task models are run once per past task.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raycl.checks import check_number
from raycl.plugins._params import at_experience, check_schedule
from raycl.plugins.base import Strategy, StrategyPlugin


def _head_module(model: nn.Module) -> nn.Module | None:
    from raycl.models import MultiHeadClassifier

    heads = [m for m in model.modules() if isinstance(m, MultiHeadClassifier)]
    return heads[0] if len(heads) == 1 else None


class _Capture:
    """Forward pre-hook keeping the input of a module for one forward pass."""

    def __init__(self, module: nn.Module) -> None:
        self.features: Tensor | None = None
        self._handle = module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.features = args[0]

    def remove(self) -> Tensor | None:
        self._handle.remove()
        return self.features


class LwFPlugin(StrategyPlugin):
    """LwF: distil the previous model's outputs on the classes already seen.

    Args:
        alpha: distillation weight (>= 0), or a list indexed by experience (the last entry
            applies to later experiences).
        temperature: softmax temperature (> 0).
    """

    def __init__(self, alpha: float | Sequence[float] = 1, temperature: float = 2) -> None:
        self.alpha = check_schedule("alpha", alpha)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.teacher: nn.Module | None = None
        #: task label -> class ids seen by that head (all in task 0 for single-head models)
        self.seen_classes: dict[int, list[int]] = {}
        self._teacher_state: dict[str, Tensor] | None = None  # loaded, teacher not rebuilt yet
        self._capture: _Capture | None = None
        self._units: dict[int, Tensor | int] = {}
        self._heads: tuple[Any, ...] | None = None  # the stacked-heads fast path, per experience

    # ---- callbacks --------------------------------------------------------------------------
    def before_training(self, strategy: Strategy, **kwargs: Any) -> None:
        """Rebuild a teacher loaded from a checkpoint (before any head grows)."""
        self._rebuild_teacher(strategy.model)

    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Index the distilled units on the device."""
        self._rebuild_teacher(strategy.model)
        # classes 0..k-1 (the usual case) are a slice; anything else an index tensor
        self._units = {t: len(c) if c == list(range(len(c)))
                       else torch.tensor(c, device=strategy.device)
                       for t, c in self.seen_classes.items()}
        self._heads = self._stack_heads(strategy.model, strategy.device)

    def before_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Capture the multi-head classifier's input features during the training forward."""
        if self.teacher is not None and self._heads is not None:
            self._capture = _Capture(self._heads[0])

    def after_forward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Stop capturing (the hook lives only during the training forward)."""
        if self._capture is not None:
            self._capture.remove()

    def before_backward(self, strategy: Strategy, **kwargs: Any) -> None:
        """Add ``alpha_t * distillation`` to the loss (nothing before a teacher exists)."""
        if self.teacher is None:
            return
        alpha = at_experience(self.alpha, strategy.clock.train_exp_counter)
        if alpha == 0:
            self._capture = None
            return
        strategy.loss = strategy.loss + alpha * self.penalty(strategy)

    @torch.no_grad()
    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Record the experience's classes; the current model becomes the teacher."""
        exp = strategy.experience
        task = int(exp.task_label) if self._multi_task(strategy.model) else 0  # type: ignore
        classes = set(self.seen_classes.get(task, []))
        classes.update(int(c) for c in exp.classes_in_this_experience)  # type: ignore[union-attr]
        self.seen_classes[task] = sorted(classes)
        self.teacher = self._frozen_copy(strategy.model)
        self._teacher_state, self._heads = None, None

    # ---- distillation -----------------------------------------------------------------------
    def penalty(self, strategy: Strategy) -> Tensor:
        """The distillation loss of the current minibatch (summed over distilled heads)."""
        assert self.teacher is not None
        x, capture, self._capture = strategy.mb_x, self._capture, None
        if not self._multi_task(strategy.model):
            with torch.no_grad():
                teacher_out = self.teacher(x)
            return self.distillation(strategy.mb_output, teacher_out, self._units[0])
        if capture is not None and capture.features is not None and self._heads is not None:
            stacked = self._stacked_distillation(capture.features, x)
            if stacked is not None:
                return stacked
        tasks = list(self._units)
        with torch.no_grad():
            teacher_outs = [self.teacher(x, t) for t in tasks]
        student_outs = [strategy.model(x, t) for t in tasks]
        loss = x.new_zeros(())
        for t, s_out, t_out in zip(tasks, student_outs, teacher_outs):
            loss = loss + self.distillation(s_out, t_out, self._units[t])
        return loss

    def _stack_heads(self, model: nn.Module, device: torch.device) -> tuple[Any, ...] | None:
        """For a model whose heads are the ``nn.Linear`` of one ``MultiHeadClassifier``: the
        past heads concatenated (one matmul for all of them) and the columns to distil."""
        head, t_head = _head_module(model), _head_module(self.teacher) if self.teacher else None
        if head is None or t_head is None or not self._multi_task(model):
            return None
        tasks = list(self.seen_classes)
        lins = [m.classifiers[str(t)] if str(t) in m.classifiers else None
                for m in (head, t_head) for t in tasks]
        if not all(isinstance(h, nn.Linear) and h.bias is not None for h in lins):
            return None
        s_lin, t_lin = lins[:len(tasks)], lins[len(tasks):]

        def columns(heads: list[Any]) -> Tensor:
            offsets = [0]
            for h in heads:
                offsets.append(offsets[-1] + h.out_features)
            return torch.tensor([o + c for o, t in zip(offsets, tasks)
                                 for c in self.seen_classes[t]], device=device)

        sizes = [len(self.seen_classes[t]) for t in tasks]
        with torch.no_grad():
            t_weight = torch.cat([h.weight for h in t_lin])
            t_bias = torch.cat([h.bias for h in t_lin])
        return (head, t_head, s_lin, t_weight, t_bias, columns(s_lin), columns(t_lin), sizes,
                tasks[0])

    def _stacked_distillation(self, feats: Tensor, x: Tensor) -> Tensor | None:
        head, t_head, s_lin, t_weight, t_bias, s_cols, t_cols, sizes, first = self._heads  # type: ignore
        with torch.no_grad():
            grab = _Capture(t_head)
            try:
                self.teacher(x, first)  # type: ignore[misc]  # runs the teacher's trunk once
            finally:
                t_feats = grab.remove()
            if t_feats is None:  # the teacher did not call its classifier module
                return None
            t_out = F.linear(t_feats, t_weight, t_bias).index_select(1, t_cols)
        s_out = F.linear(feats, torch.cat([h.weight for h in s_lin]),
                         torch.cat([h.bias for h in s_lin])).index_select(1, s_cols)
        if len(set(sizes)) == 1:  # every head distils as many units: one softmax for all
            n, inv_t = x.shape[0], 1.0 / self.temperature
            log_p = F.log_softmax((s_out * inv_t).view(n, len(sizes), sizes[0]), dim=2)
            log_q = F.log_softmax((t_out * inv_t).view(n, len(sizes), sizes[0]), dim=2)
            return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / n
        return sum((self.distillation(s, t, s.shape[1]) for s, t in
                    zip(s_out.split(sizes, 1), t_out.split(sizes, 1))), x.new_zeros(()))

    def distillation(self, student_out: Tensor, teacher_out: Tensor,
                     units: Tensor | int) -> Tensor:
        """``KL(softmax(teacher[:, A] / T) || softmax(student[:, A] / T))``, batch-mean, with
        ``A = units`` (class ids), or the first ``units`` outputs if an int."""
        if isinstance(units, int):
            student_out, teacher_out = student_out[:, :units], teacher_out[:, :units]
        else:
            student_out, teacher_out = student_out[:, units], teacher_out[:, units]
        inv_t = 1.0 / self.temperature
        log_p = F.log_softmax(student_out * inv_t, dim=1)
        log_q = F.log_softmax(teacher_out * inv_t, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)

    # ---- teacher ----------------------------------------------------------------------------
    @staticmethod
    def _multi_task(model: nn.Module) -> bool:
        from raycl.models import MultiTaskModule

        return isinstance(model, MultiTaskModule)

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        teacher = copy.deepcopy(model)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _rebuild_teacher(self, model: nn.Module) -> None:
        if self._teacher_state is not None:
            teacher = self._frozen_copy(model)
            teacher.load_state_dict(self._teacher_state)
            self.teacher, self._teacher_state = teacher, None

    # ---- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The teacher's ``state_dict`` (or None) and the classes seen per head."""
        teacher = self.teacher.state_dict() if self.teacher is not None else self._teacher_state
        return {"teacher": None if teacher is None else dict(teacher),
                "seen_classes": {t: list(c) for t, c in self.seen_classes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the teacher is rebuilt from the model when training
        resumes (a deep copy of the strategy's model with the saved weights loaded)."""
        self.seen_classes = {int(t): [int(c) for c in cs]
                             for t, cs in state["seen_classes"].items()}
        self.teacher, self._heads = None, None
        self._teacher_state = None if state["teacher"] is None else dict(state["teacher"])
