"""Feature hygiene before normalisation and TVN: drop what the controls cannot calibrate.

A feature is dropped (counted and named in the report, never silently kept) when, in the DMSO
rows, it
- has a non-finite value (NaN, inf: CellProfiler writes NaN for failed measurements), or
- is constant (no control variation: TVN cannot whiten it, it carries no calibrated signal), or
- has a zero spread on some plate's DMSO, when a per-plate normalisation divides by it.

A non-finite value in a treated row of a kept feature stays an error that names row and column:
dropping the feature would hide a broken measurement of one treatment.
"""

from __future__ import annotations

import numpy as np

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.normalize import plate_statistics, zero_scale_features

REASONS = ("non-finite in DMSO", "constant in DMSO", "zero DMSO spread on a plate")


def clean_features(
    values: np.ndarray,
    columns: list[str],
    is_control: np.ndarray,
    plates: np.ndarray,
    normalization: str,
    source: str,
) -> tuple[np.ndarray, list[str], dict, dict | None]:
    """Returns (values of the kept features, their names, report, per-plate statistics of the
    kept features for `normalization` (None for 'none')). Report: features_in, features_used,
    and per reason (REASONS) the dropped feature names under "dropped"."""
    dmso = values[is_control]
    dropped: dict[str, list[str]] = {reason: [] for reason in REASONS}
    keep = np.ones(len(columns), dtype=bool)

    nonfinite = ~np.isfinite(dmso).all(axis=0)
    keep &= ~nonfinite
    constant = np.zeros(len(columns), dtype=bool)
    if len(dmso):
        constant[keep] = np.ptp(dmso[:, keep], axis=0) == 0
    keep &= ~constant
    statistics = None
    zero_scale = np.zeros(len(columns), dtype=bool)
    if normalization != "none" and keep.any():
        statistics = plate_statistics(values[:, keep], is_control, plates, normalization)
        zero_scale[keep] = zero_scale_features(statistics)
        keep &= ~zero_scale
    for reason, mask in zip(REASONS, (nonfinite, constant, zero_scale)):
        dropped[reason] = [columns[i] for i in np.flatnonzero(mask)]
    if not keep.any():
        raise InputError(
            f"{source}: no usable feature column: "
            + ", ".join(f"{len(names)} {reason}" for reason, names in dropped.items() if names)
        )
    kept_values = values[:, keep]
    bad = ~np.isfinite(kept_values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        name = np.asarray(columns)[keep][col]
        raise InputError(f"{source}: row {row}, column '{name}' is not a finite number")
    if statistics is not None:
        statistics = {
            plate: (centre[keep[~(nonfinite | constant)]], scale[keep[~(nonfinite | constant)]])
            for plate, (centre, scale) in statistics.items()
        }
    report = {
        "features_in": len(columns),
        "features_used": int(keep.sum()),
        "dropped": {reason: names for reason, names in dropped.items()},
    }
    return kept_values, [c for c, k in zip(columns, keep) if k], report, statistics
