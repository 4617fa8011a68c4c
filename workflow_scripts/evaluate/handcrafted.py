r"""Hand-crafted per-image profiles from the image cache, as a CellProfiler-style table.

A cheap external baseline for the demo (config `baselines:`), and an example of the table shape
any baseline may have: `Metadata_*` columns (compound, concentration, MoA, plate, batch, well,
site; mapped to the evaluation's names by the baseline's `metadata_map`) and one numeric column
per feature, named `Image_{Statistic}_{channel}`. Per channel, on the cached (illumination-
corrected, resized, clipped) image: mean, standard deviation, the 5/25/50/75/95 % quantiles, the
mean absolute difference between Gaussian blurs of sigma 0 | 1 | 2 | 4 pixels (fine to coarse
texture), and the mean gradient magnitude (Sobel).

    python -m workflow_scripts.evaluate.handcrafted --cache-dir results/cache \
        --out results/baselines/handcrafted_profiles.csv
"""

from __future__ import annotations

import argparse
import sys
from itertools import pairwise

import cv2
import numpy as np
import pandas as pd

from workflow_scripts.data.cache import load_cache
from workflow_scripts.errors import cli
from workflow_scripts.tables import write_table

QUANTILES = (5, 25, 50, 75, 95)
BLUR_SIGMAS = (1, 2, 4)
METADATA = {
    "compound": "Metadata_Compound",
    "concentration": "Metadata_Concentration",
    "moa": "Metadata_MoA",
    "plate": "Metadata_Plate",
    "batch": "Metadata_Batch",
    "well": "Metadata_Well",
    "site": "Metadata_Site",
}
STATISTICS = (
    "Intensity_Mean",
    "Intensity_Std",
    *(f"Intensity_Quantile{q:02d}" for q in QUANTILES),
    *(f"Texture_BlurDifference{a}to{b}" for a, b in pairwise((0, *BLUR_SIGMAS))),
    "Texture_GradientMean",
)


def image_statistics(image: np.ndarray) -> np.ndarray:
    """The STATISTICS of one (H, W) image, in that order."""
    values = image.astype(np.float32)
    blurred = [values] + [cv2.GaussianBlur(values, (0, 0), sigma) for sigma in BLUR_SIGMAS]
    dx = cv2.Sobel(blurred[1], cv2.CV_32F, 1, 0)
    dy = cv2.Sobel(blurred[1], cv2.CV_32F, 0, 1)
    return np.array(
        [
            values.mean(),
            values.std(),
            *np.percentile(values, QUANTILES),
            *(np.abs(fine - coarse).mean() for fine, coarse in pairwise(blurred)),
            np.hypot(dx, dy).mean(),
        ],
        dtype=np.float64,
    )


def profile_table(table: pd.DataFrame, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per cache image: Metadata_* columns and Image_{statistic}_{channel}."""
    columns = {}
    for channel, array in arrays.items():
        values = np.stack([image_statistics(image) for image in array])
        for k, name in enumerate(STATISTICS):
            columns[f"Image_{name}_{channel}"] = values[:, k]
    metadata = table[list(METADATA)].rename(columns=METADATA).reset_index(drop=True)
    return pd.concat([metadata, pd.DataFrame(columns)], axis=1)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True, help=".csv or .parquet")
    args = parser.parse_args(argv)
    channels = list(load_cache(args.cache_dir, [])[2]["channels"])
    table, arrays, _ = load_cache(args.cache_dir, channels)
    profiles = profile_table(table, arrays)
    write_table(profiles, args.out)
    n_features = len(profiles.columns) - len(METADATA)
    print(f"{len(profiles)} images x {n_features} features", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
