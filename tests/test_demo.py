"""The demo dataset generator: official format, BBBC021's design, determinism, and MoA signal."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from workflow_scripts.data import demo, demo_design, metadata
from workflow_scripts.evaluate.pipeline import evaluate_table
from workflow_scripts.tables import feature_names, path_column, read_table

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["DAPI", "Tubulin", "Actin"]
OFFICIAL_IMAGE_COLUMNS = [
    "TableNumber",
    "ImageNumber",
    "Image_FileName_DAPI",
    "Image_PathName_DAPI",
    "Image_FileName_Tubulin",
    "Image_PathName_Tubulin",
    "Image_FileName_Actin",
    "Image_PathName_Actin",
    "Image_Metadata_Plate_DAPI",
    "Image_Metadata_Well_DAPI",
    "Replicate",
    "Image_Metadata_Compound",
    "Image_Metadata_Concentration",
]
UUID = r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}"
FILE_NAME = re.compile(rf"[B-G]\d{{2}}_s[1-4]_w[124]{UUID}\.tif")
# A small design for the tests that generate more than once.
TINY = {
    "moas": ["Eg5 inhibitors", "Epithelial"],
    "n_weeks": 2,
    "replicates": 1,
    "sites_per_well": 1,
    "dmso_wells_per_plate": 1,
    "single_batch_moa": None,
}
TINY_SHAPE = ["48", "64"]


def demo_config() -> tuple[dict, list[int]]:
    """config/demo.yaml's data.demo settings and image shape: the tests check what users run."""
    with open(REPO / "config" / "demo.yaml") as fh:
        data = yaml.safe_load(fh)["data"]
    return data.get("demo", {}), data["image_shape"]


def generate(out_dir: Path, settings: dict, shape: list[str], workers: int = 1) -> int:
    return demo.main(
        [
            "--settings",
            json.dumps(settings),
            "--image-shape",
            *shape,
            "--out-dir",
            str(out_dir),
            "--workers",
            str(workers),
        ]
    )


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The demo config's dataset, its raw image table and the metadata CLI's image table."""
    settings, shape = demo_config()
    out = tmp_path_factory.mktemp("demo")
    assert generate(out, settings, [str(s) for s in shape], workers=2) == 0
    assert (
        metadata.main(
            [
                "--source",
                "official",
                "--image-table",
                str(out / demo.IMAGE_TABLE),
                "--moa-table",
                str(out / demo.MOA_TABLE),
                "--image-root",
                str(out / demo.IMAGE_DIR),
                "--channels",
                *CHANNELS,
                "--out",
                str(out / "images.parquet"),
            ]
        )
        == 0
    )
    return out, pd.read_csv(out / demo.IMAGE_TABLE), read_table(out / "images.parquet")


def test_official_format_and_file_layout(demo_dataset):
    out, raw, images = demo_dataset
    assert list(raw.columns) == OFFICIAL_IMAGE_COLUMNS
    moa = pd.read_csv(out / demo.MOA_TABLE)
    assert list(moa.columns) == ["compound", "concentration", "moa"]
    dmso = (moa["compound"] == "DMSO") & (moa["concentration"] == 0.0) & (moa["moa"] == "DMSO")
    assert dmso.sum() == 1
    assert len(images) == len(raw)  # every row is annotated or DMSO: the metadata join keeps all
    plate = raw["Image_Metadata_Plate_DAPI"]
    week = plate.str.split("_").str[0]
    listed = set()
    for channel, wavelength in zip(CHANNELS, "124"):
        folders, names = raw[f"Image_PathName_{channel}"], raw[f"Image_FileName_{channel}"]
        assert (folders == week + "/" + plate).all()  # Week4/Week4_27481 as in BBBC021
        assert names.str.fullmatch(FILE_NAME.pattern).all()
        assert (names.str[:3] == raw["Image_Metadata_Well_DAPI"]).all()
        assert (names.str.extract(r"_w(\d)")[0] == wavelength).all()
        listed |= set(folders + "/" + names)
    image_root = out / demo.IMAGE_DIR
    on_disk = {p.relative_to(image_root).as_posix() for p in image_root.rglob("*") if p.is_file()}
    assert on_disk == listed
    numbers = raw.groupby("TableNumber")["ImageNumber"].apply(list)
    assert all(n == list(range(1, len(n) + 1)) for n in numbers)


def test_design_is_bbbc021_scaled_down(demo_dataset):
    _, _, images = demo_dataset
    treated = images[~images["is_control"]]
    assert treated["moa"].nunique() >= 8
    assert images["batch"].nunique() >= 3
    compounds_per_moa = treated.groupby("moa")["compound"].nunique()
    assert (compounds_per_moa >= 3).mean() > 0.5
    # real names, doses and MoAs of BBBC021
    for (compound, concentration, moa), _ in treated.groupby(["compound", "concentration", "moa"]):
        assert concentration in demo_design.BBBC021_DESIGN[moa][compound]
    for plate, wells in images.groupby("plate"):
        assert wells.loc[wells["is_control"], "well"].nunique() >= 1, plate
        assert ((wells["compound"] == "taxol") & (wells["concentration"] == 0.3)).any(), plate
    sites = images.groupby(["plate", "well"])["site"].apply(sorted)
    assert all(s == [1, 2, 3, 4] for s in sites)
    # NSCB: every MoA spans two batches but one, which NSCB drops
    batches_per_moa = treated[treated["treatment"] != "taxol@0.3"].groupby("moa")["batch"].nunique()
    assert (batches_per_moa == 1).sum() == 1
    # a compound's doses and replicates share a week, as in BBBC021
    weeks_per_compound = treated[treated["compound"] != "taxol"].groupby("compound")["batch"]
    assert (weeks_per_compound.nunique() == 1).all()
    assert 500 <= len(images) <= 900


def test_images_are_16bit_with_realistic_intensities(demo_dataset):
    _, _, images = demo_dataset
    settings, shape = demo_config()
    sample = images.groupby("batch").head(4)
    maxima, backgrounds = [], []
    for _, row in sample.iterrows():
        for channel in CHANNELS:
            image = tifffile.imread(row[path_column(channel)])
            assert image.dtype == np.uint16 and image.shape == tuple(shape)
            maxima.append(int(image.max()))
            backgrounds.append(float(np.percentile(image, 5)))
    assert 50 < np.median(backgrounds) < 1000  # camera offset + autofluorescence: a few hundred
    assert max(maxima) > 10_000  # bright structures exceed preprocess.clip_max


def image_features(image: np.ndarray) -> list[float]:
    """Naive intensity and texture statistics of one image."""
    image = image.astype(np.float32)
    blurred = [cv2.GaussianBlur(image, (0, 0), s) for s in (1, 2, 4)]
    dx, dy = cv2.Sobel(blurred[0], cv2.CV_32F, 1, 0), cv2.Sobel(blurred[0], cv2.CV_32F, 0, 1)
    gradient = np.hypot(dx, dy)
    return [
        image.mean(),
        image.std(),
        *np.percentile(image[::2, ::2], [1, 5, 25, 50, 75, 95, 99]),
        np.abs(image - blurred[0]).mean(),
        np.abs(blurred[0] - blurred[1]).mean(),
        np.abs(blurred[1] - blurred[2]).mean(),
        gradient.mean(),
    ]


def shuffled_moas(features: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """MoA labels permuted between compounds (each compound keeps one label)."""
    treated = ~features["is_control"]
    pairs = features.loc[treated, ["compound", "moa"]].drop_duplicates("compound")
    relabel = dict(zip(pairs["compound"], rng.permutation(pairs["moa"].to_numpy())))
    shuffled = features.copy()
    shuffled.loc[treated, "moa"] = shuffled.loc[treated, "compound"].map(relabel)
    return shuffled


def test_images_carry_the_moa_signal(demo_dataset):
    _, _, images = demo_dataset
    values = np.array(
        [
            [f for ch in CHANNELS for f in image_features(tifffile.imread(row[path_column(ch)]))]
            for _, row in images.iterrows()
        ]
    )
    metadata_columns = [c for c in images.columns if not c.startswith("path_")]
    feature_table = pd.DataFrame(values, columns=feature_names(values.shape[1]))
    features = pd.concat([images[metadata_columns], feature_table], axis=1)
    chance = 1 / images.loc[~images["is_control"], "moa"].nunique()
    no_map = {"map": {"enabled": False}}
    with_tvn = evaluate_table(features, {**no_map, "tvn": {"enabled": True}})
    naive = evaluate_table(features, {**no_map, "tvn": {"enabled": False}})
    rng = np.random.default_rng(0)
    shuffled = [
        evaluate_table(shuffled_moas(features, rng), {**no_map, "tvn": {"enabled": True}})["nsc"]
        for _ in range(4)
    ]
    print(
        f"chance {chance:.3f}; TVN: NSC {with_tvn['nsc']:.3f} NSCB {with_tvn['nscb']:.3f}; "
        f"naive: NSC {naive['nsc']:.3f} NSCB {naive['nscb']:.3f}; "
        f"shuffled NSC {np.round(shuffled, 3)}"
    )
    assert with_tvn["nsc"] >= 3 * chance
    assert with_tvn["nscb"] >= 3 * chance
    assert np.mean(shuffled) < 2 * chance
    # week effects: without normalization, excluding same-batch neighbours costs accuracy
    assert naive["nscb"] < naive["nsc"] - 0.1
    assert with_tvn["nscb_excluded_moas"] == [demo_design.DEFAULT_SETTINGS["single_batch_moa"]]


def file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def pixel_digests(root: Path) -> set[str]:
    images = (root / demo.IMAGE_DIR).rglob("*.tif")
    return {hashlib.sha256(tifffile.imread(p).tobytes()).hexdigest() for p in images}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    runs = {}
    for name, seed, workers in (("a", 3, 1), ("b", 3, 2), ("c", 4, 1)):
        assert generate(tmp_path / name, {**TINY, "seed": seed}, TINY_SHAPE, workers) == 0
        runs[name] = file_bytes(tmp_path / name)
    assert runs["a"] == runs["b"]  # one process or two: the same bytes
    assert runs["a"].keys() != runs["c"].keys()  # file UUIDs come from the seed
    assert not pixel_digests(tmp_path / "a") & pixel_digests(tmp_path / "c")


def test_unknown_setting_is_named_and_nothing_is_written(tmp_path, capsys):
    assert generate(tmp_path / "out", {"n_week": 3}, TINY_SHAPE) == 2
    assert "data.demo.n_week" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"moas": ["Telepathy"]}, "data.demo.moas"),
        ({"n_weeks": 0}, "data.demo.n_weeks"),
        ({"n_weeks": 2, "dmso_wells_per_plate": 30}, "data.demo"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, capsys, settings, key):
    assert generate(tmp_path / "out", settings, TINY_SHAPE) == 2
    assert f"'{key}" in capsys.readouterr().err


def test_interrupted_run_leaves_no_tables_and_no_images(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert generate(out, TINY, TINY_SHAPE) == 0
    calls = []

    def failing_write(path, image):  # the disk fills up half way through
        calls.append(path)
        if len(calls) > 5:
            raise OSError("No space left on device")
        return tifffile.imwrite(path, image)

    monkeypatch.setattr(demo.tifffile, "imwrite", failing_write)
    capsys.readouterr()
    # a full disk is one line and exit status 2 (errors.cli), not a traceback
    assert generate(out, {**TINY, "seed": 1}, TINY_SHAPE) == 2
    assert "no space left on device" in capsys.readouterr().err
    assert not (out / demo.IMAGE_TABLE).exists() and not (out / demo.MOA_TABLE).exists()
    assert not (out / demo.IMAGE_DIR).exists()
