"""The rehearsal layout (data.demo.layout: official): BBBC021's own fields, folders and names.

The oracle is a plain pandas reading of the shipped official tables, written here without the
workflow's metadata code: a field is kept when its compound is DMSO or its (compound,
concentration) has a row in the MoA table; its site is the `_s<k>_` of its file name.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from workflow_scripts import config as cfg
from workflow_scripts import config_check
from workflow_scripts.data import demo, demo_design, demo_official, metadata
from workflow_scripts.errors import InputError

REPO = cfg.REPO_DIR
IMAGE_TABLE = REPO / "data" / "bbbc021" / "BBBC021_v1_image.csv.gz"
MOA_TABLE = REPO / "data" / "bbbc021" / "BBBC021_v1_moa.csv"
CHANNELS = ["DAPI", "Tubulin", "Actin"]
PLATES = ["Week1_22123", "Week2_24121"]
SMALL = {
    "layout": "official",
    "plates": PLATES,
    "moas": ["Actin disruptors", "Microtubule stabilizers"],
    "sites_per_well": 1,
}
SHAPE = ["48", "64"]


def oracle(plates=None, moas=None, sites=4) -> pd.DataFrame:
    """The official image table's rows of the annotated and DMSO fields chosen."""
    raw = pd.read_csv(IMAGE_TABLE)
    moa = pd.read_csv(MOA_TABLE)
    annotated = {
        (c, float(x)): m for c, x, m in zip(moa["compound"], moa["concentration"], moa["moa"])
    }
    labels = [
        annotated.get((c, float(x)))
        for c, x in zip(raw["Image_Metadata_Compound"], raw["Image_Metadata_Concentration"])
    ]
    raw["moa"] = labels
    keep = raw["moa"].notna()
    if plates is not None:
        keep &= raw["Image_Metadata_Plate_DAPI"].isin(plates)
    if moas is not None:
        keep &= raw["moa"].isin(moas) | (raw["Image_Metadata_Compound"] == "DMSO")
    site = raw["Image_FileName_DAPI"].str.extract(r"_s(\d)_w")[0].astype(int)
    keep &= site <= sites
    return raw[keep].drop(columns="moa")


def layout(settings: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    merged = demo_design.settings_with_defaults(settings)
    return demo_official.official_layout(IMAGE_TABLE, MOA_TABLE, merged, CHANNELS)


@pytest.mark.parametrize("sites", [4, 1])
def test_all_plates_give_the_official_annotated_and_dmso_fields(sites):
    fields, rows = layout({"layout": "official", "sites_per_well": sites})
    expected = oracle(sites=sites)
    pd.testing.assert_frame_equal(rows, expected)  # the official rows, unchanged, in order
    assert len(fields) == len(expected)
    # each layout row is an official row: plate, well, folder and file names per channel
    by_file = expected.set_index("Image_FileName_DAPI", drop=False)
    official = by_file.loc[fields["file_DAPI"]]
    assert (official["Image_Metadata_Plate_DAPI"].to_numpy() == fields["plate"].to_numpy()).all()
    assert (official["Image_Metadata_Well_DAPI"].to_numpy() == fields["well"].to_numpy()).all()
    for channel in CHANNELS:
        assert (official[f"Image_PathName_{channel}"].to_numpy() == fields["folder"]).all()
        assert (official[f"Image_FileName_{channel}"].to_numpy() == fields[f"file_{channel}"]).all()
    weeks = official["Image_PathName_DAPI"].str.extract(r"^Week(\d+)/")[0].astype(int)
    assert (weeks.to_numpy() == fields["week"].to_numpy()).all()
    treated = fields[fields["compound"] != "DMSO"]
    # BBBC021: 103 treatments over 55 plates in 10 weeks, at every site count
    assert len(treated[["compound", "concentration"]].drop_duplicates()) == 103
    assert fields["plate"].nunique() == 55 and fields["week"].nunique() == 10


def test_plates_and_moas_choose_fields_and_keep_dmso():
    fields, rows = layout(SMALL)
    expected = oracle(PLATES, SMALL["moas"], 1)
    pd.testing.assert_frame_equal(rows, expected)
    assert set(fields["plate"]) == set(PLATES)
    assert set(fields["moa"]) == {"DMSO", *SMALL["moas"]}
    assert (fields["site"] == 1).all()


def file_bytes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def generate(out: Path, settings: dict, workers: int = 1, tables: bool = True) -> int:
    argv = ["--settings", json.dumps(settings), "--image-shape", *SHAPE, "--out-dir", str(out)]
    argv += ["--workers", str(workers)]
    if tables:
        argv += ["--official-image-table", str(IMAGE_TABLE), "--official-moa-table", str(MOA_TABLE)]
    return demo.main(argv)


def test_generated_dataset_is_the_official_layout_with_rendered_images(tmp_path):
    out = tmp_path / "a"
    assert generate(out, SMALL) == 0
    expected = oracle(PLATES, SMALL["moas"], 1)
    written = pd.read_csv(out / demo.IMAGE_TABLE)
    pd.testing.assert_frame_equal(written, expected.reset_index(drop=True))
    assert (out / demo.MOA_TABLE).read_bytes() == MOA_TABLE.read_bytes()
    listed = set()
    for channel in CHANNELS:
        folders, names = written[f"Image_PathName_{channel}"], written[f"Image_FileName_{channel}"]
        listed |= set(folders + "/" + names)
    on_disk = {
        str(p.relative_to(out / demo.IMAGE_DIR)) for p in (out / demo.IMAGE_DIR).rglob("*.tif")
    }
    assert on_disk == listed  # one TIFF per listed file, nothing else
    for name in sorted(listed)[:6]:
        image = tifffile.imread(out / demo.IMAGE_DIR / name)
        assert image.dtype == np.uint16 and image.shape == (48, 64)
    # the workflow's own reader keeps every field (all annotated or DMSO)
    table = metadata.from_official(
        out / demo.IMAGE_TABLE, out / demo.MOA_TABLE, out / demo.IMAGE_DIR, CHANNELS
    )
    assert len(table) == len(written)
    # one process or two: the same bytes
    assert generate(tmp_path / "b", SMALL, workers=2) == 0
    assert file_bytes(out) == file_bytes(tmp_path / "b")


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"layout": "official", "n_weeks": 3}, "data.demo.n_weeks"),
        ({"layout": "official", "single_batch_moa": None}, "data.demo.single_batch_moa"),
        ({"plates": PLATES}, "data.demo.plates"),  # synthetic layout
        ({"layout": "grid"}, "data.demo.layout"),
        ({"layout": "official", "plates": ["Week99_1"]}, "data.demo.plates"),
        ({"layout": "official", "plates": "Week1_22123"}, "data.demo.plates"),
        ({"layout": "official", "sites_per_well": 5}, "data.demo.sites_per_well"),
    ],
)
def test_bad_settings_name_the_key_and_write_nothing(tmp_path, capsys, settings, key):
    tables = settings.get("layout") == "official"
    assert generate(tmp_path / "out", settings, tables=tables) == 2
    assert f"'{key}'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_official_tables_go_with_layout_official_only(tmp_path, capsys):
    assert generate(tmp_path / "out", SMALL, tables=False) == 2
    assert "--official-image-table" in capsys.readouterr().err
    assert generate(tmp_path / "out", {"n_weeks": 2}, tables=True) == 2
    assert "--official-image-table" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ configuration, at start
@pytest.fixture
def rehearsal_config() -> dict:
    return cfg.load([REPO / "config.yaml", REPO / "config" / "rehearsal.yaml"])


def test_rehearsal_config_keeps_the_real_geometry(rehearsal_config):
    real = cfg.load([REPO / "config.yaml"])
    config_check.check(rehearsal_config, models=False)
    for section in ("preprocess", "evaluate", "channel_modes"):
        assert rehearsal_config[section] == real[section]
    assert rehearsal_config["data"]["image_shape"] == real["data"]["image_shape"]
    for key in ("global_crops", "local_crops", "batch_size_per_gpu", "num_workers", "images"):
        assert rehearsal_config["train"][key] == real["train"][key]


def test_start_up_check_names_a_bad_demo_key_and_a_missing_official_table(rehearsal_config):
    bad = copy.deepcopy(rehearsal_config)
    bad["data"]["demo"]["n_weeks"] = 3
    with pytest.raises(InputError, match=r"'data\.demo\.n_weeks'"):
        config_check.check(bad, models=False)
    missing = copy.deepcopy(rehearsal_config)
    missing["data"]["official"]["image_table"] = "nowhere/BBBC021_v1_image.csv"
    with pytest.raises(InputError, match=r"'data\.official\.image_table' -> nowhere/"):
        config_check.check(missing, models=False)


def test_demo_config_is_unaffected_by_the_layout_keys():
    demo_settings = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["data"]["demo"]
    merged = demo_design.settings_with_defaults(demo_settings)
    assert merged["layout"] == "synthetic" and merged["plates"] == "all"


def test_a_field_is_the_same_image_whatever_else_is_rendered(tmp_path):
    """Fields depend on the settings, their plate, well and site only: a rehearsal with one site
    per well renders exactly the site-1 images of one with two sites and another plate."""
    assert generate(tmp_path / "one", SMALL) == 0
    bigger = {**SMALL, "sites_per_well": 2, "plates": [*PLATES, "Week3_25421"]}
    assert generate(tmp_path / "two", bigger) == 0
    one, two = file_bytes(tmp_path / "one" / "images"), file_bytes(tmp_path / "two" / "images")
    assert one and set(one) < set(two)
    assert all(two[name] == digest for name, digest in one.items())
