"""Reduced ResNet-18 (Lopez-Paz & Ranzato 2017, GEM): a slim ResNet-18 for 32x32 images.

Four stages of two basic blocks with ``nf, 2nf, 4nf, 8nf`` channels (``nf=20`` in the paper
instead of ResNet-18's 64), a 3x3 stride-1 stem and no max-pool, then global average pooling.
"""

from __future__ import annotations

from torch import Tensor, nn

from raycl.checks import check_int
from raycl.models._checks import as_images
from raycl.models.dynamic import MultiHeadClassifier, MultiTaskModule

__all__ = ["MTResNet18Reduced", "ResNet18Reduced"]


class _BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a residual connection (1x1 conv when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class _ReducedTrunk(nn.Module):
    """Stem, four stages of two blocks, global average pooling: ``(N, 8 * nf)`` features."""

    def __init__(self, nf: int, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, nf, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(nf), nn.ReLU())
        stages, cin = [], nf
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = nf * 2 ** i
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(as_images(x, self.in_channels))))


class ResNet18Reduced(nn.Module):
    """Reduced ResNet-18 classifier: ``features`` (the trunk) then ``classifier`` (Linear).

    Takes ``(N, C, H, W)`` images or flattened square ones (``(N, 3072)`` for CIFAR).

    Args:
        num_classes: output units.
        nf: channels of the first stage (20 in the GEM paper).
        in_channels: image channels.
    """

    def __init__(self, num_classes: int = 10, nf: int = 20, in_channels: int = 3) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, minimum=1)
        nf = check_int("nf", nf, minimum=1)
        in_channels = check_int("in_channels", in_channels, minimum=1)
        self.features = _ReducedTrunk(nf, in_channels)
        self.feature_size = 8 * nf
        self.classifier = nn.Linear(8 * nf, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


class MTResNet18Reduced(MultiTaskModule):
    """Reduced ResNet-18 trunk shared by all tasks with one linear head per task.

    The trunk (and its batch norm) runs once on the whole batch; only the heads are routed.

    Args:
        nf: channels of the first stage.
        in_channels: image channels.
        initial_out_features: minimum head width.
    """

    def __init__(self, nf: int = 20, in_channels: int = 3, initial_out_features: int = 2) -> None:
        super().__init__()
        nf = check_int("nf", nf, minimum=1)
        in_channels = check_int("in_channels", in_channels, minimum=1)
        self.features = _ReducedTrunk(nf, in_channels)
        self.feature_size = 8 * nf
        self.classifier = MultiHeadClassifier(8 * nf, initial_out_features)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """Logits of each sample's task head (padded to the widest head in mixed batches)."""
        return self.classifier(self.features(x), task_labels)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Logits of ``task_label``'s head for the whole batch."""
        return self.classifier.forward_single_task(self.features(x), task_label)
