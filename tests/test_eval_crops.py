"""Evaluation crops: the seed's four windows (WS-DINO Eval_BBBC021.py), their scaling with the
cached field, what the model is fed, the median over crops, and the pixel-scale statement."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from workflow_scripts import config as cfg
from workflow_scripts import config_check
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import crops, extract

CONFIG = cfg.load([cfg.REPO_DIR / "config.yaml"])
DEMO = cfg.load([cfg.REPO_DIR / "config.yaml", cfg.REPO_DIR / "config" / "demo.yaml"])
SEED = {**CONFIG["evaluate"], "crops": "seed"}
LOADER = {"interpolation": "bicubic", "batch_size": 2, "num_workers": 0}
CLIP_MAX = 10000
# The seed's albumentations Crop(x_min, y_min, x_max, y_max) windows, copied from its script
SEED_WINDOWS = [(64, 32, 320, 256), (320, 32, 544, 256), (64, 256, 320, 480), (320, 256, 544, 480)]


class RecordingProbe(nn.Module):
    """Stand-in ViT (patch 16) that records every batch it is fed; its CLS token is the crop's
    mean, its only other token the crop's top-left pixel."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1))
        self.patch_embed = nn.Module()
        self.patch_embed.patch_size = (16, 16)
        self.seen = []

    def forward_features(self, images):
        self.seen.append(images.clone())
        return torch.stack([images.mean(dim=(1, 2, 3)), images[:, 0, 0, 0]], dim=1)[:, :, None]


def test_config_default_is_the_seed_windows_on_the_640x512_field():
    assert CONFIG["evaluate"]["crops"] == "seed" and CONFIG["evaluate"]["crop_median"] == "lower"
    field = crops.cached_field(CONFIG["data"]["image_shape"], CONFIG["preprocess"]["resize_factor"])
    assert field == (512, 640)
    windows = crops.evaluation_crops(*field, CONFIG["evaluate"])
    expected = [(y0, x0, y1 - y0, x1 - x0) for x0, y0, x1, y1 in SEED_WINDOWS]
    assert [w.box for w in windows] == expected
    assert not any(w.resized for w in windows)  # native resolution, as the seed
    assert [(w.width, w.height) for w in windows] == [(256, 224), (224, 224)] * 2


def test_model_input_is_the_cached_pixels_over_10000_exactly():
    rng = np.random.default_rng(0)
    # a 512 x 640 cache (resize_factor 0.5 of 1280 x 1024), clipped at 10,000 like the cache
    arrays = [rng.integers(0, CLIP_MAX + 1, size=(3, 512, 640), dtype=np.uint16)]
    probe = RecordingProbe()
    cpu = torch.device("cpu")
    features = extract.extract_features(probe, arrays, CLIP_MAX, SEED, cpu, "none", **LOADER)
    by_shape = {}  # per batch of images, one forward pass per window size
    for batch in probe.seen:
        by_shape.setdefault(tuple(batch.shape[-2:]), []).append(batch)
    assert sorted(by_shape) == [(224, 224), (224, 256)]
    assert all(batch.dtype == torch.float32 for batch in probe.seen)
    for image in range(3):
        batch = image // 2  # batch size 2
        for k, (x0, y0, x1, y1) in enumerate(SEED_WINDOWS):
            # an independent crop by the seed's coordinates, / 10,000 in float32 as albumentations
            expected = arrays[0][image, y0:y1, x0:x1].astype(np.float32) / np.float32(10000)
            shape = (y1 - y0, x1 - x0)
            # within a batch, equal-size positions are concatenated in window order
            position = [p for p, (a, b, c, d) in enumerate(SEED_WINDOWS) if (d - b, c - a) == shape]
            fed = by_shape[shape][batch]
            n_in_batch = len(fed) // len(position)
            row = position.index(k) * n_in_batch + image % 2
            for channel in range(3):  # grey repeated to 3 channels
                np.testing.assert_array_equal(fed[row, channel].numpy(), expected)
    # the feature: the seed's torch.median (lower middle value) over the 4 crops' CLS tokens
    means = torch.tensor(
        [
            [
                arrays[0][i, y0:y1, x0:x1].astype(np.float32).mean() / CLIP_MAX
                for x0, y0, x1, y1 in SEED_WINDOWS
            ]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(features[:, 0], torch.median(means, dim=1).values.numpy(), rtol=1e-5)


def test_crop_median_lower_is_torch_median_and_midpoint_is_numpy():
    values = np.random.default_rng(1).normal(size=(5, 4, 7)).astype(np.float32)
    lower = crops.median_over_crops(values, "lower")
    np.testing.assert_array_equal(
        lower, torch.median(torch.from_numpy(values), dim=1).values.numpy()
    )
    np.testing.assert_array_equal(
        crops.median_over_crops(values, "midpoint"), np.median(values, axis=1)
    )
    assert not np.allclose(lower, np.median(values, axis=1))
    odd = values[:, :3]  # odd counts: both are the middle value
    np.testing.assert_array_equal(crops.median_over_crops(odd, "lower"), np.median(odd, axis=1))
    with pytest.raises(InputError, match="crop_median"):
        crops.median_over_crops(values, "mean")


def test_seed_windows_scale_with_the_field():
    # resize_factor 1.0: every coordinate doubles, sides stay multiples of 16
    full = crops.evaluation_crops(1024, 1280, SEED)
    assert [w.box for w in full] == [
        (2 * y0, 2 * x0, 2 * (y1 - y0), 2 * (x1 - x0)) for x0, y0, x1, y1 in SEED_WINDOWS
    ]
    # the demo's 204 x 256 field (0.398 x 0.4 of 512 x 640): sides rounded to 16 around the
    # scaled centres, inside the field
    height, width = 204, 256
    for window, (x0, y0, x1, y1) in zip(crops.evaluation_crops(height, width, SEED), SEED_WINDOWS):
        sy, sx = height / 512, width / 640
        assert window.height % 16 == 0 and window.width % 16 == 0 and not window.resized
        assert abs(window.height - (y1 - y0) * sy) <= 8 and abs(window.width - (x1 - x0) * sx) <= 8
        assert abs(window.top + window.height / 2 - (y0 + y1) / 2 * sy) <= 1
        assert abs(window.left + window.width / 2 - (x0 + x1) / 2 * sx) <= 1
        assert 0 <= window.top and window.top + window.height <= height
        assert 0 <= window.left and window.left + window.width <= width


def test_grid_mode_is_the_resized_tiles():
    grid = {**SEED, "crops": "grid", "crop_grid": [2, 2], "input_size": 224}
    tiles = crops.evaluation_crops(512, 640, grid)
    assert [t.box for t in tiles] == [
        (0, 0, 256, 320),
        (0, 320, 256, 320),
        (256, 0, 256, 320),
        (256, 320, 256, 320),
    ]
    assert all((t.out_height, t.out_width) == (224, 224) and t.resized for t in tiles)


def test_bad_crop_settings_name_the_key():
    with pytest.raises(InputError, match="'crops': 'tiles' is not one of seed, grid"):
        crops.evaluation_crops(512, 640, {**SEED, "crops": "tiles"})
    with pytest.raises(InputError, match="crops 'grid' needs key"):
        crops.evaluation_crops(512, 640, {"crops": "grid", "input_size": 224})
    outside = {**SEED["seed_windows"], "boxes": [[64, 32, 700, 256]]}
    with pytest.raises(InputError, match=r"'seed_windows.boxes.0': \[64, 32, 700, 256\]"):
        crops.evaluation_crops(512, 640, {**SEED, "seed_windows": outside})
    with pytest.raises(
        InputError, match="window height of 16 pixels does not fit the cached field's 8"
    ):
        crops.evaluation_crops(8, 640, SEED)
    # a window side the ViT's patch does not divide fails before any forward pass
    odd = {**SEED, "seed_windows": {**SEED["seed_windows"], "multiple": 8}}
    cpu = torch.device("cpu")
    arrays = [np.zeros((1, 204, 256), dtype=np.uint16)]
    with pytest.raises(InputError, match="not a multiple of the backbone's 16 x 16 patch"):
        extract.extract_features(RecordingProbe(), arrays, CLIP_MAX, odd, cpu, "none", **LOADER)


def test_config_rejects_windows_that_do_not_fit_the_cached_field():
    bad = json.loads(json.dumps(CONFIG))
    bad["evaluate"]["seed_windows"]["boxes"][1] = [320, 32, 544, 600]
    cfg.check_schema(bad)  # the schema passes; the window check of the start-up check refuses
    with pytest.raises(
        InputError, match=r"config key 'evaluate' \(cached field 640 x 512.*boxes.1"
    ):
        config_check.check(bad, files=False, models=False)
    config_check.evaluation_windows(DEMO)  # the demo's 256 x 204 field takes the scaled windows


def test_rule_settings_carry_only_the_keys_of_the_crop_mode():
    seed = crops.extraction_settings(CONFIG["evaluate"])
    assert set(seed) == {"crops", "seed_windows", "embedding", "crop_median"}
    grid = crops.extraction_settings({**CONFIG["evaluate"], "crops": "grid"})
    assert set(grid) == {"crops", "crop_grid", "input_size", "embedding", "crop_median"}


def test_pixel_scales_of_training_and_evaluation_crops():
    scales = crops.pixel_scales([1024, 1280], 0.5, CONFIG["train"], SEED)
    # RandomResizedCrop of 10-20 % of the 512 x 640 field to 224 px, 2 raw pixels per cached one
    expected_global = [math.sqrt(s * 512 * 640) / 224 * 2 for s in (0.1, 0.2)]
    np.testing.assert_allclose(scales["train_global"], expected_global)
    np.testing.assert_allclose(
        scales["train_local"], [math.sqrt(s * 512 * 640) / 96 * 2 for s in (0.04, 0.08)]
    )
    assert scales["evaluation"] == [2.0, 2.0]  # native windows: one cached pixel per model pixel
    grid = crops.pixel_scales(
        [1024, 1280],
        0.5,
        CONFIG["train"],
        {**SEED, "crops": "grid", "crop_grid": [2, 2], "input_size": 224},
    )
    np.testing.assert_allclose(grid["evaluation"], [256 / 224 * 2, 320 / 224 * 2])
    text = crops.describe_scales(grid)
    assert "training global crops 1.62-2.29" in text and "2.29 (y) / 2.86 (x)" in text
    # resize_factor 1.0: the windows double, so the evaluation scale stays 1 cached pixel =
    # 1 model pixel
    assert crops.pixel_scales([1024, 1280], 1.0, CONFIG["train"], SEED)["evaluation"] == [1.0, 1.0]
