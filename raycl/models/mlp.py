"""Multi-layer perceptrons: single-head (class/domain-IL) and multi-head (task-IL)."""

from __future__ import annotations

from torch import Tensor, nn

from raycl.checks import check_int, check_rate
from raycl.models.dynamic import MultiHeadClassifier, MultiTaskModule

__all__ = ["MultiHeadMLP", "SimpleMLP"]


def _trunk(input_size: int, hidden_size: int, hidden_layers: int, drop_rate: float
           ) -> nn.Sequential:
    """Flatten, then ``hidden_layers`` x (Linear, ReLU[, Dropout])."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = input_size
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        if drop_rate > 0:
            layers.append(nn.Dropout(drop_rate))
        width = hidden_size
    return nn.Sequential(*layers)


class SimpleMLP(nn.Module):
    """An MLP classifier: ``features`` (the hidden layers) then ``classifier`` (a Linear).

    Inputs of any shape are flattened per sample. ``hidden_layers=0`` gives a linear
    classifier on the inputs. Plugins that work on the last layer (CWR*) or on the
    penultimate features find them as ``classifier`` and ``features``.

    Args:
        num_classes: output units.
        input_size: features per (flattened) sample.
        hidden_size: units per hidden layer.
        hidden_layers: number of hidden layers (>= 0).
        drop_rate: dropout after each hidden layer, in [0, 1).
    """

    def __init__(self, num_classes: int = 10, input_size: int = 784, hidden_size: int = 512,
                 hidden_layers: int = 1, drop_rate: float = 0.5) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, minimum=1)
        input_size = check_int("input_size", input_size, minimum=1)
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        hidden_layers = check_int("hidden_layers", hidden_layers, minimum=0)
        drop_rate = check_rate("drop_rate", drop_rate)
        self.features = _trunk(input_size, hidden_size, hidden_layers, drop_rate)
        self.feature_size = hidden_size if hidden_layers else input_size
        self.classifier = nn.Linear(self.feature_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


class MultiHeadMLP(MultiTaskModule):
    """An MLP trunk shared by all tasks and one linear head per task (task-incremental).

    The trunk runs once on the whole batch; only the heads are routed per task. Heads
    appear as tasks do (see :class:`MultiHeadClassifier`).

    Args:
        input_size: features per (flattened) sample.
        hidden_size: units per hidden layer.
        hidden_layers: number of hidden layers (>= 1).
        drop_rate: dropout after each hidden layer, in [0, 1).
        initial_out_features: minimum head width.
    """

    def __init__(self, input_size: int = 784, hidden_size: int = 256, hidden_layers: int = 2,
                 drop_rate: float = 0.0, initial_out_features: int = 2) -> None:
        super().__init__()
        input_size = check_int("input_size", input_size, minimum=1)
        hidden_size = check_int("hidden_size", hidden_size, minimum=1)
        hidden_layers = check_int("hidden_layers", hidden_layers, minimum=1)
        drop_rate = check_rate("drop_rate", drop_rate)
        self.features = _trunk(input_size, hidden_size, hidden_layers, drop_rate)
        self.feature_size = hidden_size
        self.classifier = MultiHeadClassifier(hidden_size, initial_out_features)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """Logits of each sample's task head (padded to the widest head in mixed batches)."""
        return self.classifier(self.features(x), task_labels)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of ``task_label``'s head for the whole batch."""
        return self.classifier.forward_single_task(self.features(x), task_label)
