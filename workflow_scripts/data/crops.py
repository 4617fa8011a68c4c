"""Cutting a box out of the uint16 image cache and resizing it: the one crop routine of training's
multi-crop augmentation (train/multicrop.py) and of the evaluation's resized grid crops
(evaluate/extract.py), so that both see pixels prepared the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from workflow_scripts.data.intensity import scale_intensity, to_three_channels

INTERPOLATIONS = {
    "bicubic": cv2.INTER_CUBIC,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
}


def resized_crop(
    channels: Sequence[np.ndarray],
    box: Sequence[int],
    size: int,
    *,
    clip_max: float,
    interpolation: int = cv2.INTER_CUBIC,
    hflip: bool = False,
    vflip: bool = False,
    clamp: bool = True,
) -> torch.Tensor:
    """Cut `box` out of each (H, W) uint16 channel, scale to value / clip_max, resize to
    (size, size), flip; grey is repeated to 3 channels. Returns float32 (3, size, size).
    clamp=False (training's default, `train.clamp_crops`): scaled before the resize, as the
    seed (bicubic overshoot kept); clamp=True (feature extraction): the uint16 box is resized,
    then scaled (values in [0, 1])."""
    top, left, height, width = (int(v) for v in box)
    rows = slice(None, None, -1 if vflip else 1)
    cols = slice(None, None, -1 if hflip else 1)
    scale = np.float32(1.0 / clip_max)

    def region(channel: np.ndarray) -> np.ndarray:
        cut = channel[top : top + height, left : left + width]
        return cut if clamp else cut.astype(np.float32) * scale  # the seed's Normalize

    # per channel: resizing the memmap views directly beats stacking them for a 3-channel resize
    planes = [
        cv2.resize(region(channel), (size, size), interpolation=interpolation)[rows, cols]
        for channel in channels
    ]
    # at most one copy: flipped views -> contiguous (C, S, S)
    chw = np.stack(planes) if len(planes) > 1 else np.ascontiguousarray(planes[0][None])
    crop = torch.from_numpy(chw)
    if clamp:
        crop = scale_intensity(crop, clip_max)
    return to_three_channels(crop)


def limit_opencv_threads(worker_id: int) -> None:
    """DataLoader worker_init_fn (training and extraction): parallelism comes from the workers;
    OpenCV's own thread pool would oversubscribe the cores."""
    cv2.setNumThreads(1)
