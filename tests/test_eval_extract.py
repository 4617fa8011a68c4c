"""Feature extraction (crops, embeddings, checkpoints), channel combination, and a random-init
network evaluated end to end (extract -> evaluate CLI) on a small synthetic cache."""

import json
import pickle

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from workflow_scripts.data.cache import load_cache, write_arrays
from workflow_scripts.data.crops import INTERPOLATIONS
from workflow_scripts.evaluate import combine, evaluate, extract
from workflow_scripts.evaluate.crops import Crop, grid_crops
from workflow_scripts.evaluate.extract import CropDataset, crop_boxes, extract_features
from workflow_scripts.model.checkpoint import save_backbone_checkpoint
from workflow_scripts.model.embed import embed
from workflow_scripts.tables import feature_columns

ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
CHANNELS = ["DAPI", "Tubulin", "Actin"]
# grid crops with numpy's median: the seed's windows and lower median are tested in
# test_eval_crops.py
SETTINGS = {
    "crops": "grid",
    "crop_grid": [2, 2],
    "input_size": 32,
    "embedding": "cls",
    "crop_median": "midpoint",
}
LOADER = {"interpolation": "bicubic", "batch_size": 8, "num_workers": 0}  # extract_features kwargs
CLIP_MAX = 4000


def tiny_model():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, num_classes=0, **TINY
    ).eval()


def write_cache(folder, arrays, table):
    """A cache of these arrays (workflow_scripts.data.cache's writer)."""
    arrays = {channel: array.astype(np.uint16) for channel, array in arrays.items()}
    return write_arrays(folder, table, arrays, clip_max=CLIP_MAX, settings_digest="test")


def design_table():
    """2 batches x 2 plates; 4 MoAs x 2 compounds (compound 'a' of a MoA in W1, 'b' in W2),
    one image each per plate, and 3 DMSO images per plate: 44 images."""
    rows = []
    for batch in ("W1", "W2"):
        for p in range(2):
            plate = f"{batch}_{p}"
            entries = [
                (f"cpd{m}{'a' if batch == 'W1' else 'b'}", 1.0, f"moa{m}") for m in range(4)
            ] * 2
            entries = [(c, conc * (1 + i // 4), m) for i, (c, conc, m) in enumerate(entries)]
            entries += [("DMSO", 0.0, "DMSO")] * 3
            for w, (compound, concentration, moa) in enumerate(entries):
                rows.append(
                    {
                        "image_id": f"{plate}/W{w:02d}/s1",
                        "plate": plate,
                        "well": f"W{w:02d}",
                        "site": 1,
                        "replicate": p + 1,
                        "batch": batch,
                        "compound": compound,
                        "concentration": concentration,
                        "treatment": f"{compound}@{concentration:g}",
                        "moa": moa,
                        "is_control": compound == "DMSO",
                        **{f"path_{ch}": f"/raw/{plate}/W{w:02d}_{ch}.tif" for ch in CHANNELS},
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Synthetic images: blobs whose number and brightness depend on the MoA, on a noisy
    background that differs per batch."""
    table = design_table()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    arrays = {ch: np.zeros((len(table), 64, 64)) for ch in CHANNELS}
    for i, row in table.iterrows():
        moa = -1 if row["is_control"] else int(row["moa"][-1])
        background = 300 + (200 if row["batch"] == "W2" else 0)
        for c, ch in enumerate(CHANNELS):
            image = rng.normal(background, 40, size=(64, 64))
            for _ in range(3 + 3 * (moa + 1)):
                cy, cx = rng.uniform(4, 60, size=2)
                image += (800 + 400 * ((moa + c) % 3)) * np.exp(
                    -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 + moa + 1) ** 2
                )
            arrays[ch][i] = np.clip(image, 0, CLIP_MAX)
    return write_cache(tmp_path_factory.mktemp("cache"), arrays, table)


def run_extract(
    cache_dir,
    out,
    *,
    channel="DAPI",
    settings=SETTINGS,
    epoch=0,
    source=("--weights", "none"),
    workers=0,
):
    return extract.main(
        [
            "--arch",
            ARCH,
            "--channel",
            channel,
            "--cache-dir",
            str(cache_dir),
            *source,
            "--model-kwargs",
            json.dumps(TINY),
            "--settings",
            json.dumps(settings),
            "--batch-size",
            "8",
            "--num-workers",
            str(workers),
            "--epoch",
            str(epoch),
            "--out",
            str(out),
        ]
    )


def test_crop_boxes_tile_the_image_and_scale_with_its_size():
    assert crop_boxes(40, 48, (2, 2)) == [
        (0, 0, 20, 24),
        (0, 24, 20, 24),
        (20, 0, 20, 24),
        (20, 24, 20, 24),
    ]
    assert crop_boxes(41, 49, (2, 2))[-1] == (20, 24, 20, 24)  # remainder pixels dropped
    assert crop_boxes(512, 640, (1, 3)) == [
        (0, 0, 512, 213),
        (0, 213, 512, 213),
        (0, 426, 512, 213),
    ]


def test_crop_dataset_reaches_spawned_workers_as_file_names(cache_dir):
    arrays = load_cache(cache_dir, ["DAPI"])[1]
    dataset = CropDataset([arrays["DAPI"]], grid_crops(64, 64, (2, 2), 32), CLIP_MAX, "bicubic")
    blob = pickle.dumps(dataset)
    assert len(blob) < 4096  # the 44 x 64 x 64 array is not copied
    torch.testing.assert_close(pickle.loads(blob)[3], dataset[3])
    assert [crop.shape for crop in dataset[3]] == [(3, 32, 32)] * 4


class ChannelMeanProbe(nn.Module):
    """Stand-in ViT whose CLS token is each crop's per-channel mean (after standardisation)."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1))

    def forward_features(self, images):
        return images.mean(dim=(2, 3))[:, None, :].expand(-1, 2, -1)


def test_features_are_the_median_over_the_grid_crops_in_channel_order():
    # Quadrants of constant intensity 400, 800, 1200, 3000 (clip_max 4000 -> 0.1, 0.2, 0.3, 0.75):
    # the median over the 4 crops is 0.25; one crop of the whole image has mean ~0.3375 (exact
    # but for bicubic ringing at the quadrant edges). Channel c is the image times (c + 1) / 3, so
    # the three channels stay distinguishable and in order.
    quadrants = np.zeros((1, 40, 48))
    quadrants[0, :20, :24], quadrants[0, :20, 24:] = 400, 800
    quadrants[0, 20:, :24], quadrants[0, 20:, 24:] = 1200, 3000
    arrays = [np.rint(quadrants * (c + 1) / 3).astype(np.uint16) for c in range(3)]
    scales = np.arange(1, 4) / 3
    cpu = torch.device("cpu")
    features = extract_features(
        ChannelMeanProbe(), arrays, CLIP_MAX, SETTINGS, cpu, "none", **LOADER
    )
    np.testing.assert_allclose(features[0], 0.25 * scales, atol=2e-4)  # uint16 rounding
    whole = extract_features(
        ChannelMeanProbe(),
        arrays,
        CLIP_MAX,
        {**SETTINGS, "crop_grid": [1, 1]},
        cpu,
        "none",
        **LOADER,
    )
    np.testing.assert_allclose(whole[0], 0.3375 * scales, atol=0.005)
    # "pretrained": standardised with the backbone's mean/std (timm's default: ImageNet)
    standardised = extract_features(
        ChannelMeanProbe(), arrays, CLIP_MAX, SETTINGS, cpu, "pretrained", **LOADER
    )
    mean, std = np.array(timm.data.IMAGENET_DEFAULT_MEAN), np.array(timm.data.IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(standardised[0], (0.25 * scales - mean) / std, atol=1e-3)


def test_embedding_options_read_the_dinov3_tokens():
    model = tiny_model()
    assert model.num_prefix_tokens == 5  # CLS + 4 registers
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        tokens = model.forward_features(images)
        cls_token = embed(model, images, "cls")
        mean_patch = embed(model, images, "mean_patch")
        both = embed(model, images, "cls+mean_patch")
        pooled = model(images)
    torch.testing.assert_close(cls_token, tokens[:, 0])
    torch.testing.assert_close(mean_patch, tokens[:, 5:].mean(dim=1))
    torch.testing.assert_close(both, torch.cat([cls_token, mean_patch], dim=1))
    # timm's default pooled output of these models is the patch mean, not the CLS token
    torch.testing.assert_close(pooled, mean_patch)


def test_convnext_has_only_the_pooled_embedding():
    model = timm.create_model(
        "convnext_atto", pretrained=False, num_classes=0, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)
    ).eval()
    with pytest.raises(
        extract.InputError, match="'mean_patch' needs a ViT's tokens, but this ConvNeXt"
    ):
        extract.check_embedding(model, "mean_patch")
    extract.check_embedding(model, "cls")
    with torch.inference_mode():
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(embed(model, images, "cls"), model(images))


def test_extract_cli_epoch0_is_deterministic_with_metadata_and_float32_features(
    cache_dir, tmp_path, capsys
):
    assert run_extract(cache_dir, tmp_path / "a.parquet") == 0
    assert "images/s" in capsys.readouterr().err
    assert run_extract(cache_dir, tmp_path / "b.parquet") == 0
    first, second = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    pd.testing.assert_frame_equal(first, second)
    table = load_cache(cache_dir, [])[0]
    assert len(first) == len(table) == 44
    assert [c for c in first.columns if not c.startswith("feat_")] == [
        c for c in table.columns if not c.startswith("path_")
    ]
    pd.testing.assert_series_equal(first["image_id"], table["image_id"])
    assert len(feature_columns(first)) == 64
    assert all(first[c].dtype == np.float32 for c in feature_columns(first))
    # what the workflow compares with its configuration at start (stale_outputs.py)
    assert first.attrs["extraction"] == {"settings": SETTINGS, "model_kwargs": TINY}


@pytest.fixture
def interpolation_spy(monkeypatch):
    """The interpolation each extract_features call of the CLI gets (the call itself runs)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["interpolation"])
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(extract, "extract_features", spy)
    return seen


def test_crops_are_resized_with_the_requested_interpolation(cache_dir):
    image = load_cache(cache_dir, ["DAPI"])[1]["DAPI"][5]
    crops = {}
    for name in ("nearest", "bicubic"):
        dataset = CropDataset([image[None]], [Crop(0, 0, 32, 32, 48, 48)], CLIP_MAX, name)
        crops[name] = dataset[0][0][0]  # first crop, first of the 3 repeated grey channels
        expected = (
            cv2.resize(image[:32, :32], (48, 48), interpolation=INTERPOLATIONS[name]) / CLIP_MAX
        )
        torch.testing.assert_close(crops[name], torch.from_numpy(expected).float())
    assert not torch.allclose(crops["nearest"], crops["bicubic"], atol=1e-3)


def test_extract_cli_epoch0_uses_the_interpolation_option(cache_dir, tmp_path, interpolation_spy):
    # epoch 0 has no checkpoint: --interpolation (the rule passes train.interpolation) applies
    assert run_extract(cache_dir, tmp_path / "a.parquet") == 0
    assert (
        run_extract(
            cache_dir,
            tmp_path / "b.parquet",
            source=("--weights", "none", "--interpolation", "nearest"),
        )
        == 0
    )
    assert interpolation_spy == ["bicubic", "nearest"]  # default: the config default


def test_extract_cli_checkpoint_matches_the_model_and_checks_its_record(
    cache_dir, tmp_path, capsys, interpolation_spy
):
    model = tiny_model()
    with torch.no_grad():  # make it differ from the seeded random init of epoch 0
        for parameter in model.parameters():
            parameter.add_(0.01)
    meta = {
        "arch": ARCH,
        "channel": "rgb",
        "epoch": 2,
        "config_digest": "x",
        "model_kwargs": TINY,
        "in_chans": 3,
        "train_settings": {"input_standardization": "pretrained", "interpolation": "nearest"},
    }
    checkpoint = save_backbone_checkpoint(tmp_path / "train", model, meta)
    out = tmp_path / "epoch_0002.parquet"
    assert (
        run_extract(
            cache_dir, out, channel="rgb", epoch=2, source=("--checkpoint", str(checkpoint))
        )
        == 0
    )
    assert interpolation_spy == ["nearest"]  # recorded in the checkpoint
    extracted = pd.read_parquet(out)
    arrays = [load_cache(cache_dir, CHANNELS)[1][c] for c in CHANNELS]  # rgb = meta.json order
    cpu = torch.device("cpu")
    # the checkpoint's recorded standardisation and interpolation are applied
    recorded = {**LOADER, "interpolation": "nearest"}
    direct = extract_features(model, arrays, CLIP_MAX, SETTINGS, cpu, "pretrained", **recorded)
    np.testing.assert_allclose(
        extracted[feature_columns(extracted)].to_numpy(), direct, rtol=1e-5, atol=1e-6
    )
    unstandardised = extract_features(model, arrays, CLIP_MAX, SETTINGS, cpu, "none", **recorded)
    assert not np.allclose(unstandardised, direct, atol=1e-3)

    wrong_arch = extract.main(
        [
            "--arch",
            "vit_base_patch16_dinov3.lvd1689m",
            "--channel",
            "rgb",
            "--cache-dir",
            str(cache_dir),
            "--checkpoint",
            str(checkpoint),
            "--settings",
            json.dumps(SETTINGS),
            "--epoch",
            "2",
            "--out",
            str(tmp_path / "wrong.parquet"),
        ]
    )
    assert wrong_arch == 2
    err = capsys.readouterr().err
    assert f"is for arch {ARCH}, not vit_base_patch16_dinov3.lvd1689m" in err
    assert (
        run_extract(
            cache_dir,
            tmp_path / "wrong.parquet",
            channel="DAPI",
            epoch=2,
            source=("--checkpoint", str(checkpoint)),
        )
        == 2
    )
    assert "recorded channel 'rgb', but 'DAPI' was asked for" in capsys.readouterr().err
    assert (
        run_extract(
            cache_dir,
            tmp_path / "wrong.parquet",
            channel="rgb",
            epoch=2,
            source=("--checkpoint", str(checkpoint), "--input-standardization", "none"),
        )
        == 2
    )
    assert "recorded input_standardization 'pretrained', but 'none'" in capsys.readouterr().err
    assert (
        run_extract(
            cache_dir,
            tmp_path / "wrong.parquet",
            channel="rgb",
            epoch=2,
            source=("--checkpoint", str(checkpoint), "--interpolation", "bicubic"),
        )
        == 2
    )
    assert "recorded interpolation 'nearest', but 'bicubic'" in capsys.readouterr().err
    assert not (tmp_path / "wrong.parquet").exists()


def test_combine_concatenates_channel_features_and_checks_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    meta = pd.DataFrame(
        {"image_id": ["p/A01/s1", "p/A02/s1", "p/A03/s1"], "compound": ["x", "DMSO", "y"]}
    )
    paths = []
    for name, dim in (("DAPI", 2), ("Tubulin", 3)):
        table = pd.concat(
            [
                meta,
                pd.DataFrame(
                    rng.normal(size=(3, dim)).astype(np.float32),
                    columns=[f"feat_{i:04d}" for i in range(dim)],
                ),
            ],
            axis=1,
        )
        table.to_parquet(tmp_path / f"{name}.parquet")
        paths.append(table)
    out = tmp_path / "combined.parquet"
    assert (
        combine.main(
            [
                "--inputs",
                str(tmp_path / "DAPI.parquet"),
                str(tmp_path / "Tubulin.parquet"),
                "--names",
                "DAPI",
                "Tubulin",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    combined = pd.read_parquet(out)
    assert feature_columns(combined) == [f"feat_{i:04d}" for i in range(5)]
    np.testing.assert_array_equal(
        combined[feature_columns(combined)].to_numpy(),
        np.hstack([paths[0].iloc[:, 2:].to_numpy(), paths[1].iloc[:, 2:].to_numpy()]),
    )

    paths[1].iloc[[1, 0, 2]].to_parquet(tmp_path / "Tubulin.parquet")  # images out of order
    out.unlink()
    assert (
        combine.main(
            [
                "--inputs",
                str(tmp_path / "DAPI.parquet"),
                str(tmp_path / "Tubulin.parquet"),
                "--names",
                "DAPI",
                "Tubulin",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "row 0, column 'image_id' is 'p/A02/s1', but 'p/A01/s1'" in capsys.readouterr().err
    assert not out.exists()


def test_random_init_features_are_evaluated_end_to_end(cache_dir, tmp_path):
    features = tmp_path / "features" / "epoch_0000.parquet"
    settings = {**SETTINGS, "embedding": "cls+mean_patch"}
    assert run_extract(cache_dir, features, settings=settings, workers=2) == 0
    out_dir = tmp_path / "eval"
    settings = {
        "tvn": {"enabled": True, "scope": "global", "max_components": None, "eps": 1e-6},
        "aggregation": {"plate": "mean", "treatment": "median"},
        "map": {"enabled": True, "permutations": 100, "seed": 0},
    }
    assert (
        evaluate.main(
            [
                "--features",
                str(features),
                "--settings",
                json.dumps(settings),
                "--out-dir",
                str(out_dir),
                "--label",
                f"{ARCH}/DAPI/0000",
            ]
        )
        == 0
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["feature_dim"] == 128 and metrics["n_images"] == 44 and metrics["n_dmso"] == 12
    # 12 DMSO images support 11 components
    assert metrics["tvn_components"] == 11
    assert metrics["n_treatments_nsc"] == 16 and metrics["n_treatments_nscb"] == 16
    for key in ("nsc", "nscb", "map_nsc", "map_nscb"):
        assert 0 <= metrics[key] <= 1
