"""How raw 16-bit intensities become model input; training and extraction both use this."""

from __future__ import annotations

import numpy as np
import torch


def scale_intensity(image: np.ndarray | torch.Tensor, clip_max: float):
    """Clip at `clip_max` and divide by it: uint16 counts -> float32 in [0, 1]."""
    if isinstance(image, torch.Tensor):
        return image.to(torch.float32).clamp_(max=clip_max).div_(clip_max)
    return np.minimum(image.astype(np.float32), clip_max) / np.float32(clip_max)


def to_three_channels(image: torch.Tensor) -> torch.Tensor:
    """(..., 1, H, W) grey -> (..., 3, H, W) by repetition (what RGB-pretrained DINOv3 expects);
    3-channel input passes through."""
    if image.shape[-3] == 3:
        return image
    if image.shape[-3] != 1:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(image.shape)}")
    return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
