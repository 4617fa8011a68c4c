"""Build the normalized image table (docs/formats.md) from BBBC021 metadata tables.

Two sources:
- official: BBBC021_v1_image.csv(.gz) joined with BBBC021_v1_moa.csv on compound and
  concentration; paths are `image_root / Image_PathName_<ch> / Image_FileName_<ch>`.
- seed_csv: the seed project's BBBC021_annotated_fixed.csv + BBBC021_DMSO_fixed.csv, official
  columns whose Image_FileName_<ch> hold full paths (relative ones are taken relative to the CSV's
  folder), plus a `MoA` column in the annotated table.

Only annotated treatments and DMSO controls are kept. The control compound is recognised in
any case (`dmso`, `Dmso`) and written as `DMSO`. Every row the join leaves out is counted with
its reason, and every other spelling of the control too: the counts travel with the prepared
table (its `attrs`, key `prepare_report`) into the validation report and are printed here.
Image files are not opened here (that is validation's job), so the table can be prepared before
the images are in place. Row numbers in messages are 0-based data rows of the named table.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pandas as pd

from workflow_scripts.errors import InputError, cli
from workflow_scripts.tables import (
    CONTROL_COMPOUND,
    METADATA_COLUMNS,
    SORT_KEYS,
    is_control_compound,
    path_column,
    read_table,
    treatment_name,
    write_table,
)

CHANNELS = ("DAPI", "Tubulin", "Actin")  # the three BBBC021 stains
COMPOUND = "Image_Metadata_Compound"
CONCENTRATION = "Image_Metadata_Concentration"
PLATE = "Image_Metadata_Plate_DAPI"
WELL = "Image_Metadata_Well_DAPI"
REPLICATE = "Replicate"
SEED_MOA = "MoA"
MOA_TABLE_COLUMNS = ["compound", "concentration", "moa"]
# Where each row came from, so validation names the user's file, row and column, not the
# prepared table's (validation drops these columns; docs/formats.md).
SOURCE_TABLE = "source_table"
SOURCE_ROW = "source_row"
SOURCE_COLUMNS_ATTR = "source_columns"  # table.attrs: image-table column -> user's column(s)
# table.attrs: {"rows_left_out": [...], "control_spellings": [...]} (docs/formats.md)
PREPARE_REPORT_ATTR = "prepare_report"
# BBBC021 file names end in `<well>_s<site>_w<wavelength><UUID>.tif`, with or without a
# `Week*_<date>_` prefix (e.g. `Week6_200607_F10_s1_w1....tif`, `G10_s1_w1....tif`).
WELL_SITE = re.compile(r"(?:^|_)([A-P]\d{2})_s(\d+)_w\d")


def file_name_column(channel: str) -> str:
    return f"Image_FileName_{channel}"


def path_name_column(channel: str) -> str:
    return f"Image_PathName_{channel}"


def concentration_key(concentration: pd.Series) -> pd.Series:
    """Join key that tolerates float noise between tables (`3.000000` vs `3.0`, 6 significant
    digits, the precision of treatment names)."""
    return concentration.map(lambda c: f"{c:g}")


def check_channels(channels: list[str]) -> None:
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise InputError(
            f"--channels: unknown channel name(s) {', '.join(unknown)}; "
            f"BBBC021 channels are {', '.join(CHANNELS)}"
        )
    if len(set(channels)) != len(channels):
        raise InputError(f"--channels: a channel is listed twice in {' '.join(channels)}")


def read_moa_table(path: str | os.PathLike) -> pd.DataFrame:
    """compound, concentration key -> moa; one MoA per (compound, concentration)."""
    moa = read_table(path, required=MOA_TABLE_COLUMNS)
    concentration = pd.to_numeric(moa["concentration"], errors="coerce")
    bad = moa.index[concentration.isna() | moa["compound"].isna() | moa["moa"].isna()]
    if len(bad):
        row = bad[0]
        raise InputError(
            f"{path}: row {row}: compound, concentration and moa must all be given "
            f"(got {moa.loc[row, 'compound']!r}, {moa.loc[row, 'concentration']!r}, "
            f"{moa.loc[row, 'moa']!r})"
        )
    moa = pd.DataFrame(
        {
            "compound": moa["compound"].astype(str),
            "concentration_key": concentration_key(concentration),
            "moa": moa["moa"].astype(str),
        }
    )
    conflicting = moa.groupby(["compound", "concentration_key"])["moa"].transform("nunique") > 1
    if conflicting.any():
        row = moa.index[conflicting][0]
        raise InputError(
            f"{path}: row {row}: {moa.loc[row, 'compound']} at {moa.loc[row, 'concentration_key']} "
            f"has more than one MoA in column 'moa'"
        )
    return moa.drop_duplicates(["compound", "concentration_key"])


def parse_well_site(
    file_names: pd.Series, wells: pd.Series, table: str | os.PathLike, column: str
) -> pd.Series:
    """Site number from each file name; the file name's well must equal the Well column."""
    parsed = file_names.astype(str).map(os.path.basename).str.extract(WELL_SITE)
    unparsed = parsed[0].isna()
    if unparsed.any():
        row = file_names.index[unparsed][0]
        raise InputError(
            f"{table}: row {row}, column '{column}': file name {file_names[row]!r} "
            "does not contain "
            "'<well>_s<site>_w<n>' (e.g. G10_s1_w1...tif)"
        )
    mismatch = parsed[0] != wells.astype(str)
    if mismatch.any():
        row = file_names.index[mismatch][0]
        raise InputError(
            f"{table}: row {row}, column '{column}': file name {file_names[row]!r} is for well "
            f"{parsed.loc[row, 0]} but column '{WELL}' says {wells[row]}"
        )
    return parsed[1].astype(int)


def site_numbers(raw: pd.DataFrame, channels: list[str], table: str | os.PathLike) -> pd.Series:
    """Sites parsed from every channel's file name; the channels must agree on each row."""
    sites = [
        parse_well_site(raw[file_name_column(ch)], raw[WELL], table, file_name_column(ch))
        for ch in channels
    ]
    for ch, other in zip(channels[1:], sites[1:]):
        differs = other != sites[0]
        if differs.any():
            row = raw.index[differs][0]
            raise InputError(
                f"{table}: row {row}, column '{file_name_column(ch)}': site s{other[row]} differs "
                f"from site s{sites[0][row]} in column '{file_name_column(channels[0])}'"
            )
    return sites[0]


def source_columns(channels: list[str], official: bool) -> dict[str, str]:
    """The user's column(s) behind each image-table column, for validation messages."""
    first_file = file_name_column(channels[0])
    mapping = {
        "image_id": f"{PLATE}, {WELL}, {first_file}",
        "plate": PLATE,
        "well": WELL,
        "site": first_file,
        "replicate": REPLICATE,
        "batch": path_name_column(channels[0]) if official else PLATE,
        "compound": COMPOUND,
        "concentration": CONCENTRATION,
        "treatment": f"{COMPOUND}, {CONCENTRATION}",
        "moa": "moa of the MoA table" if official else SEED_MOA,
        "is_control": COMPOUND,
    }
    for ch in channels:
        mapping[path_column(ch)] = (
            f"{path_name_column(ch)}, {file_name_column(ch)}" if official else file_name_column(ch)
        )
    return mapping


def check_inside_root(
    raw: pd.DataFrame, channels: list[str], root: str, table: str | os.PathLike
) -> None:
    """Refuse paths that `..` (or a file name with a folder) would lead outside the image root."""
    for ch in channels:
        for column in (path_name_column(ch), file_name_column(ch)):
            parts = raw[column].astype(str).str.replace("\\", "/").str.split("/")
            escapes = parts.map(lambda p: ".." in p)
            if column == file_name_column(ch):  # a file name, not a path
                escapes |= parts.map(len) > 1
            if escapes.any():
                row = raw.index[escapes][0]
                raise InputError(
                    f"{table}: row {row}, column '{column}': {raw.loc[row, column]!r} leads "
                    f"outside the image root {root} ('..' or a folder in a file name)"
                )


def require_values(raw: pd.DataFrame, columns: list[str], table: str | os.PathLike) -> None:
    for column in columns:
        missing = raw[column].isna()
        if missing.any():
            raise InputError(
                f"{table}: row {raw.index[missing][0]}, column '{column}': missing value"
            )


def numeric_concentration(raw: pd.DataFrame, table: str | os.PathLike) -> pd.Series:
    values = pd.to_numeric(raw[CONCENTRATION], errors="coerce")
    bad = values.isna() & raw[CONCENTRATION].notna()
    if bad.any():
        row = raw.index[bad][0]
        raise InputError(
            f"{table}: row {row}, column '{CONCENTRATION}': {raw.loc[row, CONCENTRATION]!r} "
            "is not a number"
        )
    return values.astype(float)


def assemble(
    raw: pd.DataFrame,
    *,
    moa: pd.Series,
    batch: pd.Series,
    paths: dict[str, pd.Series],
    channels: list[str],
    table: str | os.PathLike,
) -> pd.DataFrame:
    """The normalized image table for already-filtered rows of an official-format table."""
    require_values(raw, [PLATE, WELL, REPLICATE] + [file_name_column(ch) for ch in channels], table)
    site = site_numbers(raw, channels, table)
    plate = raw[PLATE].astype(str)
    well = raw[WELL].astype(str)
    is_control = is_control_compound(raw[COMPOUND])
    compound = raw[COMPOUND].astype(str).where(~is_control, CONTROL_COMPOUND)
    concentration = raw[CONCENTRATION].astype(float)
    out = pd.DataFrame(
        {
            "image_id": plate + "/" + well + "/s" + site.astype(str),
            "plate": plate,
            "well": well,
            "site": site,
            "replicate": raw[REPLICATE].astype(int),
            "batch": batch.astype(str),
            "compound": compound,
            "concentration": concentration,
            "treatment": [treatment_name(c, x) for c, x in zip(compound, concentration)],
            "moa": moa.astype(str),
            "is_control": is_control,
        },
        index=raw.index,
    )
    for ch in channels:
        out[path_column(ch)] = paths[ch].astype(str)
    out[SOURCE_TABLE] = str(table)
    out[SOURCE_ROW] = raw.index.astype(int)
    duplicated = out["image_id"].duplicated(keep=False)
    if duplicated.any():
        rows = list(out.index[duplicated][:2])
        raise InputError(
            f"{table}: rows {rows[0]} and {rows[1]} describe the same field of view "
            f"{out.loc[rows[0], 'image_id']} (plate, well and site from the file name)"
        )
    return out


def finish(table: pd.DataFrame) -> pd.DataFrame:
    """Column order and row order of docs/formats.md."""
    columns = METADATA_COLUMNS + [c for c in table.columns if c not in METADATA_COLUMNS]
    return table[columns].sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def control_spellings(raw: pd.DataFrame, table: str | os.PathLike) -> list[dict]:
    """Control rows whose compound is not spelled `DMSO` (they are read as DMSO)."""
    values = raw[COMPOUND].astype(str)
    other = is_control_compound(raw[COMPOUND]) & (values != CONTROL_COMPOUND)
    if not other.any():
        return []
    return [
        {
            "table": str(table),
            "rows": int(other.sum()),
            "spellings": sorted(set(values[other])),
            "first_row": int(raw.index[other][0]),
        }
    ]


def dropped_by_join(
    unannotated: pd.DataFrame, moa: pd.DataFrame, table: str | os.PathLike
) -> list[dict]:
    """Treated rows the MoA table does not annotate, counted by reason (the join keeps only
    annotated treatments: on BBBC021 most compounds have no MoA)."""
    known = set(moa["compound"])
    known_folded = {c.casefold(): c for c in known}
    compound = unannotated[COMPOUND].astype(str)
    in_other_case = ~compound.isin(known) & compound.str.casefold().isin(known_folded)
    reasons = {
        "compound not in the MoA table": ~compound.isin(known) & ~in_other_case,
        "compound in the MoA table only in another case": in_other_case,
        "concentration not in the MoA table for this compound": compound.isin(known),
    }
    dropped = []
    for reason, mask in reasons.items():
        if not mask.any():
            continue
        first = unannotated.index[mask.to_numpy()][0]
        example = f"{unannotated.loc[first, COMPOUND]} at {unannotated.loc[first, CONCENTRATION]:g}"
        if reason == "compound in the MoA table only in another case":
            example += (
                f" (MoA table: {known_folded[str(unannotated.loc[first, COMPOUND]).casefold()]})"
            )
        dropped.append(
            {
                "table": str(table),
                "reason": reason,
                "rows": int(mask.sum()),
                "compounds": int(compound[mask].nunique()),
                "first_row": int(first),
                "example": example,
            }
        )
    return dropped


def report_lines(report: dict) -> list[str]:
    """The prepare report, one line per entry (printed to the log; the validation report holds
    the same)."""
    lines = [
        f"{d['table']}: {d['rows']} row(s) left out: {d['reason']} ({d['compounds']} "
        f"compound(s); first: row {d['first_row']}, {d['example']})"
        for d in report.get("rows_left_out", [])
    ]
    lines += [
        f"{c['table']}: {c['rows']} control row(s) spell the compound "
        f"{', '.join(repr(s) for s in c['spellings'])} (first: row {c['first_row']}): read as "
        f"{CONTROL_COMPOUND}"
        for c in report.get("control_spellings", [])
    ]
    return lines


def from_official(
    image_table: str | os.PathLike,
    moa_table: str | os.PathLike,
    image_root: str | os.PathLike,
    channels: list[str],
) -> pd.DataFrame:
    """Official tables -> image table of annotated treatments and DMSO controls."""
    check_channels(channels)
    path_columns = [c for ch in channels for c in (file_name_column(ch), path_name_column(ch))]
    raw = read_table(
        image_table, required=[COMPOUND, CONCENTRATION, PLATE, WELL, REPLICATE, *path_columns]
    )
    moa = read_moa_table(moa_table)
    # a blank compound or dose would silently drop the row from the join below
    require_values(raw, [COMPOUND, CONCENTRATION], image_table)
    raw[CONCENTRATION] = numeric_concentration(raw, image_table)
    raw["concentration_key"] = concentration_key(raw[CONCENTRATION])
    joined = (
        raw.reset_index()
        .merge(
            moa.rename(columns={"compound": COMPOUND}),
            on=[COMPOUND, "concentration_key"],
            how="left",
            validate="many_to_one",
        )
        .set_index("index")
    )
    is_control = is_control_compound(joined[COMPOUND])
    kept = joined[is_control | joined["moa"].notna()]
    report = {
        "rows_left_out": dropped_by_join(
            joined[~is_control & joined["moa"].isna()], moa, image_table
        ),
        "control_spellings": control_spellings(joined, image_table),
    }
    require_values(kept, [path_name_column(ch) for ch in channels], image_table)
    root = os.path.abspath(os.path.expanduser(image_root))
    check_inside_root(kept, channels, root, image_table)
    paths = {
        ch: root + os.sep + kept[path_name_column(ch)] + os.sep + kept[file_name_column(ch)]
        for ch in channels
    }
    # the week folder: Image_PathName is `Week4/Week4_27481`
    batch = kept[path_name_column(channels[0])].astype(str).str.split("/").str[0]
    moa_labels = kept["moa"].where(~is_control[kept.index], CONTROL_COMPOUND)
    table = finish(
        assemble(
            kept, moa=moa_labels, batch=batch, paths=paths, channels=channels, table=image_table
        )
    )
    table.attrs[SOURCE_COLUMNS_ATTR] = source_columns(channels, official=True)
    table.attrs[PREPARE_REPORT_ATTR] = report
    return table


def _seed_paths(raw: pd.DataFrame, channels: list[str], table: Path) -> dict[str, pd.Series]:
    folder = Path(os.path.abspath(table)).parent
    return {
        ch: raw[file_name_column(ch)]
        .astype(str)
        .map(lambda p: p if os.path.isabs(p) else os.path.normpath(folder / p))
        for ch in channels
    }


def read_seed_table(path: str | os.PathLike, channels: list[str], controls: bool) -> pd.DataFrame:
    """One seed CSV -> image table rows. The seed's Plate/Batch columns (absent from its DMSO
    table) are not used: plate is Image_Metadata_Plate_DAPI and batch its week prefix
    (`Week4_27481` -> `Week4`) for both tables, so treated and control rows always agree."""
    required = [COMPOUND, CONCENTRATION, PLATE, WELL, REPLICATE]
    required += [file_name_column(ch) for ch in channels]
    if not controls:
        required.append(SEED_MOA)
    raw = read_table(path, required=required)
    require_values(raw, [COMPOUND, CONCENTRATION], path)
    raw[CONCENTRATION] = numeric_concentration(raw, path)
    is_control = is_control_compound(raw[COMPOUND])
    if controls and not is_control.all():
        row = raw.index[~is_control][0]
        raise InputError(
            f"{path}: row {row}, column '{COMPOUND}': {raw.loc[row, COMPOUND]!r} in the DMSO table"
        )
    if controls:
        moa = pd.Series(CONTROL_COMPOUND, index=raw.index)
    else:
        unannotated = raw[SEED_MOA].isna() & ~is_control
        if unannotated.any():
            row = raw.index[unannotated][0]
            raise InputError(
                f"{path}: row {row}, column '{SEED_MOA}': no mechanism of action given"
            )
        moa = raw[SEED_MOA].where(~is_control, CONTROL_COMPOUND)
    batch = raw[PLATE].astype(str).str.split("_").str[0]
    paths = _seed_paths(raw, channels, Path(path))
    rows = assemble(raw, moa=moa, batch=batch, paths=paths, channels=channels, table=path)
    rows.attrs["control_spellings"] = control_spellings(raw, path)
    return rows


def from_seed_csv(
    annotated: str | os.PathLike, dmso: str | os.PathLike, channels: list[str]
) -> pd.DataFrame:
    """The seed's annotated + DMSO CSVs -> image table."""
    check_channels(channels)
    treated = read_seed_table(annotated, channels, controls=False)
    controls = read_seed_table(dmso, channels, controls=True)
    spellings = treated.attrs["control_spellings"] + controls.attrs["control_spellings"]
    both = pd.concat([treated, controls], ignore_index=True)
    both.attrs.clear()
    duplicated = both["image_id"].duplicated()
    if duplicated.any():
        image_id = both.loc[duplicated.idxmax(), "image_id"]
        raise InputError(f"{dmso}: image {image_id} is also in {annotated}")
    table = finish(both)
    table.attrs[SOURCE_COLUMNS_ATTR] = source_columns(channels, official=False)
    # the seed's tables are joined by nothing: no row is left out (problems are errors)
    table.attrs[PREPARE_REPORT_ATTR] = {
        "rows_left_out": [],
        "control_spellings": spellings,
    }
    return table


def summary(table: pd.DataFrame) -> str:
    treated = table[~table["is_control"]]
    return (
        f"{len(treated)} treated + {int(table['is_control'].sum())} DMSO images, "
        f"{treated['treatment'].nunique()} treatments, {treated['compound'].nunique()} compounds, "
        f"{treated['moa'].nunique()} MoAs, {table['plate'].nunique()} plates, "
        f"{table['batch'].nunique()} batches"
    )


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["official", "seed_csv"], required=True)
    parser.add_argument("--image-table", help="official: BBBC021_v1_image.csv(.gz)")
    parser.add_argument("--moa-table", help="official: BBBC021_v1_moa.csv")
    parser.add_argument("--image-root", help="official: folder holding Week1/, Week2/, ...")
    parser.add_argument("--annotated", help="seed_csv: BBBC021_annotated_fixed.csv")
    parser.add_argument("--dmso", help="seed_csv: BBBC021_DMSO_fixed.csv")
    parser.add_argument("--channels", nargs="+", required=True)
    parser.add_argument("--out", required=True, help="image table (.parquet)")
    args = parser.parse_args(argv)
    needed = (
        {
            "--image-table": args.image_table,
            "--moa-table": args.moa_table,
            "--image-root": args.image_root,
        }
        if args.source == "official"
        else {"--annotated": args.annotated, "--dmso": args.dmso}
    )
    missing = [flag for flag, value in needed.items() if not value]
    if missing:
        raise InputError(f"--source {args.source} needs {', '.join(missing)}")
    if args.source == "official":
        table = from_official(args.image_table, args.moa_table, args.image_root, args.channels)
    else:
        table = from_seed_csv(args.annotated, args.dmso, args.channels)
    if table.empty:
        raise InputError("no annotated or DMSO image left after joining the metadata tables")
    write_table(table, args.out)
    for line in report_lines(table.attrs[PREPARE_REPORT_ATTR]):
        print(line)
    print(f"{args.out}: {summary(table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
