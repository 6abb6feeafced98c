"""A small convolutional network for 28x28 and 32x32 images."""

from __future__ import annotations

from torch import Tensor, nn

from raycl.checks import check_int, check_rate
from raycl.models._checks import as_images

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    """Two conv blocks (32 then 64 channels), global average pooling, a linear classifier.

    Works on any image size (global pooling); flattened square images are reshaped, so it
    accepts the ``(N, 784)`` rows of flattened MNIST as well as ``(N, C, H, W)`` images.

    Args:
        num_classes: output units.
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        drop_rate: dropout after each conv block, in [0, 1).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 drop_rate: float = 0.25) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, minimum=1)
        in_channels = check_int("in_channels", in_channels, minimum=1)
        self.in_channels = in_channels
        drop_rate = check_rate("drop_rate", drop_rate)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                    nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                    nn.MaxPool2d(2), nn.Dropout(drop_rate)]

        self.features = nn.Sequential(*block(in_channels, 32), *block(32, 64),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_size = 64
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        return self.classifier(self.features(as_images(x, self.in_channels)))
