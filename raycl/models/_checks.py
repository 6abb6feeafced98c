"""Constructor-argument checks shared by the models."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_rate(value: Any, name: str) -> float:
    """A probability in [0, 1), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def as_images(x: Tensor, in_channels: int) -> Tensor:
    """``x`` as (N, C, H, W): flattened rows of square images are reshaped, images kept."""
    if x.dim() == 4:
        return x
    if x.dim() == 3 and in_channels == 1:  # (N, H, W)
        return x.unsqueeze(1)
    if x.dim() == 2:
        side = math.isqrt(x.shape[1] // in_channels)
        if in_channels * side * side == x.shape[1]:
            return x.reshape(x.shape[0], in_channels, side, side)
    raise ValueError(f"expected (N, {in_channels}, H, W) images or flattened square ones, "
                     f"got shape {tuple(x.shape)}")
