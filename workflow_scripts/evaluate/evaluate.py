r"""Evaluate one feature table: TVN -> treatment profiles -> NSC / NSCB / mAP.

Writes `metrics.json`, `predictions.csv`, `confusion.csv` and `profiles.parquet` (the treatment
profiles scored, for the summary's embedding maps) into `--out-dir` (docs/formats.md).

The same command scores any profile table, so CellProfiler features or another model's
embeddings can be put beside the DINOv3 runs in the summary report:

    python -m workflow_scripts.evaluate.evaluate --features cellprofiler_wells.csv \
        --feature-columns '^(Cells|Cytoplasm|Nuclei)_' \
        --metadata-map compound=Metadata_Compound,concentration=Metadata_Concentration,\
moa=Metadata_MoA,plate=Metadata_Plate,batch=Metadata_Batch \
        --settings '{"tvn": {"enabled": true}}' --out-dir results/eval/cellprofiler/all/epoch_0000 \
        --label cellprofiler/all/0000

- Input: CSV or parquet, one row per image or per well, treated and DMSO rows together.
- Needed columns: compound, moa, plate, batch, and concentration (or treatment, one name per
  compound-concentration pair). `is_control` (true/false or 1/0) is derived from compound ==
  DMSO (any case) when absent. Optional: image_id, or well (+ site for per-image tables), by
  which a row given twice is refused. `--metadata-map ours=theirs,...` renames the table's
  columns to these names.
- Features that are non-finite or constant in the DMSO rows are dropped (counted in the log and
  in metrics.json); a non-finite value in a treated row is an error.
- Features: the numeric columns whose name matches `--feature-columns` (a Python regular
  expression, searched; default `^feat_`). The metadata columns above are never features, even
  when the expression matches them; label-like extras (e.g. a numeric MoA code) are ignored
  unless the expression selects them, so choose it to match features only.
- `--settings`: JSON with config.yaml's `evaluate.normalization`, `.tvn`, `.aggregation`, `.map`
  (missing keys take the config.yaml defaults; types and ranges as in the config schema).
- Log (stderr, also `notes` in metrics.json): features dropped, normalisation, TVN components
  kept of those possible, warnings (e.g. fewer DMSO rows than features).
- `--label`: `arch/channel/NNNN`, how the summary names the run (any arch and channel text
  without '/', e.g. `cellprofiler/all/0000`); `arch/channel/seed_S/NNNN` for a run trained with
  another seed (train.seeds). To compare, run `workflow_scripts.summary.cli`
  with this metrics.json added to the workflow's ones.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import write_json
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.evaluate.pipeline import TABLE_KEYS, evaluate_table
from workflow_scripts.tables import FEATURE_PREFIX, METADATA_COLUMNS, read_table, write_table

# arch/channel/NNNN; another training seed's run (train.seeds): arch/channel/seed_S/NNNN
LABEL = re.compile(r"[^/]+/[^/]+/(seed_-?\d+/)?\d+")
EVALUATION_COLUMNS = (
    "compound",
    "concentration",
    "treatment",
    "moa",
    "plate",
    "batch",
    "is_control",
)
# Identify an image or well, so that a row given twice is found (never features).
IDENTITY_COLUMNS = ("image_id", "well", "site")


def parse_metadata_map(text: str) -> dict[str, str]:
    """'compound=Compound,moa=MOA' -> {'Compound': 'compound', 'MOA': 'moa'} (theirs -> ours)."""
    renames = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise InputError(f"--metadata-map: '{item}' is not ours=theirs")
        if ours.strip() not in EVALUATION_COLUMNS + IDENTITY_COLUMNS:
            raise InputError(
                f"--metadata-map: '{ours.strip()}' is not one of "
                f"{', '.join(EVALUATION_COLUMNS + IDENTITY_COLUMNS)}"
            )
        renames[theirs.strip()] = ours.strip()
    return renames


def select_feature_columns(df: pd.DataFrame, pattern: str, source: str) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise InputError(
            f"--feature-columns: '{pattern}' is not a valid regular expression ({err})"
        ) from err
    never = set(METADATA_COLUMNS) | set(EVALUATION_COLUMNS) | set(IDENTITY_COLUMNS)
    columns = [c for c in df.columns if regex.search(str(c)) and c not in never]
    if not columns:
        raise InputError(f"{source}: no column matches --feature-columns '{pattern}'")
    return columns


def apply_metadata_map(df: pd.DataFrame, renames: dict[str, str], source: str) -> pd.DataFrame:
    absent = [theirs for theirs in renames if theirs not in df.columns]
    if absent:
        raise InputError(f"{source}: --metadata-map names missing column(s) {', '.join(absent)}")
    # our names must not exist twice: a mapped column replaces any column already called so
    replaced = [ours for ours in renames.values() if ours in df.columns and ours not in renames]
    return df.drop(columns=replaced).rename(columns=renames)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--features", required=True, help="feature table (.parquet or .csv)")
    parser.add_argument("--settings", default="{}", help="JSON: tvn, aggregation, map")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--label", required=True, help="arch/channel/NNNN (or arch/channel/seed_S/NNNN)"
    )
    parser.add_argument("--feature-columns", default=f"^{FEATURE_PREFIX}", help="regex")
    parser.add_argument("--metadata-map", default="", help="ours=theirs,...")
    args = parser.parse_args(argv)

    if not LABEL.fullmatch(args.label):
        raise InputError(
            f"--label: '{args.label}' is not arch/channel/NNNN (or arch/channel/seed_S/NNNN)"
        )
    settings = json_object_option(args.settings, "--settings")
    source = str(args.features)
    df = apply_metadata_map(
        read_table(args.features), parse_metadata_map(args.metadata_map), source
    )
    columns = select_feature_columns(df, args.feature_columns, source)
    result = evaluate_table(df, settings, columns, source=source)

    out_dir = Path(args.out_dir)
    write_table(result["predictions"], out_dir / "predictions.csv")
    write_table(result["confusion"].reset_index(), out_dir / "confusion.csv")
    write_table(result["profiles"], out_dir / "profiles.parquet")
    metrics = {"label": args.label, **{k: v for k, v in result.items() if k not in TABLE_KEYS}}
    metrics["settings"] = settings  # as given: the workflow compares it with its config at start
    write_json(out_dir / "metrics.json", metrics)
    for note in metrics["notes"]:
        print(f"{args.label}: {note}", file=sys.stderr)
    print(
        f"{args.label}: NSC {_accuracy(metrics, 'nsc')}, NSCB {_accuracy(metrics, 'nscb')}, "
        f"mAP NSC {_fmt(metrics['map_nsc'])}, mAP NSCB {_fmt(metrics['map_nscb'])}",
        file=sys.stderr,
    )
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _accuracy(metrics: dict, name: str) -> str:
    """`0.612 (92 treatments)`, `... 3 without a candidate, counted as misses)`, or `n/a (...)`
    when no query has a candidate."""
    total = metrics[f"n_treatments_{name}"]
    without = metrics[f"n_queries_without_candidates_{name}"]
    if metrics[name] is None:
        return f"n/a ({total} treatments, none with a candidate)"
    if without:
        return (
            f"{_fmt(metrics[name])} ({total} treatments, {without} without a candidate, as misses)"
        )
    return f"{_fmt(metrics[name])} ({total} treatments)"


if __name__ == "__main__":
    raise SystemExit(main())
