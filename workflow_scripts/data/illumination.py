"""Retrospective illumination correction, as CellProfiler's CorrectIlluminationCalculate does it.

One illumination function per plate and channel: the per-pixel mean or median over all the
plate's images (cells are everywhere at random, so what stays is the uneven illumination),
Gaussian-smoothed, floored at a low quantile so dim corners cannot blow up on division, and
scaled to mean 1 so a corrected image keeps the intensity range of the raw one. Images are
corrected by dividing by the function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

STATISTICS = ("mean", "median")


@dataclass(frozen=True)
class IlluminationSettings:
    statistic: str  # per-pixel statistic over the plate's images: mean | median
    smoothing_sigma: float  # in pixels of the raw image
    robust_floor_quantile: float

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(
                f"statistic must be one of {', '.join(STATISTICS)}, not {self.statistic!r}"
            )
        if self.smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, not {self.smoothing_sigma}")
        if not 0 <= self.robust_floor_quantile < 1:
            raise ValueError(
                f"robust_floor_quantile must be in [0, 1), not {self.robust_floor_quantile}"
            )


def illumination_function(images: np.ndarray, settings: IlluminationSettings) -> np.ndarray:
    """(N, H, W) images of one plate and channel -> (H, W) float32 function with mean 1."""
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, H, W) stack, got shape {images.shape}")
    if settings.statistic == "median":
        per_pixel = np.median(images, axis=0)
    else:
        per_pixel = images.mean(axis=0, dtype=np.float64)
    function = per_pixel.astype(np.float32)
    if settings.smoothing_sigma > 0:
        # "nearest" keeps the edge level instead of mirroring the vignetting back inwards
        function = gaussian_filter(function, sigma=settings.smoothing_sigma, mode="nearest")
    floor = np.quantile(function, settings.robust_floor_quantile)
    if floor <= 0:
        raise ValueError(
            "the illumination estimate is zero on more than a fraction "
            f"{settings.robust_floor_quantile} "
            "of the image (blank images?); cannot divide by it"
        )
    function = np.maximum(function, floor)
    return (function / function.mean(dtype=np.float64)).astype(np.float32)


def correct(image: np.ndarray, function: np.ndarray) -> np.ndarray:
    """Raw image / illumination function, as float32."""
    return image.astype(np.float32) / function
