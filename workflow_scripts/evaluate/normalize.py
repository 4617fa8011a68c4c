"""Normalisation of features against DMSO control rows (before TVN), per plate, batch or table.

Names and formulas follow pycytominer's `normalize(..., samples="Metadata_... == 'DMSO'")`:

- `none` (default, the seed's protocol): features are left as they are; TVN alone normalises.
- `standardize`: per group and feature, (x - mean of the group's DMSO) / std of the group's DMSO
  (population std, ddof 0, as sklearn's StandardScaler).
- `mad_robustize`: per group and feature, (x - median of the group's DMSO) / (1.4826 x median
  absolute deviation of the group's DMSO): the same, robust to outlier control wells.

The group (`normalization.scope`) is the set of rows whose DMSO rows give the statistics: `plate`
(default: each row against its plate's DMSO, pycytominer's per-plate use), `batch` (its batch's
DMSO: on BBBC021 a week, ~30-40 control wells instead of 6) or `all` (the DMSO rows of the whole
table). A group's statistics are only as good as its control rows: the std of a feature from n
rows is off by about 1/sqrt(2(n - 1)) of itself (32 % at 6 rows, 16 % at 20), and TVN then whitens
that noise. Fewer than MIN_CONTROL_ROWS control rows in a group is therefore warned about
(`few_controls_warning`). On the real BBBC021 CellProfiler well table (6 DMSO wells per plate)
per-plate standardize before full-rank TVN lowered NSC from 88/103 to 50/103
(docs/evaluation.md, "Normalisation on real data").

A feature whose DMSO spread is zero in some group cannot be scaled there; it is reported by
`zero_scale_features` and dropped by the caller (feature_hygiene) before normalising.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from workflow_scripts.errors import InputError

METHODS = ("none", "standardize", "mad_robustize")
SCOPES = ("plate", "batch", "all")
# A group with fewer control rows than this gets a warning (module docstring: the relative error
# of a std from n rows is ~1/sqrt(2(n - 1)), 16 % at 20 rows).
MIN_CONTROL_ROWS = 20
ALL_ROWS = "all"  # the one group of scope `all`
# how groups are named in messages, per scope
GROUP_NAMES = {"plate": "plate", "batch": "batch", "all": "the whole table"}
PLURALS = {"plate": "plates", "batch": "batches"}


def control_groups(plates: np.ndarray, batches: np.ndarray, scope: str) -> np.ndarray:
    """Per row, the group whose DMSO rows normalise it: its plate, its batch, or one group."""
    if scope not in SCOPES:
        raise InputError(
            f"settings key 'normalization.scope': '{scope}' is not one of {', '.join(SCOPES)}"
        )
    if scope == "plate":
        return np.asarray(plates)
    if scope == "batch":
        return np.asarray(batches)
    return np.full(len(plates), ALL_ROWS, dtype=object)


def group_name(group: str, scope: str) -> str:
    return GROUP_NAMES[scope] if scope == "all" else f"{scope} '{group}'"


def control_statistics(
    features: np.ndarray,
    is_control: np.ndarray,
    groups: np.ndarray,
    method: str,
    scope: str = "plate",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{group: (centre (D,), scale (D,))} from each group's DMSO rows (`groups`: per row, from
    control_groups with this `scope`, which names the groups in errors)."""
    if method not in METHODS[1:]:
        raise InputError(
            f"settings key 'normalization.method': '{method}' is not one of {', '.join(METHODS)}"
        )
    statistics = {}
    for group in pd.unique(groups):
        dmso = features[is_control & (groups == group)]
        if len(dmso) < 2:
            per = "" if scope == "all" else f" per {scope}"
            raise InputError(
                f"{group_name(group, scope)}: normalization.method {method} needs at least 2 DMSO "
                f"rows{per}, found {len(dmso)}"
            )
        if method == "standardize":
            statistics[group] = (dmso.mean(axis=0), dmso.std(axis=0))
        else:
            statistics[group] = (
                np.median(dmso, axis=0),
                median_abs_deviation(dmso, axis=0, scale="normal"),
            )
    return statistics


def zero_scale_features(statistics: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(D,) bool: features whose DMSO scale is zero in at least one group."""
    return np.any([scale <= 0 for _, scale in statistics.values()], axis=0)


def normalize_per_group(
    features: np.ndarray,
    groups: np.ndarray,
    statistics: dict[str, tuple[np.ndarray, np.ndarray]],
) -> np.ndarray:
    """Every row minus its group's centre, divided by its group's scale."""
    out = np.empty(features.shape, dtype=np.float64)
    for group, (centre, scale) in statistics.items():
        rows = groups == group
        out[rows] = (features[rows] - centre) / scale
    return out


def few_controls_warning(is_control: np.ndarray, groups: np.ndarray, scope: str) -> str | None:
    """A warning with the counts when some group has fewer than MIN_CONTROL_ROWS control rows;
    None otherwise."""
    counts = pd.Series(np.asarray(is_control, dtype=bool)).groupby(np.asarray(groups)).sum()
    few = counts[counts < MIN_CONTROL_ROWS]
    if few.empty:
        return None
    where = (
        "the whole table has"
        if scope == "all"
        else f"{len(few)} of {len(counts)} {PLURALS[scope]} have"
    )
    return (
        f"warning: normalising {'over' if scope == 'all' else 'per'} {GROUP_NAMES[scope]} from "
        f"few control rows: {where} fewer than "
        f"{MIN_CONTROL_ROWS} DMSO rows (min {int(counts.min())}, median "
        f"{float(counts.median()):g}, max {int(counts.max())}); their means and spreads are "
        "mostly noise, which TVN amplifies (real BBBC021 wells, 6 DMSO per plate: per-plate "
        "standardize + TVN scored 50/103 NSC, no normalisation 88/103; docs/evaluation.md); "
        "alternatives: method none, or scope batch or all (more DMSO rows per group)"
    )
