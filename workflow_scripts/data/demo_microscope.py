"""The demo's microscope: per-week acquisition differences and 16-bit image formation.

Each week (batch) gets its own settings per channel: gain (lamp, exposure, stain batch), camera
background offset, an illumination field (vignetting plus a tilt) and focus blur; plates of a week
differ slightly in gain. Image formation: blur the expected counts, multiply by illumination and
gain, add the background, add shot noise (photo-electron counting) and read noise, digitise to
uint16 (saturating at 65535).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workflow_scripts.data.demo_biology import stable_seed
from workflow_scripts.data.demo_cells import gaussian_blur

COUNTS_PER_ELECTRON = 1.5
READ_NOISE = 12.0  # counts
BACKGROUND = 300.0  # counts, typical camera offset + autofluorescence


@dataclass(frozen=True)
class ChannelAcquisition:
    gain: float
    background: float
    illumination: np.ndarray  # (H, W), mean about 1
    blur_sigma: float  # px


def week_acquisition(
    week: int, channels: list[str], shape: tuple[int, int], seed: int, amount: float
) -> dict[str, ChannelAcquisition]:
    """Acquisition settings of one week; `amount` scales how much weeks differ (0: identical)."""
    rng = np.random.default_rng(stable_seed(seed, "week-microscope", week))
    height, width = shape
    y, x = np.indices(shape, dtype=np.float32)
    # coordinates in [-1, 1] about the image centre
    yn, xn = (2 * y - (height - 1)) / max(height - 1, 1), (2 * x - (width - 1)) / max(width - 1, 1)
    focus = 0.7 + amount * rng.uniform(0.0, 1.0)  # shared by all channels of a week
    settings = {}
    for channel in channels:
        vignetting = amount * rng.uniform(0.1, 0.35)
        tilt = amount * rng.uniform(0.0, 0.3)
        direction = rng.uniform(0, 2 * np.pi)
        gradient = xn * np.cos(direction) + yn * np.sin(direction)
        field = 1.0 - vignetting * 0.5 * (xn**2 + yn**2) + tilt * gradient
        settings[channel] = ChannelAcquisition(
            gain=float(np.exp(amount * 0.3 * rng.normal())),
            background=float(BACKGROUND * np.exp(amount * 0.35 * rng.normal())),
            illumination=(field / field.mean()).astype(np.float32),
            blur_sigma=float(focus + 0.15 * rng.random()),
        )
    return settings


def plate_gain(plate: str, channel: str, seed: int, amount: float) -> float:
    """Small plate-to-plate gain differences within a week."""
    rng = np.random.default_rng(stable_seed(seed, "plate", plate, channel))
    return float(np.exp(amount * 0.05 * rng.normal()))


def acquire(
    signal: np.ndarray, acquisition: ChannelAcquisition, gain: float, rng: np.random.Generator
) -> np.ndarray:
    """Expected counts -> a noisy uint16 image as the camera writes it."""
    image = gaussian_blur(signal, acquisition.blur_sigma)
    image *= acquisition.illumination * np.float32(acquisition.gain * gain)
    # the background is also (more weakly) shaped by the illumination
    image += np.float32(acquisition.background) * (0.7 + 0.3 * acquisition.illumination)
    # shot noise (Poisson, in its Gaussian limit: >100 electrons everywhere) plus read noise
    sigma = np.sqrt(image * np.float32(COUNTS_PER_ELECTRON) + np.float32(READ_NOISE**2))
    counts = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)
