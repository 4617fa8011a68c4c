"""DINO multi-crop augmentation of one field of view read from the uint16 image cache.

The recipe is the seed's (WS-DINO ``DINO_BBBC021.py``, albumentations, per crop):
``HorizontalFlip(0.5)`` -> ``VerticalFlip(0.5)`` -> ``Normalize(max_pixel_value=clip_max)`` (the
whole field to float32 in [0, 1]) -> ``RandomResizedCrop(size, scale, ratio=(1, 1), bicubic)``;
grey is repeated to three channels. The crop aspect-ratio range is the config key
``train.{global,local}_crops.ratio`` (the seed's square boxes: [1, 1]). Here the same
distribution is produced from a memory map, touching only the pixels each crop needs:

1. All boxes of a view are sampled first, on the full image shape, with albumentations'
   documented ``RandomResizedCrop`` formula (target area uniform in ``scale`` x image area, aspect
   ratio log-uniform in ``ratio``, side lengths rounded, up to 10 attempts, else the
   ratio-constrained centre crop; the box start is ``int((H - h + 1) * u)``), vectorised over
   crops and attempts. It is re-implemented rather than called because albumentations' sampler is
   a per-call Python loop on its own ``random.Random``; drawing all boxes at once from one numpy
   ``Generator`` is cheaper and lets the dataset key the randomness on (seed, epoch, image). The
   box cannot be left to ``A.RandomResizedCrop`` on a pre-cut region: it must be sampled on the
   full image or the distribution changes.
2. Only the box is sliced from the uint16 memmap (no decode, no full-field float copy).
   Default (``train.clamp_crops: false``, the seed): the box is scaled to float32 (value /
   clip_max) and then resized with ``cv2.resize`` (what albumentations' resize calls), exactly the
   seed's values, bicubic overshoot included (about -0.1..1.1 at sharp edges). Opt-in
   ``clamp_crops: true`` resizes the uint16 values and scales afterwards: faster for the large
   boxes of an unresized cache, exact to 0.5 count, and every value in [0, 1] (overshoot clamped
   below 0 by uint16 saturation, above 1 by the cache's clip).
3. Flip order: the seed flips the whole field before sampling the box; here the box is sampled on
   the unflipped field and the crop is flipped. The two are the same distribution: the box start
   is uniform over all integer positions, so its mirror image is equally likely, and cropping a
   flipped field at a box = flipping the crop at the mirrored box. Flips are numpy views, folded
   into the single copy to a contiguous (C, S, S) array. rgb resizes each channel's view
   separately: cheaper than stacking the three regions for one 3-channel resize.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workflow_scripts.data.crops import INTERPOLATIONS, resized_crop
from workflow_scripts.errors import InputError

# the seed passes ratio=(1, 1) to every RandomResizedCrop (albumentations' default: 3/4, 4/3)
SEED_ASPECT_RATIO = (1.0, 1.0)
BOX_ATTEMPTS = 10


@dataclass(frozen=True)
class CropSpec:
    """One family of crops (global or local): how many, output side, area fraction range,
    box aspect-ratio (width / height) range."""

    number: int
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float] = SEED_ASPECT_RATIO

    @classmethod
    def from_settings(cls, section: dict) -> CropSpec:
        ratio = tuple(float(r) for r in section.get("ratio", SEED_ASPECT_RATIO))
        return cls(int(section["number"]), int(section["size"]), tuple(section["scale"]), ratio)


@dataclass(frozen=True)
class CropParams:
    """The random draws of one view: boxes (top, left, height, width) and flips, global first."""

    boxes: np.ndarray  # (n_crops, 4) int64
    hflips: np.ndarray  # (n_crops,) bool
    vflips: np.ndarray  # (n_crops,) bool
    sizes: tuple[int, ...]


def sample_boxes(
    rng: np.random.Generator,
    image_shape: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    count: int,
) -> np.ndarray:
    """`count` RandomResizedCrop boxes as (top, left, height, width) rows, int64."""
    height, width = image_shape
    area = height * width
    target_area = rng.uniform(scale[0] * area, scale[1] * area, size=(count, BOX_ATTEMPTS))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, BOX_ATTEMPTS)))
    # np.rint rounds half to even, like Python's round() in albumentations
    box_w = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)
    box_h = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    rows = np.arange(count)
    first_fit = fits.argmax(axis=1)
    box_h, box_w = box_h[rows, first_fit], box_w[rows, first_fit]
    start = rng.random((count, 2))
    top = ((height - box_h + 1) * start[:, 0]).astype(np.int64)
    left = ((width - box_w + 1) * start[:, 1]).astype(np.int64)

    no_fit = ~fits.any(axis=1)
    if no_fit.any():
        centre_h, centre_w = _centre_crop_shape(height, width, ratio)
        box_h[no_fit], box_w[no_fit] = centre_h, centre_w
        top[no_fit], left[no_fit] = (height - centre_h) // 2, (width - centre_w) // 2
    return np.stack([top, left, box_h, box_w], axis=1)


def _centre_crop_shape(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """albumentations' fallback: the whole image, narrowed to the nearest allowed aspect ratio."""
    image_ratio = width / height
    if image_ratio < ratio[0]:
        return round(width / ratio[0]), width
    if image_ratio > ratio[1]:
        return height, round(height * ratio[1])
    return height, width


class MultiCrop:
    """Global then local crops of one view, as the list of (3, S, S) tensors DINO consumes."""

    def __init__(
        self,
        global_crops: CropSpec,
        local_crops: CropSpec,
        *,
        clip_max: float,
        interpolation: str = "bicubic",
        hflip_p: float = 0.5,
        vflip_p: float = 0.5,
        clamp: bool = False,
    ) -> None:
        if interpolation not in INTERPOLATIONS:
            raise InputError(
                f"config key 'train.interpolation': '{interpolation}' is not one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        self.specs = (global_crops, local_crops)
        self.clip_max = float(clip_max)
        self.interpolation = INTERPOLATIONS[interpolation]
        self.hflip_p = hflip_p
        self.vflip_p = vflip_p
        self.clamp = clamp

    @classmethod
    def from_settings(cls, settings: dict, clip_max: float) -> MultiCrop:
        """From the config `train` section (global_crops, local_crops, interpolation, flips,
        clamp_crops; absent keys mean the seed's recipe)."""
        return cls(
            CropSpec.from_settings(settings["global_crops"]),
            CropSpec.from_settings(settings["local_crops"]),
            clip_max=clip_max,
            interpolation=settings["interpolation"],
            hflip_p=settings["hflip_p"],
            vflip_p=settings["vflip_p"],
            clamp=bool(settings.get("clamp_crops", False)),
        )

    def sample(self, rng: np.random.Generator, image_shape: tuple[int, int]) -> CropParams:
        boxes = [sample_boxes(rng, image_shape, s.scale, s.ratio, s.number) for s in self.specs]
        n_crops = sum(s.number for s in self.specs)
        flips = rng.random((n_crops, 2)) < np.array([self.hflip_p, self.vflip_p])
        sizes = tuple(s.size for s in self.specs for _ in range(s.number))
        return CropParams(np.concatenate(boxes), flips[:, 0], flips[:, 1], sizes)

    def apply(
        self,
        channels: Sequence[np.ndarray],
        params: CropParams,
        local_channels: Sequence[np.ndarray] | None = None,
    ) -> list[torch.Tensor]:
        """The crops of `params`; the local ones from `local_channels` when given (weak-label
        multi-crop: another field of the same label), else from `channels`."""
        n_global = self.specs[0].number
        local = channels if local_channels is None else local_channels
        sources = [channels] * n_global + [local] * (len(params.sizes) - n_global)
        return [
            resized_crop(
                source,
                box,
                size,
                clip_max=self.clip_max,
                interpolation=self.interpolation,
                hflip=bool(hflip),
                vflip=bool(vflip),
                clamp=self.clamp,
            )
            for source, box, size, hflip, vflip in zip(
                sources, params.boxes, params.sizes, params.hflips, params.vflips
            )
        ]

    def __call__(
        self,
        channels: Sequence[np.ndarray],
        rng: np.random.Generator,
        local_channels: Sequence[np.ndarray] | None = None,
    ) -> list[torch.Tensor]:
        """`channels`: (H, W) uint16 arrays of one field (1 = grey, 3 = rgb, in model order);
        `local_channels`: the field the local crops come from (default: the same). Both fields
        have the cache's shape, so one set of boxes serves them."""
        return self.apply(channels, self.sample(rng, channels[0].shape), local_channels)
