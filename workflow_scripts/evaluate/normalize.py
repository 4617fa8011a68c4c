"""Per-plate normalisation of features against the plate's DMSO wells (before TVN).

Names and formulas follow pycytominer's `normalize(..., samples="Metadata_... == 'DMSO'")`:

- `none` (default, the seed's protocol): features are left as they are; TVN alone normalises.
- `standardize`: per plate and feature, (x - mean of the plate's DMSO) / std of the plate's DMSO
  (population std, ddof 0, as sklearn's StandardScaler). Removes plate-to-plate shifts and puts
  every feature on the scale of its control variation, so TVN starts from comparable units.
- `mad_robustize`: per plate and feature, (x - median of the plate's DMSO) / (1.4826 x median
  absolute deviation of the plate's DMSO): the same, robust to outlier control wells.

A feature whose DMSO spread is zero on some plate cannot be scaled there; it is reported by
`zero_scale_features` and dropped by the caller (feature_hygiene) before normalising.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from workflow_scripts.errors import InputError

METHODS = ("none", "standardize", "mad_robustize")


def plate_statistics(
    features: np.ndarray, is_control: np.ndarray, plates: np.ndarray, method: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{plate: (centre (D,), scale (D,))} from the plate's DMSO rows."""
    if method not in METHODS[1:]:
        raise InputError(
            f"settings key 'normalization.method': '{method}' is not one of {', '.join(METHODS)}"
        )
    statistics = {}
    for plate in pd.unique(plates):
        dmso = features[is_control & (plates == plate)]
        if len(dmso) < 2:
            raise InputError(
                f"plate '{plate}': normalization.method {method} needs at least 2 DMSO rows per "
                f"plate, found {len(dmso)}"
            )
        if method == "standardize":
            statistics[plate] = (dmso.mean(axis=0), dmso.std(axis=0))
        else:
            statistics[plate] = (
                np.median(dmso, axis=0),
                median_abs_deviation(dmso, axis=0, scale="normal"),
            )
    return statistics


def zero_scale_features(statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(D,) bool: features whose DMSO scale is zero on at least one plate."""
    return np.any([scale <= 0 for _, scale in statistics.values()], axis=0)


def normalize_per_plate(
    features: np.ndarray,
    plates: np.ndarray,
    statistics: dict[str, tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Every row minus its plate's centre, divided by its plate's scale."""
    out = np.empty(features.shape, dtype=np.float64)
    for plate, (centre, scale) in statistics.items():
        rows = plates == plate
        out[rows] = (features[rows] - centre) / scale
    return out
