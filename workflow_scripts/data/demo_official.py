"""The rehearsal layout: BBBC021's own plates, wells, sites and file names (the official tables).

With config `data.demo.layout: official` the generator renders the fields the real experiment
reads instead of demo_design's scaled-down design: every annotated treatment and DMSO field of
BBBC021_v1_image.csv that data/metadata.py keeps (3,848 fields of 55 plates in 10 weeks: 103
treatments, 1,320 DMSO fields), in BBBC021's folders (`Week4/Week4_27481`) under BBBC021's file
names. `sites_per_well: N` keeps sites 1..N of each well (N/4 of the fields), `plates` a list of
plates, `moas` the treated wells of some MoAs (DMSO wells always stay). The tables written beside
the images are the official ones: the image table's rows of the rendered fields, unchanged, and
the MoA table as it is. The week of a plate (batch effects) is its folder's `Week<k>`.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd

from workflow_scripts.data import demo_design, metadata
from workflow_scripts.errors import InputError
from workflow_scripts.tables import CONTROL_COMPOUND, read_table

WEEK_FOLDER = re.compile(r"Week(\d+)")
# folder and file name of each field, per channel (render_plate writes them there)
FOLDER = "folder"


def file_column(channel: str) -> str:
    return f"file_{channel}"


def official_layout(
    image_table: str | os.PathLike,
    moa_table: str | os.PathLike,
    settings: dict[str, Any],
    channels: list[str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(layout, image rows) of the official tables' fields that `settings` keep.

    layout: one row per field with demo_design.field_layout's columns (week, plate, replicate,
    well, site, compound, concentration, moa) plus `folder` and `file_<channel>`, sorted as
    field_layout sorts; image rows: those fields' rows of the image table, in its order."""
    kept = metadata.from_official(image_table, moa_table, os.curdir, channels)
    raw = read_table(image_table)
    kept = _select(kept, settings, image_table)
    rows = raw.loc[kept["source_row"]]
    folders = rows[metadata.path_name_column(channels[0])].astype(str)
    for channel in channels[1:]:
        differs = rows[metadata.path_name_column(channel)].astype(str) != folders
        if differs.any():
            row = rows.index[differs][0]
            raise InputError(
                f"{image_table}: row {row}: the channels' files lie in different folders; "
                "layout official writes a field's channels into one folder"
            )
    weeks = folders.str.split("/").str[0].str.fullmatch(WEEK_FOLDER.pattern)
    if not weeks.all():
        row = rows.index[~weeks][0]
        raise InputError(
            f"{image_table}: row {row}, column '{metadata.path_name_column(channels[0])}': "
            f"{folders[row]!r} does not start with a Week<k> folder (the plate's week)"
        )
    layout = pd.DataFrame(
        {
            "week": folders.str.extract(WEEK_FOLDER)[0].astype(int).to_numpy(),
            "plate": kept["plate"].to_numpy(),
            "replicate": kept["replicate"].to_numpy(),
            "well": kept["well"].to_numpy(),
            "site": kept["site"].to_numpy(),
            "compound": kept["compound"].to_numpy(),
            "concentration": kept["concentration"].to_numpy(),
            "moa": kept["moa"].to_numpy(),
            FOLDER: folders.to_numpy(),
            **{
                file_column(ch): rows[metadata.file_name_column(ch)].astype(str).to_numpy()
                for ch in channels
            },
        }
    )
    layout = layout.sort_values(["week", "plate", "well", "site"], ignore_index=True)
    return layout, raw.loc[sorted(kept["source_row"])]


def _select(kept: pd.DataFrame, settings: dict[str, Any], table: str | os.PathLike) -> pd.DataFrame:
    """The fields of the chosen plates, MoAs (DMSO always) and sites; BBBC021 compounds only."""
    plates = settings["plates"]
    if plates != "all":
        unknown = sorted(set(plates) - set(kept["plate"]))
        if unknown:
            raise InputError(
                f"config key 'data.demo.plates': {unknown[0]!r} is not a plate of {table} "
                f"(plates: {', '.join(sorted(set(kept['plate'])))})"
            )
        kept = kept[kept["plate"].isin(plates)]
    is_control = kept["compound"] == CONTROL_COMPOUND
    kept = kept[is_control | kept["moa"].isin(settings["moas"])]
    most_sites = int(kept["site"].max())
    if settings["sites_per_well"] > most_sites:
        raise InputError(
            f"config key 'data.demo.sites_per_well': {settings['sites_per_well']} exceeds the "
            f"{most_sites} sites per well of {table}"
        )
    kept = kept[kept["site"] <= settings["sites_per_well"]]
    treated = kept[kept["compound"] != CONTROL_COMPOUND]
    known = [
        compound in demo_design.BBBC021_DESIGN.get(moa, {})
        for compound, moa in zip(treated["compound"], treated["moa"])
    ]
    if not all(known):
        row = treated.iloc[known.index(False)]
        raise InputError(
            f"{table}: row {row['source_row']}: {row['compound']} ({row['moa']}) is not a BBBC021 "
            "compound of that MoA; the generator renders BBBC021's phenotypes only"
        )
    if treated.empty:
        raise InputError(
            "config key 'data.demo': the chosen plates, MoAs and sites hold no treated field"
        )
    return kept
