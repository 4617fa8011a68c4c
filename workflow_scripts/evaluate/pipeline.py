"""Features of images (or wells) -> hygiene -> normalisation -> TVN -> treatment profiles ->
NSC / NSCB / mAP.

`evaluate_table(features, settings)` is the whole evaluation of one feature table, used by the
`evaluate` CLI and by tests. `settings` has the keys of config.yaml's `evaluate` section that matter
here (`normalization`, `tvn`, `aggregation`, `map`), checked against the config schema; missing
keys take the defaults below (= config.yaml's).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from workflow_scripts.config import SCHEMA_PATH, deep_merge, read_yaml
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.aggregate import treatment_profiles
from workflow_scripts.evaluate.feature_hygiene import clean_features
from workflow_scripts.evaluate.metrics import evaluate_profiles
from workflow_scripts.evaluate.normalize import (
    control_groups,
    few_controls_warning,
    normalize_per_group,
)
from workflow_scripts.evaluate.tvn import whiten
from workflow_scripts.tables import (
    feature_columns,
    feature_names,
    is_control_compound,
    treatment_name,
)

DEFAULT_SETTINGS = {
    "normalization": {"method": "none", "scope": "plate"},
    "tvn": {"enabled": True, "scope": "global", "max_components": None, "eps": None},
    "aggregation": {"plate": "mean", "treatment": "median"},
    "map": {"enabled": True, "permutations": 1000, "seed": 0, "null_model": "shared"},
}
REQUIRED_COLUMNS = ("compound", "moa", "plate", "batch")
# is_control spellings read as booleans (anything else is refused: "no" must not become True).
CONTROL_VALUES = {"true": True, "false": False, "1": True, "0": False}
# The keys of evaluate_table's result that hold tables rather than metrics.
TABLE_KEYS = ("predictions", "confusion", "profiles")


def evaluate_table(
    features: pd.DataFrame,
    settings: dict,
    feature_cols: list[str] | None = None,
    source: str = "feature table",
) -> dict:
    """Evaluate one feature table (one row per image or well, treated and DMSO).

    Columns: compound, moa, plate, batch, and concentration or treatment; is_control (derived
    from compound == DMSO, any letter case, when absent); features = `feature_cols` (default:
    the `feat_*` columns; nothing else is ever used as a feature). `source` names the table in
    error messages.

    Returns the metrics (keys of metrics.json, docs/formats.md), "notes" (what the evaluation
    did and warnings, one line each, printed by the CLI), and three DataFrames:
    result["predictions"] (one row per query treatment and protocol), result["confusion"]
    (NSC MoA confusion matrix: index = true MoA, columns = nearest neighbour's MoA) and
    result["profiles"] (profile_table: the treatment profiles NSC / NSCB / mAP score).
    """
    settings = deep_merge(DEFAULT_SETTINGS, check_settings(settings))
    columns = feature_cols if feature_cols is not None else feature_columns(features)
    if len(features) == 0:
        raise InputError(f"{source}: the table has no rows (header only)")
    metadata = image_metadata(features, source)
    values = feature_matrix(features, columns, source)
    is_control = metadata["is_control"].to_numpy()
    notes: list[str] = []

    method = settings["normalization"]["method"]
    scope = settings["normalization"]["scope"]
    groups = control_groups(metadata["plate"].to_numpy(), metadata["batch"].to_numpy(), scope)
    values, used, hygiene, statistics = clean_features(
        values, list(columns), is_control, groups, method, source, scope
    )
    for reason, names in hygiene["dropped"].items():
        if names:
            notes.append(
                f"dropped {len(names)} of {len(columns)} features: {reason} "
                f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
            )
    if statistics is not None:
        values = normalize_per_group(values, groups, statistics)
        where = "the whole table" if scope == "all" else f"per {scope}"
        notes.append(f"normalised {where} against its DMSO rows: {method}")
        warning = few_controls_warning(is_control, groups, scope)
        if warning:
            notes.append(warning)

    tvn = settings["tvn"]
    report = None
    if tvn["enabled"]:
        notes += dmso_warnings(metadata, len(used), tvn["scope"])
        values, report = whiten(
            values,
            is_control,
            metadata["batch"].to_numpy(),
            scope=tvn["scope"],
            max_components=tvn["max_components"],
            eps=tvn["eps"],
        )
        notes.append(
            f"TVN ({tvn['scope']}): kept {report['components']} of {report['possible']} possible "
            f"components; {report['below_tolerance']} below the rank tolerance"
            f"{'' if tvn['eps'] is None else ' / eps floor'}, {report['over_max_components']} "
            "over max_components"
            + (" or the smallest batch" if tvn["scope"] == "per_batch" else "")
        )
    profiles, table = treatment_profiles(
        values, metadata, settings["aggregation"]["plate"], settings["aggregation"]["treatment"]
    )
    metrics, predictions, confusion = evaluate_profiles(profiles, table, settings["map"])
    notes += candidate_notes(metrics)
    return {
        **metrics,
        "n_images": len(features),
        "n_dmso": int(is_control.sum()),
        "feature_dim": len(columns),
        "features_used": len(used),
        "features_dropped": {reason: names for reason, names in hygiene["dropped"].items()},
        "normalization": method,
        # only where it matters, so that metrics.json stays as it was with the default scope
        **({"normalization_scope": scope} if method != "none" and scope != "plate" else {}),
        "tvn_components": None if report is None else report["components"],
        "tvn": report,
        "map_null": settings["map"]["null_model"] if settings["map"]["enabled"] else None,
        "notes": notes,
        "predictions": predictions,
        "confusion": confusion,
        "profiles": profile_table(profiles, table),
    }


def profile_table(profiles: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """One row per treatment (sorted by name): its labels, batches (`;`-joined), main_batch,
    n_plates, n_images, and the profile as `feat_*` columns, as scored (after hygiene,
    normalisation, TVN and aggregation)."""
    labels = table.assign(batches=[";".join(b) for b in table["batches"]])
    values = pd.DataFrame(profiles, columns=feature_names(profiles.shape[1]))
    return pd.concat([labels.reset_index(drop=True), values], axis=1)


def dmso_warnings(metadata: pd.DataFrame, n_features: int, scope: str) -> list[str]:
    """A DMSO set smaller than the feature dimension can whiten only its own span: the treated
    profiles' components outside it are discarded, and with n_dmso close to the dimension the
    smallest sample eigenvalues are far too small (their directions get amplified noise).
    Allowed (as in the seed), but said."""
    is_control = metadata["is_control"].to_numpy()
    groups = (
        [("all batches", int(is_control.sum()))]
        if scope == "global"
        else [
            (f"batch '{b}'", int(n))
            for b, n in metadata.loc[is_control, "batch"].value_counts().sort_index().items()
        ]
    )
    return [
        f"warning: TVN on {where}: {n} DMSO rows support at most {n - 1} whitened dimensions of "
        f"{n_features} features; treated variation outside them is discarded and the smallest "
        "components are poorly estimated (evaluate.tvn.max_components caps them; what helped on "
        "real BBBC021 profiles: docs/evaluation.md, 'Normalisation on real data')"
        for where, n in groups
        if n - 1 < n_features
    ]


@functools.lru_cache(maxsize=1)
def settings_schema() -> dict:
    """config.schema.yaml's `evaluate` properties: one definition of valid settings."""
    schema = read_yaml(SCHEMA_PATH)
    return {"definitions": schema.get("definitions", {}), **schema["properties"]["evaluate"]}


def check_settings(settings: dict) -> dict:
    """Unknown keys are typos that would silently fall back to a default; values are checked
    against the config schema (type and range)."""
    import jsonschema

    for key, section in settings.items():
        if key not in DEFAULT_SETTINGS:
            raise InputError(
                f"settings key '{key}' is unknown (known: {', '.join(DEFAULT_SETTINGS)})"
            )
        if not isinstance(section, dict):
            raise InputError(f"settings key '{key}' must be a mapping")
        for sub in section:
            if sub not in DEFAULT_SETTINGS[key]:
                raise InputError(
                    f"settings key '{key}.{sub}' is unknown "
                    f"(known: {', '.join(DEFAULT_SETTINGS[key])})"
                )
    validator = jsonschema.Draft202012Validator(settings_schema())
    errors = sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path))
    if errors:
        key = ".".join(str(p) for p in errors[0].absolute_path)
        raise InputError(f"settings key '{key}': {errors[0].message}")
    return settings


def image_metadata(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """The labels evaluation needs, checked and normalised (str plates/batches, bool controls)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if "concentration" not in df.columns and "treatment" not in df.columns:
        missing.append("concentration (or treatment)")
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}")
    if len(df) == 0:
        raise InputError(f"{source}: the table has no rows (header only)")
    meta = pd.DataFrame(index=df.index)
    for column in ("compound", "plate", "batch"):
        check_no_missing(df, column, source)
        meta[column] = df[column].astype(str)
    meta["moa"] = df["moa"]  # may be empty for controls, checked below
    meta["concentration"] = (
        numeric_column(df, "concentration", source) if "concentration" in df else np.nan
    )
    if "treatment" in df.columns:
        check_no_missing(df, "treatment", source)
        meta["treatment"] = df["treatment"].astype(str)
    else:
        check_no_missing(df, "concentration", source)
        meta["treatment"] = [
            treatment_name(c, float(x)) for c, x in zip(meta["compound"], meta["concentration"])
        ]
    if "is_control" in df.columns:
        meta["is_control"] = control_flags(df["is_control"], source)
    else:
        meta["is_control"] = is_control_compound(meta["compound"])
    untyped = meta["moa"].isna() & ~meta["is_control"]
    if untyped.any():
        raise InputError(f"{source}: row {first_position(untyped)} (a treated image) has no moa")
    meta["moa"] = meta["moa"].astype(str)
    check_duplicates(df, source)
    treated_moas = meta.loc[~meta["is_control"], "moa"].unique()
    if len(treated_moas) == 1:
        raise InputError(
            f"{source}: every treated row has moa '{treated_moas[0]}'; MoA retrieval needs at "
            "least 2 MoAs"
        )
    return meta.reset_index(drop=True)


CANDIDATES = {
    "nsc": "a treatment of another compound",
    "nscb": "a treatment of another compound in a batch the query does not occur in",
}


def candidate_notes(metrics: dict) -> list[str]:
    """Per protocol: not applicable (no query has a candidate), or how many queries without
    a candidate were counted as misses."""
    notes = []
    for name, candidate in CANDIDATES.items():
        total, without = (
            metrics[f"n_treatments_{name}"],
            metrics[f"n_queries_without_candidates_{name}"],
        )
        if total and metrics[name] is None:
            notes.append(
                f"{name.upper()} not applicable: none of the {total} query treatments has a "
                f"candidate ({candidate})"
            )
        elif without:
            notes.append(
                f"{name.upper()}: {without} of {total} query treatments have no candidate "
                f"({candidate}); counted as misses"
            )
    return notes


def numeric_column(df: pd.DataFrame, column: str, source: str) -> pd.Series:
    """A metadata column that must hold numbers (empty cells stay NaN, checked by the caller)."""
    values = pd.to_numeric(df[column], errors="coerce")
    text = values.isna() & df[column].notna()
    if text.any():
        row = first_position(text)
        raise InputError(
            f"{source}: row {row}, column '{column}' is {df[column].iloc[row]!r}, not a number"
        )
    return values.astype(np.float64)


def control_flags(column: pd.Series, source: str) -> pd.Series:
    """Booleans, 0/1, or the text true/false/1/0 (any case); anything else is an error."""
    if pd.api.types.is_bool_dtype(column):
        return column.astype(bool)
    text = column.astype(str).str.strip().str.lower()
    text = text.where(~text.isin(["1.0", "0.0"]), text.str[0])  # 1.0 / 0.0 from numeric columns
    bad = ~text.isin(list(CONTROL_VALUES)) | column.isna()
    if bad.any():
        row = first_position(bad)
        raise InputError(
            f"{source}: row {row}, column 'is_control' is {column.iloc[row]!r}; expected a boolean "
            "(true/false or 1/0)"
        )
    return text.map(CONTROL_VALUES).astype(bool)


def check_duplicates(df: pd.DataFrame, source: str) -> None:
    """The same image or well twice would weigh it double in its profile. Identity: image_id;
    else plate + well + site; else (a per-well table) plate + well; else the whole row."""
    if "image_id" in df.columns:
        keys, what = ["image_id"], "image"
    elif {"plate", "well", "site"} <= set(df.columns):
        keys, what = ["plate", "well", "site"], "image"
    elif {"plate", "well"} <= set(df.columns):
        keys, what = ["plate", "well"], "well (a per-image table needs a site column)"
    else:
        keys, what = list(df.columns), "row"
    hashes = pd.util.hash_pandas_object(df[keys], index=False).to_numpy()
    repeated = pd.Series(hashes).duplicated()
    if repeated.any():
        row = first_position(repeated)
        first = int(np.flatnonzero(hashes == hashes[row])[0])
        shown = (
            ""
            if what == "row"
            else " (" + ", ".join(f"{k}={df[k].iloc[row]!r}" for k in keys) + ")"
        )
        raise InputError(f"{source}: rows {first} and {row} are the same {what}{shown}")


def feature_matrix(df: pd.DataFrame, columns: list[str], source: str) -> np.ndarray:
    """Numeric feature values (float64); non-finite values are left for feature_hygiene."""
    if not columns:
        raise InputError(f"{source}: no feature columns")
    non_numeric = [c for c in columns if not pd.api.types.is_numeric_dtype(df[c])]
    if non_numeric:
        raise InputError(f"{source}: feature column '{non_numeric[0]}' is not numeric")
    return df[columns].to_numpy(dtype=np.float64)


def check_no_missing(df: pd.DataFrame, column: str, source: str) -> None:
    empty = df[column].isna()
    if empty.any():
        raise InputError(f"{source}: row {first_position(empty)}, column '{column}' is empty")


def first_position(mask: pd.Series) -> int:
    """0-based data row of the first True (the header is not counted)."""
    return int(np.flatnonzero(mask.to_numpy())[0])
