"""Generate the demo dataset: BBBC021-like images in the official format, deterministic from a seed.

    python -m workflow_scripts.data.demo --settings JSON --image-shape H W --out-dir DIR
    python -m workflow_scripts.data.demo --settings '{"layout": "official", ...}' \
        --image-shape 1024 1280 --official-image-table T --official-moa-table M --out-dir DIR

writes 16-bit TIFFs to DIR/images/Week{k}/Week{k}_{plate}/{well}_s{site}_w{1,2,4}{UUID}.tif
(w1 DAPI, w2 Tubulin, w4 Actin, as BBBC021 names them), then DIR/BBBC021_v1_moa.csv and last
DIR/BBBC021_v1_image.csv, with BBBC021's columns and paths relative to DIR/images. The images
folder appears complete or not at all, and the tables only after it, so an interrupted run never
leaves a dataset that looks complete. Settings (config `data.demo`) and their defaults:
demo_design.DEFAULT_SETTINGS; the design: demo_design (layout synthetic, the default) or
BBBC021's own plates, wells, sites and file names from the official tables (layout official:
demo_official; the rehearsal, config/rehearsal.yaml); the biology: demo_biology; the cells:
demo_cells; the microscope: demo_microscope.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tifffile

from workflow_scripts.atomic import atomic_dir, atomic_path
from workflow_scripts.data import demo_biology, demo_design, demo_microscope, demo_official
from workflow_scripts.data.demo_cells import render_field
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.tables import CONTROL_COMPOUND

IMAGE_TABLE = "BBBC021_v1_image.csv"
MOA_TABLE = "BBBC021_v1_moa.csv"
IMAGE_DIR = "images"
CHANNEL_WAVELENGTH = {"DAPI": 1, "Tubulin": 2, "Actin": 4}  # BBBC021 file names: _w1, _w2, _w4
MIN_SIDE = 32  # px: room for a few cells


def _population_of(
    well: pd.Series, settings: dict[str, Any], drift: dict[str, float], rng: np.random.Generator
) -> dict[str, float]:
    """Population parameters of one well (DMSO: the untreated population)."""
    if well["compound"] == CONTROL_COMPOUND:
        population = dict(demo_biology.DMSO_POPULATION)
    else:
        doses = demo_design.BBBC021_DESIGN[well["moa"]][well["compound"]]
        shift, ec50 = demo_biology.compound_effect(
            well["compound"], well["moa"], min(doses), settings["seed"]
        )
        population = demo_biology.treatment_population(
            shift, ec50, well["concentration"], settings["phenotype_strength"]
        )
    return demo_biology.well_population(population, drift, rng)


def render_plate(
    fields: pd.DataFrame, settings: dict[str, Any], shape: tuple[int, int], image_root: Path
) -> pd.DataFrame:
    """Write the TIFFs of one plate's fields under `image_root`; returns their file names.

    Every well and field draws from its own seed, so plates can be rendered in any order or in
    parallel with identical results."""
    seed, amount = settings["seed"], settings["batch_effect"]
    channels = list(CHANNEL_WAVELENGTH)
    week, plate = int(fields["week"].iloc[0]), fields["plate"].iloc[0]
    microscope = demo_microscope.week_acquisition(week, channels, shape, seed, amount)
    gains = {ch: demo_microscope.plate_gain(plate, ch, seed, amount) for ch in channels}
    culture = demo_biology.week_drift(week, seed, amount)
    cells_per_pixel = settings["cells_per_megapixel"] / 1e6
    # layout official: BBBC021's own folder and file names (demo_official)
    given_names = demo_official.FOLDER in fields
    folder = image_root / (
        fields[demo_official.FOLDER].iloc[0] if given_names else f"Week{week}/{plate}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    file_names: dict[str, list[str]] = {channel: [] for channel in channels}
    for well, well_fields in fields.groupby("well", sort=False):
        well_rng = np.random.default_rng(demo_biology.stable_seed(seed, "well", plate, well))
        population = _population_of(well_fields.iloc[0], settings, culture, well_rng)
        for index, site in zip(well_fields.index, well_fields["site"]):
            rng = np.random.default_rng(demo_biology.stable_seed(seed, "field", plate, well, site))
            signals = render_field(population, shape, cells_per_pixel, rng)
            for channel in channels:
                image = demo_microscope.acquire(
                    signals[channel], microscope[channel], gains[channel], rng
                )
                name = f"{well}_s{site}_w{CHANNEL_WAVELENGTH[channel]}{_uuid(rng)}.tif"
                if given_names:
                    name = fields.at[index, demo_official.file_column(channel)]
                tifffile.imwrite(folder / name, image)
                file_names[channel].append(name)
    return pd.DataFrame(file_names, index=fields.index)


def render_images(
    layout: pd.DataFrame,
    settings: dict[str, Any],
    shape: tuple[int, int],
    image_root: Path,
    workers: int = 1,
) -> pd.DataFrame:
    """Write the TIFFs of every field in `layout` (plates spread over `workers` processes)."""
    plates = [fields for _, fields in layout.groupby("plate", sort=False)]
    arguments = (plates, repeat(settings), repeat(shape), repeat(image_root))
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(render_plate, *arguments))
    else:
        parts = list(map(render_plate, *arguments))
    return pd.concat(parts).loc[layout.index]


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4)).upper()


def image_table(layout: pd.DataFrame, file_names: pd.DataFrame) -> pd.DataFrame:
    """BBBC021_v1_image.csv: TableNumber is the week, ImageNumber counts within it."""
    table = pd.DataFrame({"TableNumber": layout["week"]})
    table["ImageNumber"] = layout.groupby("week").cumcount() + 1
    folder = "Week" + layout["week"].astype(str) + "/" + layout["plate"]
    for channel in CHANNEL_WAVELENGTH:
        table[f"Image_FileName_{channel}"] = file_names[channel]
        table[f"Image_PathName_{channel}"] = folder
    table["Image_Metadata_Plate_DAPI"] = layout["plate"]
    table["Image_Metadata_Well_DAPI"] = layout["well"]
    table["Replicate"] = layout["replicate"]
    table["Image_Metadata_Compound"] = layout["compound"]
    table["Image_Metadata_Concentration"] = layout["concentration"]
    return table


def generate(
    settings: dict[str, Any],
    shape: tuple[int, int],
    out_dir: str | Path,
    workers: int = 1,
    official_tables: tuple[str | Path, str | Path] | None = None,
) -> dict[str, Any]:
    """Write the dataset (see module docstring); returns counts for the summary line.
    `official_tables`: (image table, MoA table) whose fields layout official renders."""
    settings = demo_design.settings_with_defaults(settings)
    if len(shape) != 2 or min(shape) < MIN_SIDE:
        raise InputError(f"--image-shape: expected two sizes >= {MIN_SIDE} px, got {list(shape)}")
    official = settings["layout"] == "official"
    if official != (official_tables is not None):
        raise InputError(
            "--official-image-table / --official-moa-table: needed by layout official, "
            "and by it only"
        )
    if official:  # before anything is removed: a bad table or setting leaves the old dataset
        layout, official_rows = demo_official.official_layout(
            *official_tables, settings, list(CHANNEL_WAVELENGTH)
        )
    out_dir = Path(out_dir)
    # A run replaces the whole dataset: no stale table may describe missing or new images.
    for table_name in (IMAGE_TABLE, MOA_TABLE):
        (out_dir / table_name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / IMAGE_DIR, ignore_errors=True)
    start = time.perf_counter()
    if not official:
        layout = demo_design.field_layout(
            settings, np.random.default_rng(demo_biology.stable_seed(settings["seed"], "layout"))
        )
    with atomic_dir(out_dir / IMAGE_DIR) as image_root:
        file_names = render_images(layout, settings, tuple(shape), image_root, workers)
    if official:  # the official tables, as they are: the real experiment's input
        with atomic_path(out_dir / MOA_TABLE) as tmp:
            shutil.copyfile(official_tables[1], tmp)
        with atomic_path(out_dir / IMAGE_TABLE) as tmp:
            official_rows.to_csv(tmp, index=False)
    else:
        moa = demo_design.moa_table(settings)
        with atomic_path(out_dir / MOA_TABLE) as tmp:
            moa.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
        with atomic_path(out_dir / IMAGE_TABLE) as tmp:
            image_table(layout, file_names).to_csv(tmp, index=False)
    treated = layout[layout["compound"] != CONTROL_COMPOUND]
    return {
        "images": len(layout),
        "tiffs": len(layout) * len(CHANNEL_WAVELENGTH),
        "treatments": len(treated[["compound", "concentration"]].drop_duplicates()),
        "compounds": treated["compound"].nunique(),
        "moas": treated["moa"].nunique(),
        "plates": layout["plate"].nunique(),
        "batches": layout["week"].nunique(),
        "seconds": time.perf_counter() - start,
    }


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="{}", help="JSON object: config data.demo")
    parser.add_argument("--image-shape", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--workers", type=int, default=1, help="processes rendering plates (same output for any)"
    )
    parser.add_argument(
        "--official-image-table", help="layout official: BBBC021_v1_image.csv(.gz) to render"
    )
    parser.add_argument("--official-moa-table", help="layout official: BBBC021_v1_moa.csv")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise InputError(f"--workers: expected at least 1, got {args.workers}")
    settings = json_object_option(args.settings, "--settings")  # generate() validates it
    tables = (args.official_image_table, args.official_moa_table)
    if any(tables) and not all(tables):
        raise InputError("--official-image-table and --official-moa-table go together")
    summary = generate(
        settings,
        tuple(args.image_shape),
        args.out_dir,
        args.workers,
        official_tables=tables if all(tables) else None,
    )
    print(
        f"demo dataset: {summary['images']} images ({summary['tiffs']} TIFFs of "
        f"{args.image_shape[0]}x{args.image_shape[1]}), {summary['treatments']} treatments, "
        f"{summary['compounds']} compounds, {summary['moas']} MoAs, {summary['plates']} plates, "
        f"{summary['batches']} batches in {summary['seconds']:.1f} s -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
