"""The real experiment's geometry, end to end on every change: a cut-down rehearsal.

config/rehearsal.yaml (1280x1024 uint16 TIFFs in BBBC021's plates, folders and file names,
resize_factor 0.5, the real 224/96 px training crops and the seed's four native windows, a tiny
ViT; docs/demo.md) on two plates of two weeks, the wells of two MoAs and DMSO, one site each
(30 fields), one epoch. Runs the workflow in a copy of the repository (~2-3 min on 2 cores).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from hang_guard import HANG_GUARD_S
from workflow_copy import copy_repo, snakemake, write_overlay

from workflow_scripts import config as cfg
from workflow_scripts.data.cache import load_cache
from workflow_scripts.model.checkpoint import load_backbone_checkpoint
from workflow_scripts.train.dataset import build_train_loader

REPO = cfg.REPO_DIR
OUTPUT_DIR = "results/rehearsal_test"
CHANNELS = ["DAPI", "Tubulin", "Actin"]
OVERLAY = {
    "output_dir": OUTPUT_DIR,
    "data": {
        "demo": {
            "plates": ["Week1_22123", "Week2_24121"],
            "moas": ["Actin disruptors", "Microtubule stabilizers"],
            "sites_per_well": 1,
        }
    },
    # speed only: no loader worker processes for one step
    "train": {"epochs": 1, "num_workers": 0},
    "evaluate": {"num_workers": 0},
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    workdir = copy_repo(tmp_path_factory.mktemp("rehearsal") / "repo")
    overlay = write_overlay(workdir / "cut_down.yaml", OVERLAY)
    snakemake(
        workdir, "--cores", "2", "--configfile", "config/rehearsal.yaml", str(overlay),
        timeout_s=HANG_GUARD_S,
    )  # fmt: skip
    config = cfg.deep_merge(
        cfg.load([REPO / "config.yaml", REPO / "config" / "rehearsal.yaml"]), OVERLAY
    )
    return workdir / OUTPUT_DIR, config


def test_raw_fields_are_bbbc021_size_in_bbbc021_layout(rehearsal):
    out, config = rehearsal
    table = pd.read_csv(out / "demo_data" / "BBBC021_v1_image.csv")
    assert set(table["Image_Metadata_Plate_DAPI"]) == set(OVERLAY["data"]["demo"]["plates"])
    first = table.iloc[0]
    for channel in CHANNELS:
        path = out / "demo_data" / "images" / first[f"Image_PathName_{channel}"]
        image = tifffile.imread(path / first[f"Image_FileName_{channel}"])
        assert image.dtype == np.uint16 and list(image.shape) == config["data"]["image_shape"]
    assert list(config["data"]["image_shape"]) == [1024, 1280]


def test_cache_holds_the_fields_at_640x512(rehearsal):
    out, config = rehearsal
    table, arrays, meta = load_cache(out / "cache", CHANNELS)
    assert (meta["height"], meta["width"], meta["resize_factor"]) == (512, 640, 0.5)
    raw = pd.read_csv(out / "demo_data" / "BBBC021_v1_image.csv")
    for channel in CHANNELS:
        assert arrays[channel].shape == (len(raw), 512, 640)
    # each cache row is its own field, halved: close to a plain area resize of the raw TIFF
    # (the illumination correction is smooth, so the correlation stays high)
    for row in (0, len(table) - 1):
        raw_image = tifffile.imread(table["path_DAPI"].iloc[row]).astype(np.float32)
        halved = cv2.resize(raw_image, (640, 512), interpolation=cv2.INTER_AREA)
        cached = arrays["DAPI"][row].astype(np.float32)
        assert np.corrcoef(halved.ravel(), cached.ravel())[0, 1] > 0.95


def test_training_cut_224_and_96_px_crops(rehearsal):
    out, config = rehearsal
    arch = config["architectures"][0]["name"]
    meta = json.loads((out / "train" / arch / "DAPI" / "epoch_0001.json").read_text())
    settings = meta["train_settings"]
    loader, sampler = build_train_loader(
        str(out / "cache"), "DAPI", settings, rank=0, world_size=1, seed=0, device_type="cpu"
    )
    sampler.set_epoch(0)
    crops = next(iter(loader))
    batch = settings["batch_size_per_gpu"]
    assert [tuple(c.shape) for c in crops] == [(batch, 3, 224, 224)] * 2 + [(batch, 3, 96, 96)] * 8
    log = [json.loads(line) for line in (out / "train" / arch / "DAPI" / "log.jsonl").open()]
    assert [e["epoch"] for e in log] == [1] and np.isfinite(log[0]["loss"]) and log[0]["steps"] >= 1


def test_extraction_embeds_the_four_native_windows(rehearsal):
    """Oracle: the CLS tokens of config.yaml's four boxes cut from the cache by hand at native
    size, their lower median (torch.median), equal the extracted features."""
    out, config = rehearsal
    arch = config["architectures"][0]["name"]
    boxes = config["evaluate"]["seed_windows"]["boxes"]
    assert sorted({(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}) == [(224, 224), (256, 224)]
    _, arrays, meta = load_cache(out / "cache", ["DAPI"])
    model, _ = load_backbone_checkpoint(out / "train" / arch / "DAPI" / "epoch_0001.safetensors")
    features = pd.read_parquet(out / "features" / arch / "DAPI" / "epoch_0001.parquet")
    values = features.filter(like="feat_").to_numpy()
    for row in (0, len(features) - 1):
        per_window = []
        for x0, y0, x1, y1 in boxes:
            window = arrays["DAPI"][row, y0:y1, x0:x1].astype(np.float32)
            window = np.minimum(window, meta["clip_max"]) / meta["clip_max"]
            image = torch.from_numpy(window)[None, None].expand(1, 3, *window.shape)
            with torch.inference_mode():
                per_window.append(model.forward_features(image)[0, 0])
        expected = torch.stack(per_window).median(dim=0).values.numpy()
        np.testing.assert_allclose(values[row], expected, rtol=1e-4, atol=1e-5)


def test_every_channel_and_epoch_is_scored_and_reported(rehearsal):
    out, config = rehearsal
    summary = pd.read_csv(out / "summary" / "summary.csv")
    expected = {(c, e) for c in cfg.evaluation_channels(config) for e in (0, 1)}
    assert set(zip(summary["channel"], summary["epoch"])) == expected
    for metric in ("nsc", "nscb", "map_nsc"):
        assert summary[metric].between(0, 1).all()
    # two weeks: every treatment has a cross-batch candidate set, so NSCB scores them
    assert (summary["n_treatments_nscb"] > 0).all()
    assert "<img" in (out / "summary" / "report.html").read_text()
