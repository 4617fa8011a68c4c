"""Validate the image table and every image file before anything expensive runs.

Checks the table (columns, types, missing values, duplicates, treatment/compound/MoA consistency,
DMSO controls on every plate, at least two batches for NSCB) and the images (each file exists and
its TIFF header describes one single-channel uint16 image of the expected size whose data lies
within the file). Only headers are read, in a thread pool, so the 11,544 files of BBBC021 on
network storage are checked in seconds to minutes.

Outputs: the validated table (same rows, same order), a JSON report and a markdown report; on the
first problem, one message naming the file, row (0-based, with its image_id) and column, exit
status 2 and no output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from workflow_scripts.atomic import atomic_path
from workflow_scripts.data.metadata import (
    PREPARE_REPORT_ATTR,
    SOURCE_COLUMNS_ATTR,
    SOURCE_ROW,
    SOURCE_TABLE,
    check_channels,
    report_lines,
)
from workflow_scripts.errors import InputError, cli
from workflow_scripts.tables import (
    CONTROL_COMPOUND,
    METADATA_COLUMNS,
    is_control_compound,
    path_column,
    read_table,
    treatment_name,
)

STRING_COLUMNS = ["image_id", "plate", "well", "batch", "compound", "treatment", "moa"]
INTEGER_COLUMNS = ["site", "replicate"]
IMAGE_DTYPE = np.dtype(np.uint16)
DEFAULT_WORKERS = 16  # header reads wait on storage, not on CPU


def where(table: str | os.PathLike, df: pd.DataFrame, row: int, column: str | None = None) -> str:
    """`file: row N (image_id X), column 'c'` for messages; `row` is a position. A prepared
    table (data/metadata.py) remembers its origin: then the user's file, row and column."""
    if SOURCE_ROW in df.columns and SOURCE_TABLE in df.columns:
        user_columns = df.attrs.get(SOURCE_COLUMNS_ATTR, {})
        text = f"{df[SOURCE_TABLE].iloc[row]}: row {df[SOURCE_ROW].iloc[row]}"
        text += f" (image_id {df['image_id'].iloc[row]})"
        return text + (f", column '{user_columns.get(column, column)}'" if column else "")
    text = f"{table}: row {row} (image_id {df['image_id'].iloc[row]})"
    return text + (f", column '{column}'" if column else "")


def user_tables(table: str | os.PathLike, df: pd.DataFrame) -> str:
    """The user's table(s) behind a prepared table, for messages about the whole table."""
    if SOURCE_TABLE in df.columns:
        return ", ".join(sorted(df[SOURCE_TABLE].astype(str).unique()))
    return str(table)


def row_ref(df: pd.DataFrame, row: int) -> str:
    """Another row, as `where` names rows (the user's row number when known)."""
    if SOURCE_ROW in df.columns and SOURCE_TABLE in df.columns:
        return f"row {df[SOURCE_ROW].iloc[row]} of {df[SOURCE_TABLE].iloc[row]}"
    return f"row {row}"


def first(mask: pd.Series | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def first_disagreement(key: pd.Series, values: pd.Series) -> tuple[int, int] | None:
    """(row, earlier row) of the first row whose value differs from the first value of its key
    group, or None when each key has one value."""
    first_row = pd.Series(np.arange(len(key)), index=key.index).groupby(key).transform("first")
    differs = values.to_numpy() != values.to_numpy()[first_row.to_numpy()]
    if not differs.any():
        return None
    row = first(differs)
    return row, int(first_row.iloc[row])


def check_types(df: pd.DataFrame, table: str | os.PathLike, channels: list[str]) -> pd.Series:
    """Column types and missing values; returns the concentration as float."""
    text_columns = STRING_COLUMNS + [path_column(ch) for ch in channels]
    for column in text_columns + INTEGER_COLUMNS + ["is_control"]:
        missing = df[column].isna()
        if missing.any():
            raise InputError(f"{where(table, df, first(missing), column)}: missing value")
    for column in text_columns:
        not_text = ~df[column].map(lambda v: isinstance(v, str))
        if not_text.any():
            row = first(not_text)
            raise InputError(
                f"{where(table, df, row, column)}: expected text, got {df[column].iloc[row]!r}"
            )
    for column in INTEGER_COLUMNS:
        if not pd.api.types.is_integer_dtype(df[column]):
            raise InputError(
                f"{table}: column '{column}' must hold integers (has type {df[column].dtype})"
            )
    if not pd.api.types.is_bool_dtype(df["is_control"]):
        raise InputError(
            f"{table}: column 'is_control' must hold true/false (has type {df['is_control'].dtype})"
        )
    concentration = pd.to_numeric(df["concentration"], errors="coerce")
    not_number = concentration.isna() & df["concentration"].notna()
    if not_number.any():
        row = first(not_number)
        raise InputError(
            f"{where(table, df, row, 'concentration')}: {df['concentration'].iloc[row]!r} "
            "is not a number"
        )
    return concentration.astype(float)


def check_treatments(df: pd.DataFrame, concentration: pd.Series, table: str | os.PathLike) -> None:
    """Controls, concentrations, treatment names, and one MoA per compound."""
    is_dmso = is_control_compound(df["compound"])
    wrong_flag = df["is_control"] != is_dmso
    if wrong_flag.any():
        row = first(wrong_flag)
        raise InputError(
            f"{where(table, df, row, 'is_control')}: is {bool(df['is_control'].iloc[row])} "
            f"but compound is {df['compound'].iloc[row]!r} "
            f"(controls are exactly the {CONTROL_COMPOUND} rows, in any case)"
        )
    wrong_moa = is_dmso & (df["moa"] != CONTROL_COMPOUND)
    if wrong_moa.any():
        row = first(wrong_moa)
        raise InputError(
            f"{where(table, df, row, 'moa')}: a {CONTROL_COMPOUND} control must have moa "
            f"{CONTROL_COMPOUND}, not {df['moa'].iloc[row]!r}"
        )
    finite = np.isfinite(concentration.to_numpy())
    bad = ~finite | (~is_dmso & (concentration <= 0)).to_numpy()
    if bad.any():
        row = first(bad)
        raise InputError(
            f"{where(table, df, row, 'concentration')}: {concentration.iloc[row]} is not a valid "
            "concentration (finite, and > 0 for treated images)"
        )
    expected = [treatment_name(c, x) for c, x in zip(df["compound"], concentration)]
    wrong_name = df["treatment"].to_numpy() != np.asarray(expected, dtype=object)
    if wrong_name.any():
        row = first(wrong_name)
        raise InputError(
            f"{where(table, df, row, 'treatment')}: {df['treatment'].iloc[row]!r} does not match "
            f"compound {df['compound'].iloc[row]!r} at concentration {concentration.iloc[row]:g} "
            f"(expected {expected[row]!r})"
        )
    disagreement = first_disagreement(df["treatment"], concentration)
    if disagreement:
        row, other = disagreement
        raise InputError(
            f"{where(table, df, row, 'concentration')}: "
            f"treatment {df['treatment'].iloc[row]!r} has "
            f"concentration {float(concentration.iloc[row])!r} here but "
            f"{float(concentration.iloc[other])!r} in {row_ref(df, other)}"
        )
    treated = ~is_dmso
    disagreement = first_disagreement(df.loc[treated, "compound"], df.loc[treated, "moa"])
    if disagreement:
        row, other = (int(np.flatnonzero(treated)[i]) for i in disagreement)
        raise InputError(
            f"{where(table, df, row, 'moa')}: compound {df['compound'].iloc[row]!r} has moa "
            f"{df['moa'].iloc[row]!r} here but {df['moa'].iloc[other]!r} in {row_ref(df, other)} "
            "(one MoA per compound)"
        )


def check_design(df: pd.DataFrame, table: str | os.PathLike, channels: list[str]) -> None:
    """Unique images and files, DMSO on every plate, one batch per plate, at least two batches."""
    duplicated = df["image_id"].duplicated()
    if duplicated.any():
        row = first(duplicated)
        other = first(df["image_id"] == df["image_id"].iloc[row])
        raise InputError(f"{where(table, df, row, 'image_id')}: duplicate of {row_ref(df, other)}")
    seen: dict[str, tuple[int, str]] = {}
    for ch in channels:
        for row, path in enumerate(df[path_column(ch)]):
            key = os.path.normpath(path)
            if key in seen:
                other_row, other_column = seen[key]
                raise InputError(
                    f"{where(table, df, row, path_column(ch))}: file {path} is also used by "
                    f"{row_ref(df, other_row)}, column '{other_column}'"
                )
            seen[key] = (row, path_column(ch))
    is_dmso = is_control_compound(df["compound"])
    if not is_dmso.any():
        column = df.attrs.get(SOURCE_COLUMNS_ATTR, {}).get("compound", "compound")
        raise InputError(
            f"{user_tables(table, df)}: no {CONTROL_COMPOUND} control image (column '{column}'); "
            "controls are needed "
            "for normalization and every plate must have them"
        )
    plates_with_dmso = set(df.loc[is_dmso, "plate"])
    without = ~df["plate"].isin(plates_with_dmso)
    if without.any():
        row = first(without)
        raise InputError(
            f"{where(table, df, row, 'plate')}: plate {df['plate'].iloc[row]!r} has no "
            f"{CONTROL_COMPOUND} control image"
        )
    disagreement = first_disagreement(df["plate"], df["batch"])
    if disagreement:
        row, other = disagreement
        raise InputError(
            f"{where(table, df, row, 'batch')}: plate {df['plate'].iloc[row]!r} is in batch "
            f"{df['batch'].iloc[row]!r} here but in {df['batch'].iloc[other]!r} "
            f"in {row_ref(df, other)}"
        )
    if df["batch"].nunique() < 2:
        raise InputError(
            f"{table}: column 'batch' has only one batch ({df['batch'].iloc[0]}); "
            "NSCB (nearest neighbour in another batch) needs at least two"
        )


def tiff_problem(path: str, image_shape: tuple[int, int]) -> str | None:
    """What is wrong with one image file, from its TIFF header only; None if it looks right.
    The image is the file's first series, which is what tifffile.imread (the cache) reads."""
    if not os.path.isfile(path):
        return "file not found"
    size = os.path.getsize(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), series.dtype
            data_end = max(
                (
                    offset + count
                    for page in series.pages
                    for offset, count in zip(page.dataoffsets, page.databytecounts)
                ),
                default=0,
            )
    except Exception as err:  # tifffile raises many types for damaged headers
        return f"cannot be read as a TIFF ({type(err).__name__}: {err})"
    if len(shape) != 2:
        return f"holds an image of shape {shape}, expected a single-channel (height, width) image"
    if dtype != IMAGE_DTYPE:
        return f"has pixel type {dtype}, expected 16-bit unsigned integers (uint16)"
    if shape != tuple(image_shape):
        return (
            f"is {shape[0]}x{shape[1]} pixels, expected {image_shape[0]}x{image_shape[1]} "
            "(height x width, config key 'data.image_shape')"
        )
    if data_end > size:
        return f"is truncated: its image data ends at byte {data_end} but the file has {size} bytes"
    return None


def check_images(
    df: pd.DataFrame,
    table: str | os.PathLike,
    channels: list[str],
    image_shape: tuple[int, int],
    workers: int,
) -> None:
    """Every file of every channel; the first problem in table order is reported."""
    jobs = [(row, ch) for row in range(len(df)) for ch in channels]
    paths = [df[path_column(ch)].iloc[row] for row, ch in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(lambda p: tiff_problem(p, image_shape), paths))
    failed = [i for i, problem in enumerate(problems) if problem]
    if failed:
        i = failed[0]
        row, ch = jobs[i]
        more = (
            f" ({len(failed) - 1} more image file(s) failed the check)" if len(failed) > 1 else ""
        )
        raise InputError(
            f"{where(table, df, row, path_column(ch))}: {paths[i]} {problems[i]}{more}"
        )


def build_report(
    df: pd.DataFrame,
    table: str | os.PathLike,
    channels: list[str],
    image_shape: tuple[int, int],
    prepared: dict | None = None,
) -> dict:
    """Counts of the validated table; `prepared`: the prepare step's report (rows its join left
    out, other spellings of the control), carried in the prepared table's attrs."""
    prepared = prepared or {}
    treated = df[~df["is_control"]]
    per_moa = (
        df.groupby("moa")
        .agg(
            images=("image_id", "size"),
            treatments=("treatment", "nunique"),
            compounds=("compound", "nunique"),
        )
        .sort_index()
    )
    return {
        "table": str(table),
        "n_images": len(df),
        "n_treated_images": len(treated),
        "n_control_images": int(df["is_control"].sum()),
        "n_treatments": int(treated["treatment"].nunique()),
        "n_compounds": int(treated["compound"].nunique()),
        "n_moas": int(treated["moa"].nunique()),
        "n_plates": int(df["plate"].nunique()),
        "n_batches": int(df["batch"].nunique()),
        "channels": list(channels),
        "image_height": int(image_shape[0]),
        "image_width": int(image_shape[1]),
        "image_dtype": IMAGE_DTYPE.name,
        "per_moa": {moa: {k: int(v) for k, v in row.items()} for moa, row in per_moa.iterrows()},
        "images_per_batch": {k: int(v) for k, v in df["batch"].value_counts().sort_index().items()},
        "images_per_plate": {k: int(v) for k, v in df["plate"].value_counts().sort_index().items()},
        "control_images_per_plate": {
            k: int(v)
            for k, v in df.loc[df["is_control"], "plate"].value_counts().sort_index().items()
        },
        "rows_left_out": list(prepared.get("rows_left_out", [])),
        "control_spellings": list(prepared.get("control_spellings", [])),
    }


def report_markdown(report: dict) -> str:
    lines = [
        "# Image validation report",
        "",
        f"Table `{report['table']}`: all checks passed.",
        "",
        f"- images: {report['n_images']} ({report['n_treated_images']} treated, "
        f"{report['n_control_images']} DMSO)",
        f"- treatments: {report['n_treatments']}, compounds: {report['n_compounds']}, "
        f"MoAs: {report['n_moas']} (+ DMSO)",
        f"- plates: {report['n_plates']}, batches: {report['n_batches']}",
        f"- channels: {', '.join(report['channels'])}; every image {report['image_height']}x"
        f"{report['image_width']} (height x width), {report['image_dtype']}",
        "",
        "## Rows left out when the tables were prepared",
        "",
        *(
            ["| table | reason | rows | compounds | first row |", "|---|---|---:|---:|---|"]
            + [
                f"| {d['table']} | {d['reason']} | {d['rows']} | {d['compounds']} | "
                f"{d['first_row']} ({d['example']}) |"
                for d in report.get("rows_left_out", [])
            ]
            if report.get("rows_left_out")
            else ["None."]
        ),
        *(
            ["", f"Other spellings of the control, read as {CONTROL_COMPOUND}:", ""]
            + [
                f"- {line}"
                for line in report_lines({"control_spellings": report["control_spellings"]})
            ]
            if report.get("control_spellings")
            else []
        ),
        "",
        "## Per MoA",
        "",
        "| MoA | images | treatments | compounds |",
        "|---|---:|---:|---:|",
        *(
            f"| {moa} | {c['images']} | {c['treatments']} | {c['compounds']} |"
            for moa, c in report["per_moa"].items()
        ),
        "",
        "## Per batch",
        "",
        "| batch | images |",
        "|---|---:|",
        *(f"| {batch} | {n} |" for batch, n in report["images_per_batch"].items()),
        "",
        "## Per plate",
        "",
        "| plate | images | DMSO images |",
        "|---|---:|---:|",
        *(
            f"| {plate} | {n} | {report['control_images_per_plate'].get(plate, 0)} |"
            for plate, n in report["images_per_plate"].items()
        ),
    ]
    return "\n".join(lines) + "\n"


def validate(
    table: str | os.PathLike,
    channels: list[str],
    image_shape: tuple[int, int],
    workers: int = DEFAULT_WORKERS,
) -> tuple[pd.DataFrame, dict]:
    """All checks; returns the table unchanged and the report. Raises InputError on the first
    problem."""
    check_channels(channels)
    df = read_table(table, required=METADATA_COLUMNS + [path_column(ch) for ch in channels])
    if df.empty:
        raise InputError(f"{table}: the table has no rows")
    attrs = dict(df.attrs)
    df = df.reset_index(drop=True)
    df.attrs.update(attrs)
    prepared = attrs.get(PREPARE_REPORT_ATTR)
    concentration = check_types(df, table, channels)
    check_design(df, table, channels)
    check_treatments(df, concentration, table)
    check_images(df, table, channels, image_shape, workers)
    # the origin columns served the messages; later stages see the documented columns only
    df = df.drop(columns=[c for c in (SOURCE_TABLE, SOURCE_ROW) if c in df.columns])
    df.attrs.clear()
    return df, build_report(df, table, channels, image_shape, prepared)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="prepared image table (.parquet)")
    parser.add_argument("--channels", nargs="+", required=True)
    parser.add_argument(
        "--image-shape", nargs=2, type=int, required=True, metavar=("HEIGHT", "WIDTH")
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="threads reading headers"
    )
    parser.add_argument("--out", required=True, help="validated image table (.parquet)")
    parser.add_argument("--report", required=True, help="JSON report")
    parser.add_argument("--report-md", required=True, help="markdown report")
    args = parser.parse_args(argv)
    outputs = [Path(args.out), Path(args.report), Path(args.report_md)]
    if Path(args.table).resolve() in [p.resolve() for p in outputs]:
        raise InputError(f"--table {args.table} is also an output; choose other output paths")
    df, report = validate(args.table, args.channels, tuple(args.image_shape), max(1, args.workers))
    # all three appear together: each is written to a temp name and renamed only if all succeed
    with contextlib.ExitStack() as stack:
        out, report_json, report_md = (stack.enter_context(atomic_path(p)) for p in outputs)
        df.to_parquet(out, index=False)
        report_json.write_text(json.dumps(report, indent=2) + "\n")
        report_md.write_text(report_markdown(report))
    print(
        f"{args.table}: {report['n_images']} images x {len(args.channels)} channels valid; "
        f"{report['n_treatments']} treatments, {report['n_plates']} plates, "
        f"{report['n_batches']} batches"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
