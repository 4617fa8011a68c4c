"""Validation: every kind of bad input gets its own clear message; good input passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from tiff_factory import CHANNELS, SHAPE, make_dataset, write_tiff

from workflow_scripts.data import validate
from workflow_scripts.errors import InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid table: 3 plates in 2 batches, DMSO + 3 treatments of 2 compounds, 2 sites."""
    return make_dataset(tmp_path_factory.mktemp("images"))


def bad_file(tmp_path: Path, name: str, write) -> str:
    path = tmp_path / name
    write(path)
    return str(path)


def truncated(path: Path) -> None:
    write_tiff(path, np.ones(SHAPE, np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-100])


def set_value(row: int, column: str, value):
    def edit(table, tmp_path):
        table[column] = table[column].astype(object)
        table.loc[row, column] = value
        if column == "concentration" and not isinstance(value, str):
            table[column] = table[column].astype(float)
        return table

    return edit


def set_file(row: int, column: str, name: str, write):
    def edit(table, tmp_path):
        table.loc[row, column] = bad_file(tmp_path, name, write)
        return table

    return edit


def where(row: int, column: str) -> str:
    return rf"row {row} \(image_id [^)]+\), column '{column}'"


CONTROL_ROW, TREATED_ROW = 0, 5  # rows of the sorted good table: B02 is DMSO, D04 is taxol@1

BAD_INPUTS = {
    "missing column": (
        lambda t, p: t.drop(columns=["moa"]),
        r"images.parquet: missing column\(s\) moa",
    ),
    "missing path column": (
        lambda t, p: t.drop(columns=["path_Actin"]),
        r"missing column\(s\) path_Actin",
    ),
    "empty table": (lambda t, p: t.iloc[:0], r"images.parquet: the table has no rows"),
    "missing file": (
        set_value(TREATED_ROW, "path_Tubulin", "/nonexistent/G10_s1_w2.tif"),
        where(TREATED_ROW, "path_Tubulin") + r": /nonexistent/G10_s1_w2.tif file not found",
    ),
    "truncated TIFF": (
        set_file(TREATED_ROW, "path_DAPI", "cut.tif", truncated),
        where(TREATED_ROW, "path_DAPI")
        + r": \S+cut.tif is truncated: its image data ends at byte \d+ but the file has \d+ bytes",
    ),
    "not a TIFF": (
        set_file(TREATED_ROW, "path_DAPI", "text.tif", lambda p: p.write_text("hello")),
        where(TREATED_ROW, "path_DAPI") + r": \S+text.tif cannot be read as a TIFF",
    ),
    "8-bit TIFF": (
        set_file(
            TREATED_ROW, "path_Actin", "8bit.tif", lambda p: write_tiff(p, np.ones(SHAPE, np.uint8))
        ),
        where(TREATED_ROW, "path_Actin")
        + r": \S+ has pixel type uint8, expected 16-bit unsigned integers",
    ),
    "float TIFF": (
        set_file(
            TREATED_ROW,
            "path_Actin",
            "float.tif",
            lambda p: write_tiff(p, np.ones(SHAPE, np.float32)),
        ),
        r"has pixel type float32, expected 16-bit",
    ),
    "RGB TIFF": (
        set_file(
            TREATED_ROW,
            "path_Actin",
            "rgb.tif",
            lambda p: tifffile.imwrite(p, np.ones((*SHAPE, 3), np.uint16), photometric="rgb"),
        ),
        where(TREATED_ROW, "path_Actin") + r": \S+ holds an image of shape \(24, 32, 3\), "
        r"expected a single-channel \(height, width\) image",
    ),
    "channel stack": (
        set_file(
            TREATED_ROW,
            "path_Actin",
            "stack.tif",
            lambda p: tifffile.imwrite(
                p, np.ones((3, *SHAPE), np.uint16), photometric="minisblack"
            ),
        ),
        r"holds an image of shape \(3, 24, 32\), expected a single-channel",
    ),
    "wrong size": (
        set_file(
            TREATED_ROW,
            "path_Tubulin",
            "small.tif",
            lambda p: write_tiff(p, np.ones((20, 32), np.uint16)),
        ),
        where(TREATED_ROW, "path_Tubulin")
        + r": \S+ is 20x32 pixels, expected 24x32 \(height x width",
    ),
    "NaN concentration": (
        set_value(TREATED_ROW, "concentration", np.nan),
        where(TREATED_ROW, "concentration")
        + r": nan is not a valid concentration \(finite, and > 0 for treated",
    ),
    "zero concentration": (
        set_value(TREATED_ROW, "concentration", 0.0),
        where(TREATED_ROW, "concentration") + r": 0.0 is not a valid concentration",
    ),
    "non-numeric concentration": (
        lambda t, p: set_value(TREATED_ROW, "concentration", "1 uM")(
            t.astype({"concentration": str}), p
        ),
        where(TREATED_ROW, "concentration") + r": '1 uM' is not a number",
    ),
    "missing value": (
        set_value(TREATED_ROW, "compound", None),
        where(TREATED_ROW, "compound") + r": missing value",
    ),
    "site not integer": (
        lambda t, p: t.astype({"site": float}),
        r"column 'site' must hold integers \(has type float64\)",
    ),
    "compound with two MoAs": (
        set_value(TREATED_ROW, "moa", "Actin disruptors"),
        where(TREATED_ROW, "moa") + r": compound 'taxol' has moa 'Actin disruptors' here but "
        r"'Microtubule stabilizers' in row 2 \(one MoA per compound\)",
    ),
    "treatment name inconsistent": (
        set_value(TREATED_ROW, "treatment", "taxol@3"),
        where(TREATED_ROW, "treatment")
        + r": 'taxol@3' does not match compound 'taxol' at concentration 1 "
        r"\(expected 'taxol@1'\)",
    ),
    "treatment with two concentrations": (
        set_value(TREATED_ROW, "concentration", 1.0000001),
        where(TREATED_ROW, "concentration")
        + r": treatment 'taxol@1' has concentration 1.0000001 here but 1.0 in row 4",
    ),
    "control flag wrong": (
        set_value(TREATED_ROW, "is_control", True),
        where(TREATED_ROW, "is_control") + r": is True but compound is 'taxol'",
    ),
    "control with a MoA": (
        set_value(CONTROL_ROW, "moa", "Microtubule stabilizers"),
        where(CONTROL_ROW, "moa") + r": a DMSO control must have moa DMSO",
    ),
    "no DMSO at all": (
        lambda t, p: t[~t["is_control"]].reset_index(drop=True),
        r"images.parquet: no DMSO control image \(column 'compound'\)",
    ),
    "plate without DMSO": (
        lambda t, p: t[~(t["is_control"] & (t["plate"] == "Week1_22141"))].reset_index(drop=True),
        r"column 'plate': plate 'Week1_22141' has no DMSO control image",
    ),
    "duplicate image_id": (
        lambda t, p: pd.concat([t, t.iloc[[3]]], ignore_index=True),
        where(24, "image_id") + r": duplicate of row 3",
    ),
    "same file twice": (
        lambda t, p: t.assign(
            path_Actin=t["path_Actin"].where(t.index != 7, t.loc[7, "path_DAPI"])
        ),
        where(7, "path_Actin") + r": file \S+ is also used by row 7, column 'path_DAPI'",
    ),
    "single batch": (
        lambda t, p: t.assign(batch="Week1"),
        r"column 'batch' has only one batch \(Week1\); NSCB .* needs at least two",
    ),
    "plate in two batches": (
        set_value(TREATED_ROW, "batch", "Week2"),
        where(TREATED_ROW, "batch")
        + r": plate 'Week1_22123' is in batch 'Week2' here but in 'Week1' in row 0",
    ),
}


@pytest.mark.parametrize("edit, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_named(good, tmp_path, edit, message):
    path = tmp_path / "images.parquet"
    edit(good.copy(), tmp_path).to_parquet(path, index=False)
    with pytest.raises(InputError, match=message):
        validate.validate(path, CHANNELS, SHAPE)


def test_unknown_channel(good, tmp_path):
    path = tmp_path / "images.parquet"
    good.to_parquet(path, index=False)
    with pytest.raises(InputError, match=r"--channels: unknown channel name\(s\) GFP"):
        validate.validate(path, ["DAPI", "GFP"], SHAPE)


def test_all_file_problems_are_counted(good, tmp_path):
    table = good.copy()
    table.loc[4, "path_Actin"] = "/nonexistent/1.tif"
    table.loc[9, "path_Actin"] = "/nonexistent/2.tif"
    table.loc[4, "path_DAPI"] = "/nonexistent/3.tif"
    path = tmp_path / "images.parquet"
    table.to_parquet(path, index=False)
    message = (
        where(4, "path_DAPI")
        + r": /nonexistent/3.tif file not found \(2 more image file\(s\) failed"
    )
    with pytest.raises(InputError, match=message):
        validate.validate(path, CHANNELS, SHAPE, workers=2)


def test_good_input_writes_table_and_reports(good, tmp_path):
    table_path = tmp_path / "prepared.parquet"
    good.to_parquet(table_path, index=False)
    out, report, report_md = (
        tmp_path / "images.parquet",
        tmp_path / "report.json",
        tmp_path / "report.md",
    )
    argv = [
        "--table",
        str(table_path),
        "--channels",
        *CHANNELS,
        "--image-shape",
        *map(str, SHAPE),
        "--out",
        str(out),
        "--report",
        str(report),
        "--report-md",
        str(report_md),
    ]
    assert validate.main(argv) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), good)
    counts = json.loads(report.read_text())
    assert (
        counts["n_images"] == 24
        and counts["n_control_images"] == 6
        and counts["n_treated_images"] == 18
    )
    assert (counts["n_treatments"], counts["n_compounds"], counts["n_moas"]) == (3, 2, 2)
    assert (counts["n_plates"], counts["n_batches"]) == (3, 2)
    assert counts["per_moa"]["Microtubule stabilizers"] == {
        "images": 12,
        "treatments": 2,
        "compounds": 1,
    }
    assert counts["images_per_batch"] == {"Week1": 16, "Week2": 8}
    assert counts["control_images_per_plate"] == {
        "Week1_22123": 2,
        "Week1_22141": 2,
        "Week2_24121": 2,
    }
    assert (counts["image_height"], counts["image_width"], counts["image_dtype"]) == (
        24,
        32,
        "uint16",
    )
    markdown = report_md.read_text()
    assert "| Microtubule stabilizers | 12 | 2 | 1 |" in markdown
    assert "| Week2_24121 | 8 | 2 |" in markdown


def test_cli_failure_leaves_no_output(good, tmp_path):
    table = good.copy()
    table.loc[2, "path_Tubulin"] = str(tmp_path / "gone.tif")
    table_path = tmp_path / "prepared.parquet"
    table.to_parquet(table_path, index=False)
    outputs = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.data.validate",
            "--table",
            str(table_path),
            "--channels",
            *CHANNELS,
            "--image-shape",
            *map(str, SHAPE),
            "--out",
            str(outputs / "images.parquet"),
            "--report",
            str(outputs / "report.json"),
            "--report-md",
            str(outputs / "report.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"error: {table_path}: row 2 (image_id {good.loc[2, 'image_id']}), column 'path_Tubulin': "
        f"{tmp_path / 'gone.tif'} file not found"
    )
    assert not outputs.exists() or not any(outputs.iterdir())


def test_extra_thumbnail_series_is_accepted(tmp_path):
    """Acquisition software may append a preview; the image is the first series, as imread reads."""
    path = tmp_path / "with_thumbnail.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.ones(SHAPE, np.uint16))
        tif.write(np.ones((6, 8), np.uint8))
    assert validate.tiff_problem(str(path), SHAPE) is None
    assert validate.tiff_problem(str(path), (SHAPE[0], SHAPE[1] + 1)).startswith("is 24x32 pixels")
