"""Feature hygiene before normalisation and TVN: drop what the controls cannot calibrate.

A feature is dropped (counted and named in the report, never silently kept) when, in the DMSO
rows, it
- has a non-finite value (NaN, inf: CellProfiler writes NaN for failed measurements), or
- is constant (no control variation: TVN cannot whiten it, it carries no calibrated signal), or
- has a zero spread in some group's DMSO (plate, batch or table: normalization.scope), when a
  normalisation divides by it.

A non-finite value in a treated row of a kept feature stays an error that names row and column:
dropping the feature would hide a broken measurement of one treatment.
"""

from __future__ import annotations

import numpy as np

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.normalize import control_statistics, zero_scale_features

NONFINITE, CONSTANT = "non-finite in DMSO", "constant in DMSO"
# the third reason names the normalisation's group (metrics.json keys: "on a plate" as before)
ZERO_SPREAD = {
    "plate": "zero DMSO spread on a plate",
    "batch": "zero DMSO spread in a batch",
    "all": "zero DMSO spread in the table",
}


def reasons(scope: str = "plate") -> tuple[str, str, str]:
    """The drop reasons, in report order, for a normalisation of this scope."""
    return NONFINITE, CONSTANT, ZERO_SPREAD[scope]


def clean_features(
    values: np.ndarray,
    columns: list[str],
    is_control: np.ndarray,
    groups: np.ndarray,
    normalization: str,
    source: str,
    scope: str = "plate",
) -> tuple[np.ndarray, list[str], dict, dict | None]:
    """Returns (values of the kept features, their names, report, per-group statistics of the
    kept features for `normalization` (None for 'none')). `groups`: per row, its normalisation
    group (normalize.control_groups with `scope`). Report: features_in, features_used, and per
    reason (reasons(scope)) the dropped feature names under "dropped"."""
    dmso = values[is_control]
    dropped: dict[str, list[str]] = {reason: [] for reason in reasons(scope)}
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
        statistics = control_statistics(values[:, keep], is_control, groups, normalization, scope)
        zero_scale[keep] = zero_scale_features(statistics)
        keep &= ~zero_scale
    for reason, mask in zip(reasons(scope), (nonfinite, constant, zero_scale)):
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
            group: (centre[keep[~(nonfinite | constant)]], scale[keep[~(nonfinite | constant)]])
            for group, (centre, scale) in statistics.items()
        }
    report = {
        "features_in": len(columns),
        "features_used": int(keep.sum()),
        "dropped": {reason: names for reason, names in dropped.items()},
    }
    return kept_values, [c for c, k in zip(columns, keep) if k], report, statistics
