"""Tiny BBBC021-like inputs for data-stage tests: 16-bit TIFFs, image tables, official tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from workflow_scripts.tables import METADATA_COLUMNS, SORT_KEYS, path_column, treatment_name

CHANNELS = ["DAPI", "Tubulin", "Actin"]
WAVELENGTH = {"DAPI": 1, "Tubulin": 2, "Actin": 4}  # BBBC021's w1/w2/w4 file-name suffixes
SHAPE = (24, 32)
# batch -> plates; two batches so NSCB is possible
PLATES = {"Week1": ["Week1_22123", "Week1_22141"], "Week2": ["Week2_24121"]}
# well -> (compound, concentration, moa); every plate gets all of them
WELLS = {
    "B02": ("DMSO", 0.0, "DMSO"),
    "C03": ("taxol", 0.3, "Microtubule stabilizers"),
    "D04": ("taxol", 1.0, "Microtubule stabilizers"),
    "E05": ("emetine", 0.1, "Protein synthesis"),
}
SITES = (1, 2)

Pixels = Callable[[str, str, int, str, np.random.Generator], np.ndarray]


def random_pixels(
    plate: str, well: str, site: int, channel: str, rng: np.random.Generator
) -> np.ndarray:
    return rng.integers(100, 3000, size=SHAPE, dtype=np.uint16)


def write_tiff(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image)
    return path


def file_name(well: str, site: int, channel: str) -> str:
    return f"{well}_s{site}_w{WAVELENGTH[channel]}{str(uuid.uuid4()).upper()}.tif"


def make_dataset(
    root: Path,
    pixels: Pixels = random_pixels,
    channels: list[str] = CHANNELS,
    plates: dict[str, list[str]] = PLATES,
    wells: dict[str, tuple[str, float, str]] = WELLS,
    seed: int = 0,
) -> pd.DataFrame:
    """Write one TIFF per plate/well/site/channel under `root` and return the image table
    (docs/formats.md) that describes them."""
    rng = np.random.default_rng(seed)
    rows = []
    for batch, batch_plates in plates.items():
        for replicate, plate in enumerate(batch_plates, start=1):
            for well, (compound, concentration, moa) in wells.items():
                for site in SITES:
                    row = {
                        "image_id": f"{plate}/{well}/s{site}",
                        "plate": plate,
                        "well": well,
                        "site": site,
                        "replicate": replicate,
                        "batch": batch,
                        "compound": compound,
                        "concentration": concentration,
                        "treatment": treatment_name(compound, concentration),
                        "moa": moa,
                        "is_control": compound == "DMSO",
                    }
                    for ch in channels:
                        path = root / batch / plate / file_name(well, site, ch)
                        row[path_column(ch)] = str(
                            write_tiff(path, pixels(plate, well, site, ch, rng))
                        )
                    rows.append(row)
    table = pd.DataFrame(rows, columns=METADATA_COLUMNS + [path_column(ch) for ch in channels])
    return table.sort_values(SORT_KEYS).reset_index(drop=True)


def official_tables(table: pd.DataFrame, root: Path, folder: Path) -> tuple[Path, Path]:
    """The official BBBC021_v1_image.csv and BBBC021_v1_moa.csv that describe `table`
    (whose paths lie under `root`), written into `folder`."""
    image_rows = []
    for number, row in enumerate(table.itertuples(index=False), start=1):
        record = {"TableNumber": 1, "ImageNumber": number}
        for ch in CHANNELS:
            path = Path(getattr(row, path_column(ch))).relative_to(root)
            record[f"Image_FileName_{ch}"] = path.name
            record[f"Image_PathName_{ch}"] = path.parent.as_posix()
        record.update(
            {
                "Image_Metadata_Plate_DAPI": row.plate,
                "Image_Metadata_Well_DAPI": row.well,
                "Replicate": row.replicate,
                "Image_Metadata_Compound": row.compound,
                "Image_Metadata_Concentration": row.concentration,
            }
        )
        image_rows.append(record)
    moa = table[["compound", "concentration", "moa"]].drop_duplicates()
    folder.mkdir(parents=True, exist_ok=True)
    image_csv, moa_csv = folder / "BBBC021_v1_image.csv", folder / "BBBC021_v1_moa.csv"
    pd.DataFrame(image_rows).to_csv(image_csv, index=False)
    moa.to_csv(moa_csv, index=False, float_format="%.6f")  # the official file writes 3.000000
    return image_csv, moa_csv
