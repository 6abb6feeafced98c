"""Input reshaping shared by the image models (argument checks live in :mod:`raycl.checks`)."""

from __future__ import annotations

import math

from torch import Tensor


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
