"""Features of images (or wells) -> TVN -> treatment profiles -> NSC / NSCB / mAP.

`evaluate_table(features, settings)` is the whole evaluation of one feature table, used by the
`evaluate` CLI and by tests. `settings` has the keys of config.yaml's `evaluate` section that matter
here (`tvn`, `aggregation`, `map`); missing keys take the defaults below (= config.yaml's).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.config import deep_merge
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.aggregate import treatment_profiles
from workflow_scripts.evaluate.metrics import evaluate_profiles
from workflow_scripts.evaluate.tvn import apply_tvn
from workflow_scripts.tables import CONTROL_COMPOUND, feature_columns, treatment_name

DEFAULT_SETTINGS = {
    "tvn": {"enabled": True, "scope": "global", "max_components": None, "eps": 1.0e-6},
    "aggregation": {"plate": "mean", "treatment": "median"},
    "map": {"enabled": True, "permutations": 1000, "seed": 0},
}
REQUIRED_COLUMNS = ("compound", "moa", "plate", "batch")
# The keys of evaluate_table's result that hold tables rather than metrics.
TABLE_KEYS = ("predictions", "confusion")


def evaluate_table(
    features: pd.DataFrame,
    settings: dict,
    feature_cols: list[str] | None = None,
    source: str = "feature table",
) -> dict:
    """Evaluate one feature table (one row per image or well, treated and DMSO).

    Columns: compound, moa, plate, batch, and concentration or treatment; is_control (derived
    from compound == DMSO when absent); features = `feature_cols` (default: the `feat_*` columns;
    nothing else is ever used as a feature). `source` names the table in error messages.

    Returns the metrics (keys of metrics.json, docs/formats.md) plus two DataFrames:
    result["predictions"] (one row per query treatment and protocol) and result["confusion"]
    (NSC MoA confusion matrix: index = true MoA, columns = nearest neighbour's MoA).
    """
    settings = deep_merge(DEFAULT_SETTINGS, check_settings(settings))
    columns = feature_cols if feature_cols is not None else feature_columns(features)
    metadata = image_metadata(features, source)
    values = feature_matrix(features, columns, source)

    tvn = settings["tvn"]
    components = None
    if tvn["enabled"]:
        values, components = apply_tvn(
            values,
            metadata["is_control"].to_numpy(),
            metadata["batch"].to_numpy(),
            scope=tvn["scope"],
            max_components=tvn["max_components"],
            eps=tvn["eps"],
        )
    profiles, table = treatment_profiles(
        values, metadata, settings["aggregation"]["plate"], settings["aggregation"]["treatment"]
    )
    metrics, predictions, confusion = evaluate_profiles(profiles, table, settings["map"])
    return {
        **metrics,
        "n_images": len(features),
        "n_dmso": int(metadata["is_control"].sum()),
        "feature_dim": len(columns),
        "tvn_components": components,
        "predictions": predictions,
        "confusion": confusion,
    }


def check_settings(settings: dict) -> dict:
    """Unknown keys are typos that would silently fall back to a default."""
    for key, section in settings.items():
        if key not in DEFAULT_SETTINGS:
            raise InputError(f"settings key '{key}' is unknown (known: {', '.join(DEFAULT_SETTINGS)})")
        if not isinstance(section, dict):
            raise InputError(f"settings key '{key}' must be a mapping")
        for sub in section:
            if sub not in DEFAULT_SETTINGS[key]:
                raise InputError(
                    f"settings key '{key}.{sub}' is unknown (known: {', '.join(DEFAULT_SETTINGS[key])})"
                )
    return settings


def image_metadata(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The labels evaluation needs, checked and normalised (str plates/batches, bool controls)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if "concentration" not in df.columns and "treatment" not in df.columns:
        missing.append("concentration (or treatment)")
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}")
    meta = pd.DataFrame(index=df.index)
    for column in ("compound", "plate", "batch"):
        check_no_missing(df, column, source)
        meta[column] = df[column].astype(str)
    meta["moa"] = df["moa"]  # may be empty for controls, checked below
    meta["concentration"] = df["concentration"] if "concentration" in df else np.nan
    if "treatment" in df.columns:
        check_no_missing(df, "treatment", source)
        meta["treatment"] = df["treatment"].astype(str)
    else:
        check_no_missing(df, "concentration", source)
        meta["treatment"] = [
            treatment_name(c, float(x)) for c, x in zip(meta["compound"], df["concentration"])
        ]
    if "is_control" in df.columns:
        meta["is_control"] = df["is_control"].astype(bool)
    else:
        meta["is_control"] = meta["compound"] == CONTROL_COMPOUND
    untyped = meta["moa"].isna() & ~meta["is_control"]
    if untyped.any():
        raise InputError(f"{source}: row {first_position(untyped)} (a treated image) has no moa")
    meta["moa"] = meta["moa"].astype(str)
    return meta.reset_index(drop=True)


def feature_matrix(df: pd.DataFrame, columns: list[str], source: str) -> np.ndarray:
    if not columns:
        raise InputError(f"{source}: no feature columns")
    non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise InputError(f"{source}: feature column '{non_numeric[0]}' is not numeric")
    values = df[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{source}: row {row}, column '{columns[col]}' is not a finite number")
    return values


def check_no_missing(df: pd.DataFrame, column: str, source: str) -> None:
    empty = df[column].isna()
    if empty.any():
        raise InputError(f"{source}: row {first_position(empty)}, column '{column}' is empty")


def first_position(mask: pd.Series) -> int:
    """0-based data row of the first True (the header is not counted)."""
    return int(np.flatnonzero(mask.to_numpy())[0])
