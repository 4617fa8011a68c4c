"""The image table and feature table formats shared by every stage (see docs/formats.md)."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError

# Metadata of one field of view; per-channel path columns are `path_<channel>`.
METADATA_COLUMNS = [
    "image_id",
    "plate",
    "well",
    "site",
    "replicate",
    "batch",
    "compound",
    "concentration",
    "treatment",
    "moa",
    "is_control",
]
CONTROL_COMPOUND = "DMSO"
FEATURE_PREFIX = "feat_"
SORT_KEYS = ["batch", "plate", "well", "site"]


def is_control_compound(compound: pd.Series) -> pd.Series:
    """The control compound in any case, blanks around it ignored (`DMSO`, `dmso`, ` Dmso`):
    one spelling per stage would silently turn controls into a treated compound."""
    return compound.astype(str).str.strip().str.upper() == CONTROL_COMPOUND


def path_column(channel: str) -> str:
    return f"path_{channel}"


def treatment_name(compound: str, concentration: float) -> str:
    return f"{compound}@{concentration:g}"


def feature_columns(df: pd.DataFrame) -> list[str]:
    """Feature columns are exactly the `feat_*` ones: labels can never leak into features."""
    return [c for c in df.columns if c.startswith(FEATURE_PREFIX)]


def feature_names(dim: int) -> list[str]:
    width = max(4, len(str(dim - 1)))
    return [f"{FEATURE_PREFIX}{i:0{width}d}" for i in range(dim)]


def read_table(path: str | os.PathLike, required: list[str] | None = None) -> pd.DataFrame:
    """Read a parquet or CSV table; name the file and the missing columns on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path)
    except Exception as err:  # pyarrow/pandas raise many types for corrupt files
        hint = ""
        if path.suffix == ".parquet":  # the format of the workflow's own tables
            hint = (
                "; if the workflow wrote it (truncated by a full disk or a copy cut short), run "
                "the workflow again: it finds unreadable outputs at start and makes them again"
            )
        raise InputError(f"{path}: cannot be read as a table ({err}){hint}") from err
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        delimiter = None if path.suffix == ".parquet" else other_delimiter(path)
        if delimiter:
            raise InputError(
                f"{path}: does not look comma-separated: its header line is separated by "
                f"{delimiter!r}; save it as CSV with commas (decimal points, not commas)"
            )
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def other_delimiter(path: Path) -> str | None:
    """The delimiter of a CSV header line when it is not a comma (`;` from a spreadsheet in a
    decimal-comma locale, a tab), else None."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            header = fh.readline()
        delimiter = csv.Sniffer().sniff(header, delimiters=",;\t|").delimiter
    except (OSError, csv.Error):
        return None
    return None if delimiter == "," else delimiter


def read_json(path: str | os.PathLike, required: tuple[str, ...] | list[str] = ()) -> dict:
    """Read a JSON object (metrics, reports, checkpoint and cache metadata); name the file and
    the missing keys on failure."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    missing = [key for key in required if key not in value]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)}")
    return value


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write parquet (or CSV by suffix) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
