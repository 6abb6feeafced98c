"""CWR*: Copy Weights with Re-init, a rehearsal-free class-incremental method.

Lomonaco, Maltoni and Pellegrini, "Rehearsal-Free Continual Learning over Small Non-I.I.D.
Batches", CVPR Workshops 2020. Each experience trains the output layer from zero rows for the
classes it holds; afterwards those rows are mean-shifted and merged into consolidated rows that
the model uses for inference. From the second experience on, the rest of the network is frozen.

CWR* is a method for features that are already good: from the second experience only the output
layer learns, so the first experience (or a pretrained network, as the paper's ImageNet-pretrained
start) must have produced features that separate every class to come. Trained from scratch at
usual settings it stays near chance (split digits, MLP 64-256-256, SGD lr 0.05 momentum 0.9,
2 epochs: 0.22 of mean accuracy, 0.40 at lr 0.01); on a trunk pretrained on all classes with a
fresh head it keeps 0.81-0.86 where naive fine-tuning keeps the last experience's classes
(``bench/bench_fidelity.py cwr``, ``docs/methods.md``). A long first experience does not help
when that experience holds two of ten classes (0.20-0.25).

As in the reference, only the layer's weight rows are consolidated; its bias keeps training.
Our loop keeps optimizer state across experiences (unless ``reset_optimizer=True``), so the
layer's state is cleared when its rows are reset: stale momentum would otherwise move the fresh
rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from raycl.plugins.base import Strategy, StrategyPlugin


def _last_linear_name(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


class CWRStarPlugin(StrategyPlugin):
    """CWR* on the model's last linear layer (or the one named ``cwr_layer_name``).

    Use it on a network whose features are already good (pretrained, or trained on a first
    experience that covers the classes' variety): after the first experience only this layer
    learns. A lower learning rate than for full fine-tuning suits it (on the digits lr 0.01
    beat 0.05: 0.40 against 0.22 from scratch, 0.86 against 0.81 on a pretrained trunk).

    Args:
        model: the model the strategy trains (its layer is looked up by name on every use).
        cwr_layer_name: qualified name of the ``nn.Linear`` output layer; ``None`` picks the last
            ``nn.Linear`` in ``model.named_modules()`` order.
        freeze_remaining_model: from the second experience, put every other layer in eval mode
            and turn off its gradients.
    """

    def __init__(self, model: nn.Module, cwr_layer_name: str | None = None,
                 freeze_remaining_model: bool = True) -> None:
        if cwr_layer_name is None:
            cwr_layer_name = _last_linear_name(model)
            if cwr_layer_name is None:
                raise ValueError("cwr_layer_name: the model has no nn.Linear layer to detect; "
                                 "name the output layer")
            self._layer_name = cwr_layer_name
            self.cwr_layer_name: str | None = None
        else:
            modules = dict(model.named_modules())
            if not isinstance(modules.get(cwr_layer_name), nn.Linear):
                raise ValueError(f"cwr_layer_name: {cwr_layer_name!r} is not an nn.Linear layer "
                                 f"of the model (linear layers: "
                                 f"{[n for n, m in modules.items() if isinstance(m, nn.Linear)]})")
            self._layer_name = self.cwr_layer_name = cwr_layer_name
        self.model = model
        self.freeze_remaining_model = bool(freeze_remaining_model)
        layer = self.get_cwr_layer()
        n_out = layer.out_features
        #: consolidated rows (valid where ``has_saved``), per-class sample counts so far and now
        self.saved_weights = torch.zeros(layer.weight.shape)  # kept on the CPU: tiny
        self.has_saved = torch.zeros(n_out, dtype=torch.bool)
        self.past_j = torch.zeros(n_out, dtype=torch.long)
        self.cur_j = torch.zeros(n_out, dtype=torch.long)
        self.cur_class: list[int] = []

    # ---- callbacks --------------------------------------------------------------------------
    def before_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Freeze (from the 2nd experience), count the classes, reset the layer's rows."""
        if self.freeze_remaining_model and strategy.clock.train_exp_counter > 0:
            self.freeze_other_layers()
        layer = self.get_cwr_layer()
        targets = strategy.adapted_dataset.targets.cpu()  # type: ignore[union-attr]
        if targets.numel() and int(targets.max()) >= layer.out_features:
            raise ValueError(f"cwr_layer_name: layer {self._layer_name!r} has "
                             f"{layer.out_features} outputs but the data has class "
                             f"{int(targets.max())}")
        self.cur_j = torch.bincount(targets, minlength=layer.out_features)
        self.cur_class = torch.nonzero(self.cur_j).flatten().tolist()
        self.reset_weights(self.cur_class)
        for p in layer.parameters():  # stale momentum would move the freshly reset rows
            strategy.optimizer.state.pop(p, None)

    def after_training_exp(self, strategy: Strategy, **kwargs: Any) -> None:
        """Consolidate the rows of the experience's classes and write every consolidated row."""
        self.consolidate_weights()
        self.set_consolidate_weights()

    # ---- the method -------------------------------------------------------------------------
    @torch.no_grad()
    def consolidate_weights(self) -> None:
        """Mean-shift the current classes' rows and merge them into the consolidated rows.

        ``w_c = W_c - mean(W[current classes])`` (mean over all their entries, as the reference);
        a class seen before is merged with weight ``sqrt(past_j / cur_j)`` on its old row.
        """
        if not self.cur_class:
            return
        layer = self.get_cwr_layer()
        cur = torch.tensor(self.cur_class)
        w = layer.weight.detach().cpu()[cur]
        new_w = w - w.mean()
        seen = self.has_saved[cur]
        wpast = torch.sqrt(self.past_j[cur].double() / self.cur_j[cur].double()).float()
        wpast = torch.where(seen, wpast, torch.zeros_like(wpast))  # new class: plain copy
        self.saved_weights[cur] = (self.saved_weights[cur] * wpast[:, None] + new_w) / (
            wpast[:, None] + 1)
        self.has_saved[cur] = True
        self.past_j[cur] += self.cur_j[cur]

    @torch.no_grad()
    def set_consolidate_weights(self) -> None:
        """Write every consolidated row into the layer."""
        layer = self.get_cwr_layer()
        rows = self.has_saved.to(layer.weight.device)
        layer.weight[rows] = self.saved_weights.to(layer.weight)[rows]

    @torch.no_grad()
    def reset_weights(self, cur_clas: list[int]) -> None:
        """Zero the layer, then restore the consolidated rows of the classes in ``cur_clas``."""
        layer = self.get_cwr_layer()
        layer.weight.zero_()
        rows = torch.zeros_like(self.has_saved)
        rows[torch.as_tensor(cur_clas, dtype=torch.long)] = True
        rows = (rows & self.has_saved).to(layer.weight.device)
        layer.weight[rows] = self.saved_weights.to(layer.weight)[rows]

    def get_cwr_layer(self) -> nn.Linear:
        """The CWR* output layer of ``model``."""
        layer = self.model.get_submodule(self._layer_name)
        assert isinstance(layer, nn.Linear)
        return layer

    def freeze_other_layers(self) -> None:
        """Eval mode and no gradients for every layer but the CWR* one (which stays trainable)."""
        layer = self.get_cwr_layer()
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        layer.train()
        for p in layer.parameters():
            p.requires_grad_(True)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Consolidated rows and per-class counts (tensors only)."""
        return {"saved_weights": self.saved_weights.clone(),
                "has_saved": self.has_saved.clone(), "past_j": self.past_j.clone(),
                "cur_j": self.cur_j.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        t: dict[str, Tensor] = {k: state[k].cpu() for k in
                                ("saved_weights", "has_saved", "past_j", "cur_j")}
        if t["saved_weights"].shape != self.saved_weights.shape:
            raise ValueError(f"state: saved_weights of shape {tuple(t['saved_weights'].shape)} "
                             f"does not fit layer {self._layer_name!r}")
        self.saved_weights = t["saved_weights"]
        self.has_saved, self.past_j, self.cur_j = t["has_saved"], t["past_j"], t["cur_j"]
        self.cur_class = torch.nonzero(self.cur_j).flatten().tolist()
