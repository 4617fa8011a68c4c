"""Multi-crop augmentation (workflow_scripts.train.multicrop) and the training loader
(workflow_scripts.train.dataset) on a small cache written here."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from workflow_scripts.config import REPO_DIR
from workflow_scripts.data.crops import resized_crop
from workflow_scripts.errors import InputError
from workflow_scripts.tables import write_table
from workflow_scripts.train import dataset as dataset_module
from workflow_scripts.train.dataset import build_train_loader
from workflow_scripts.train.multicrop import CropSpec, MultiCrop, sample_boxes

CHANNELS = ["DAPI", "Tubulin", "Actin"]
HEIGHT, WIDTH = 128, 160
CLIP_MAX = 10000
CONTROL_ROWS = (1, 6)  # DMSO rows of the test cache
SETTINGS = {
    "batch_size_per_gpu": 4,
    "num_workers": 0,
    "seed": 0,
    "global_crops": {"number": 2, "size": 32, "scale": [0.1, 0.2]},
    "local_crops": {"number": 3, "size": 16, "scale": [0.04, 0.08]},
    "interpolation": "bicubic",
    "hflip_p": 0.5,
    "vflip_p": 0.5,
    "images": "all",  # the 10 rows; treated-only is tested on its own
}


def noisy_field(rng: np.random.Generator, level: int) -> np.ndarray:
    """Blocky texture around `level` with sharp edges (so bicubic overshoots), clipped like the
    cache."""
    blocks = rng.integers(0, 2 * level, size=(HEIGHT // 8, WIDTH // 8))
    field = np.kron(blocks, np.ones((8, 8))) + rng.normal(0, 300, size=(HEIGHT, WIDTH))
    return np.clip(field, 0, CLIP_MAX).astype(np.uint16)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Cache of 10 images; channel c has mean intensity ~ (c + 1) * 1500 to tell channels apart."""
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    n_images = 10
    for c, name in enumerate(CHANNELS):
        stack = np.stack([noisy_field(rng, (c + 1) * 1500) for _ in range(n_images)])
        np.save(root / f"{name}.npy", stack)
    table = pd.DataFrame(
        {
            "image_id": [f"P1/A{i:02d}/s1" for i in range(n_images)],
            "is_control": [i in CONTROL_ROWS for i in range(n_images)],
        }
    )
    write_table(table, root / "images.parquet")
    meta = {
        "n_images": n_images,
        "height": HEIGHT,
        "width": WIDTH,
        "channels": CHANNELS,
        "clip_max": CLIP_MAX,
        "resize_factor": 1.0,
        "illumination_correction": False,
        "settings_digest": "test",
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def field(cache_dir, channel="DAPI", index=0) -> np.ndarray:
    return np.load(cache_dir / f"{channel}.npy", mmap_mode="r")[index]


# ------------------------------------------------------------------ box sampling


@pytest.mark.parametrize("ratio", [(1, 1), (3 / 4, 4 / 3)])
@pytest.mark.parametrize("scale", [(0.1, 0.2), (0.04, 0.08)])
def test_boxes_lie_inside_the_image_with_area_and_aspect_in_range(scale, ratio):
    boxes = sample_boxes(np.random.default_rng(1), (HEIGHT, WIDTH), scale, ratio, 20000)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= HEIGHT).all() and (left + w <= WIDTH).all()
    # every position is reachable, the far edges included (albumentations' inclusive range)
    assert (top == 0).any() and (left == 0).any()
    assert (top + h == HEIGHT).any() and (left + w == WIDTH).any()
    # sides are rounded to whole pixels: allow half a pixel on each side
    area = (h * w) / (HEIGHT * WIDTH)
    slack_lo, slack_hi = (h - 0.5) * (w - 0.5) / (h * w), (h + 0.5) * (w + 0.5) / (h * w)
    assert (area * slack_lo <= scale[1]).all() and (area * slack_hi >= scale[0]).all()
    aspect = w / h
    assert (aspect >= ratio[0] * (w - 0.5) / w * h / (h + 0.5)).all()
    assert (aspect <= ratio[1] * (w + 0.5) / w * h / (h - 0.5)).all()
    # the whole range is used, not a corner of it
    assert area.min() < scale[0] + 0.1 * (scale[1] - scale[0])
    assert area.max() > scale[1] - 0.1 * (scale[1] - scale[0])


@pytest.mark.parametrize("ratio", [(1, 1), (3 / 4, 4 / 3)])
def test_box_distribution_matches_albumentations(ratio):
    n = 4000
    ours = sample_boxes(np.random.default_rng(2), (HEIGHT, WIDTH), (0.1, 0.2), ratio, n)
    reference = A.RandomResizedCrop(size=(32, 32), scale=(0.1, 0.2), ratio=ratio)
    reference.set_random_seed(3)
    coords = np.array(
        [
            reference.get_params_dependent_on_data({"shape": (HEIGHT, WIDTH)}, {})["crop_coords"]
            for _ in range(n)
        ]
    )
    x0, y0, x1, y1 = coords.T
    theirs = np.stack([y0, x0, y1 - y0, x1 - x0], axis=1)
    for column in range(4):  # top, left, height, width
        assert stats.ks_2samp(ours[:, column], theirs[:, column]).pvalue > 1e-3
    assert stats.ks_2samp(ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]).pvalue > 1e-3
    if ratio == (1, 1):  # the seed's square boxes
        assert (ours[:, 2] == ours[:, 3]).all() and (theirs[:, 2] == theirs[:, 3]).all()


def test_default_crops_are_the_seeds_square_boxes():
    """config.yaml's recipe: ratio [1, 1] for both crop sets, so no box is stretched."""
    from workflow_scripts import config as config_module

    config = config_module.load([REPO_DIR / "config.yaml"])
    settings = config_module.train_settings(config, config_module.architecture_names(config)[0])
    transform = MultiCrop.from_settings(settings, clip_max=CLIP_MAX)
    assert [spec.ratio for spec in transform.specs] == [(1.0, 1.0), (1.0, 1.0)]
    assert not transform.clamp
    params = transform.sample(np.random.default_rng(0), (512, 640))
    assert (params.boxes[:, 2] == params.boxes[:, 3]).all()


def test_box_falls_back_to_albumentations_centre_crop_when_nothing_fits():
    # a 32x256 strip: no box of >= 90 % of the area with aspect <= 4/3 fits its height
    shape, scale = (32, 256), (0.9, 1.0)
    ours = sample_boxes(np.random.default_rng(0), shape, scale, (3 / 4, 4 / 3), 5)
    reference = A.RandomResizedCrop(size=(32, 32), scale=scale)
    x0, y0, x1, y1 = reference.get_params_dependent_on_data({"shape": shape}, {})["crop_coords"]
    assert (ours == [y0, x0, y1 - y0, x1 - x0]).all()


# ------------------------------------------------------------------ one crop


def seed_crop(image: np.ndarray, box, size: int) -> np.ndarray:
    """The seed's order: Normalize the whole field (float32), then crop and bicubic-resize."""
    top, left, h, w = box
    seed_float = A.Normalize(mean=0, std=1, max_pixel_value=CLIP_MAX)(image=image)["image"]
    crop_and_resize = A.Compose(
        [A.Crop(left, top, left + w, top + h), A.Resize(size, size, interpolation=cv2.INTER_CUBIC)]
    )
    return crop_and_resize(image=seed_float)["image"]


def test_resized_crop_matches_albumentations_on_the_seed_float_image(cache_dir):
    image = np.asarray(field(cache_dir))
    box = (20, 30, 50, 60)
    reference = seed_crop(image, box, 40)
    assert reference.min() < 0 or reference.max() > 1  # the seed let cubic overshoot through
    ours = resized_crop([image], box, 40, clip_max=CLIP_MAX, clamp=False)
    assert ours.shape == (3, 40, 40) and ours.dtype == torch.float32
    # default: the seed's values, overshoot included, to float32 rounding
    assert np.abs(ours[0].numpy() - reference).max() < 1e-6
    clamped = resized_crop([image], box, 40, clip_max=CLIP_MAX, clamp=True)
    # clamp_crops: equal up to the clamp to [0, 1] and uint16 rounding (0.5 count)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert np.abs(clamped[0].numpy() - np.clip(reference, 0, 1)).max() < 1e-4


def test_flipping_the_crop_equals_the_seeds_flip_of_the_field_at_the_mirrored_box(cache_dir):
    """The seed flips the field, then crops; we crop, then flip. A box and its mirror image are
    equally likely (uniform start), so both orders give the same distribution of crops."""
    image = np.asarray(field(cache_dir))
    top, left, h, w = 17, 41, 48, 48
    ours = resized_crop(
        [image], (top, left, h, w), 24, clip_max=CLIP_MAX, hflip=True, vflip=True, clamp=False
    )
    mirrored = (HEIGHT - top - h, WIDTH - left - w, h, w)
    reference = seed_crop(np.ascontiguousarray(image[::-1, ::-1]), mirrored, 24)
    assert np.abs(ours[0].numpy() - reference).max() < 1e-6
    # the start distribution is symmetric: P(top) = P(H - h - top)
    boxes = sample_boxes(np.random.default_rng(5), (HEIGHT, WIDTH), (0.1, 0.2), (1, 1), 40000)
    starts, mirrored_starts = boxes[:, 0], HEIGHT - boxes[:, 2] - boxes[:, 0]
    assert stats.ks_2samp(starts, mirrored_starts).pvalue > 1e-3


def test_flips_are_the_flipped_unflipped_crop(cache_dir):
    image = field(cache_dir)
    box = (10, 12, 40, 50)
    plain = resized_crop([image], box, 24, clip_max=CLIP_MAX)
    h = resized_crop([image], box, 24, clip_max=CLIP_MAX, hflip=True)
    v = resized_crop([image], box, 24, clip_max=CLIP_MAX, vflip=True)
    hv = resized_crop([image], box, 24, clip_max=CLIP_MAX, hflip=True, vflip=True)
    assert not torch.equal(plain, h)
    assert torch.equal(h, plain.flip(-1))
    assert torch.equal(v, plain.flip(-2))
    assert torch.equal(hv, plain.flip(-1, -2))


# ------------------------------------------------------------------ multi-crop of a view


def multicrop(**overrides) -> MultiCrop:
    return MultiCrop.from_settings({**SETTINGS, **overrides}, clip_max=CLIP_MAX)


@pytest.mark.parametrize("clamp", [False, True])
def test_multicrop_counts_shapes_dtype_and_range(cache_dir, clamp):
    crops = multicrop(clamp_crops=clamp)([field(cache_dir)], np.random.default_rng(0))
    assert [tuple(c.shape) for c in crops] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    for crop in crops:
        assert crop.dtype == torch.float32
        low, high = (0, 1) if clamp else (-0.25, 1.25)  # bicubic overshoot of the seed's order
        assert crop.min() >= low and crop.max() <= high and crop.max() > 0
        assert torch.equal(crop[0], crop[1]) and torch.equal(crop[0], crop[2])  # grey -> 3
    overshoot = [float(c.min()) < 0 or float(c.max()) > 1 for c in crops]
    assert not any(overshoot) if clamp else any(overshoot)


@pytest.mark.parametrize("hflip_p, vflip_p", [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0)])
def test_flip_probabilities(hflip_p, vflip_p):
    transform = multicrop(hflip_p=hflip_p, vflip_p=vflip_p)
    rng = np.random.default_rng(0)
    draws = [transform.sample(rng, (HEIGHT, WIDTH)) for _ in range(400)]
    hflips = np.concatenate([d.hflips for d in draws])
    vflips = np.concatenate([d.vflips for d in draws])
    assert abs(hflips.mean() - hflip_p) < 0.05 and abs(vflips.mean() - vflip_p) < 0.05
    if hflip_p == vflip_p == 0.5:  # independent: all four combinations occur
        assert len({(h, v) for h, v in zip(hflips, vflips)}) == 4


def test_views_use_their_own_scale_ranges():
    params = multicrop().sample(np.random.default_rng(0), (HEIGHT, WIDTH))
    areas = params.boxes[:, 2] * params.boxes[:, 3] / (HEIGHT * WIDTH)
    assert params.sizes == (32, 32, 16, 16, 16)
    assert (areas[:2] > 0.09).all() and (areas[2:] < 0.09).all()


def test_crop_spec_reads_settings():
    spec = CropSpec.from_settings({"number": 8, "size": 96, "scale": [0.04, 0.08]})
    assert spec == CropSpec(8, 96, (0.04, 0.08), (1.0, 1.0))  # absent ratio: the seed's
    spec = CropSpec.from_settings(
        {"number": 8, "size": 96, "scale": [0.04, 0.08], "ratio": [0.75, 1.25]}
    )
    assert spec.ratio == (0.75, 1.25)


def test_unknown_interpolation_is_an_input_error():
    with pytest.raises(InputError, match="train.interpolation"):
        multicrop(interpolation="lanczos")


# ------------------------------------------------------------------ dataset and loader


def loader(cache_dir, channel="DAPI", **kwargs):
    options = {"rank": 0, "world_size": 1, "seed": 0, "device_type": "cpu"}
    settings = {**SETTINGS, **kwargs.pop("settings", {})}
    return build_train_loader(str(cache_dir), channel, settings, **{**options, **kwargs})


def test_crops_are_reproducible_and_keyed_on_seed_epoch_and_index(cache_dir):
    dataset = loader(cache_dir)[0].dataset
    first = dataset[(0, 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, dataset[(0, 3)]))
    again = loader(cache_dir)[0].dataset[(0, 3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (dataset[(1, 3)], dataset[(0, 4)], loader(cache_dir, seed=1)[0].dataset[(0, 3)]):
        assert not torch.equal(first[0], other[0])


def test_rgb_stacks_the_cache_channels_in_meta_order(cache_dir):
    rgb = loader(cache_dir, channel="rgb")[0].dataset[(0, 2)]
    means = [float(rgb[0][c].mean()) for c in range(3)]
    assert means[0] < means[1] < means[2]  # DAPI, Tubulin, Actin levels 1500 < 3000 < 4500
    # same key -> same boxes and flips: each rgb plane is that channel's grey crop
    for c, name in enumerate(CHANNELS):
        grey = loader(cache_dir, channel=name)[0].dataset[(0, 2)]
        assert all(torch.equal(r[c], g[0]) for r, g in zip(rgb, grey))


def test_sampler_shards_disjoint_equal_and_reshuffles_per_epoch(cache_dir):
    shards = []
    for rank in range(3):  # 10 images over 3 ranks: 3 each, one dropped
        loader_, sampler = loader(
            cache_dir, rank=rank, world_size=3, settings={"batch_size_per_gpu": 1}
        )
        sampler.set_epoch(0)
        keys = list(sampler)
        assert {epoch for epoch, _ in keys} == {0}
        shards.append({index for _, index in keys})
        assert len(keys) == 3 and len(loader_) == 3
    assert set.union(*shards) <= set(range(10)) and len(set.union(*shards)) == 9
    epoch_orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert {e for e, _ in keys} == {epoch}
        epoch_orders.append(tuple(i for _, i in keys))
    assert len(set(epoch_orders)) > 1


def test_loader_batches_follow_the_contract(cache_dir):
    loader_, sampler = loader(cache_dir)
    assert len(loader_) == 10 // 4  # drop_last
    sampler.set_epoch(0)
    batches = list(loader_)
    assert len(batches) == len(loader_)
    for batch in batches:
        assert [tuple(t.shape) for t in batch] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 3
        assert all(t.dtype == torch.float32 and -0.25 <= t.min() and t.max() <= 1.25 for t in batch)


@pytest.mark.parametrize(
    "images, rows", [("treated", [0, 2, 3, 4, 5, 7, 8, 9]), ("all", list(range(10)))]
)
def test_training_images_treated_by_default_or_all(cache_dir, images, rows):
    settings = {**SETTINGS, "batch_size_per_gpu": 1}
    if images == "treated":
        del settings["images"]  # absent key: the seed's treated images
    loader_, sampler = build_train_loader(
        str(cache_dir), "DAPI", settings, rank=0, world_size=1, seed=0, device_type="cpu"
    )
    sampler.set_epoch(0)
    assert sorted(int(loader_.dataset.rows[i]) for _, i in sampler) == rows
    # an image's crops are keyed on its cache row, whatever the row set
    every = loader(cache_dir, settings={"images": "all"})[0].dataset
    position = rows.index(5)
    assert all(torch.equal(a, b) for a, b in zip(loader_.dataset[(0, position)], every[(0, 5)]))


def test_treated_images_need_the_is_control_column(cache_dir, tmp_path):
    broken = tmp_path / "cache"
    broken.mkdir()
    for path in cache_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    write_table(
        pd.DataFrame({"image_id": [f"P1/A{i:02d}/s1" for i in range(10)]}),
        broken / "images.parquet",
    )
    with pytest.raises(InputError, match="no is_control column"):
        loader(broken, settings={"images": "treated"})
    with pytest.raises(InputError, match="train.images"):
        loader(cache_dir, settings={"images": "dmso"})


def test_worker_processes_produce_the_same_batches(cache_dir):
    def epoch_batches(workers):
        loader_, sampler = loader(cache_dir, settings={"num_workers": workers})
        sampler.set_epoch(2)
        return list(loader_)

    for a, b in zip(epoch_batches(0), epoch_batches(2), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_dataset_pickles_file_names_not_pixels(cache_dir):
    dataset = loader(cache_dir, channel="rgb")[0].dataset
    blob = pickle.dumps(dataset)  # what a spawned worker receives
    assert len(blob) < 10_000  # the three arrays are 1.2 MB
    copy = pickle.loads(blob)
    assert all(torch.equal(a, b) for a, b in zip(dataset[(1, 5)], copy[(1, 5)]))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: (d / "Tubulin.npy").unlink(), "Tubulin.npy: not found"),
        (
            lambda d: np.save(d / "Tubulin.npy", np.zeros((10, 8, 8), np.uint16)),
            "Tubulin.npy: uint16 array of shape",
        ),
        (lambda d: (d / "meta.json").write_text("{}"), "missing key"),
    ],
)
def test_broken_cache_is_an_input_error(cache_dir, tmp_path, change, message):
    broken = tmp_path / "cache"
    broken.mkdir()
    for path in cache_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    change(broken)
    with pytest.raises(InputError, match=message):
        loader(broken, channel="rgb")


def test_bad_channel_and_oversized_batch_are_input_errors(cache_dir):
    with pytest.raises(InputError, match="GFP not in the cache"):
        loader(cache_dir, channel="GFP")
    with pytest.raises(InputError, match="batch_size_per_gpu"):
        loader(cache_dir, world_size=2, settings={"batch_size_per_gpu": 6})


def test_preview_cli_writes_a_png_and_rejects_bad_input(cache_dir, tmp_path):
    out = tmp_path / "crops.png"
    demo = [str(REPO_DIR / "config.yaml"), str(REPO_DIR / "config" / "demo.yaml")]
    args = ["--cache-dir", str(cache_dir), "--index", "1", "--out", str(out)]
    for path in demo:
        args += ["--config", path]
    assert dataset_module.main(args + ["--channel", "rgb"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out.unlink()
    assert dataset_module.main(args + ["--channel", "GFP"]) == 2
    assert dataset_module.main(args + ["--channel", "DAPI", "--index", "10"]) == 2
    assert not out.exists()


def test_datapath_benchmark_quick_mode_runs(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(REPO_DIR / "benchmarks" / "bench_datapath.py"),
            "--quick",
            "--json",
            str(out),
            "--tmpdir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    results = json.loads(out.read_text())
    rows = {
        (r["path"].split()[0], r["channel"], r["resize_factor"]): r for r in results["single_core"]
    }
    assert set(rows) == {
        (p, c, f)
        for c in ("DAPI", "rgb")
        for p, f in (("seed", 1.0), ("workflow", 1.0), ("workflow", 0.5))
    }
    assert all(r["samples_per_s"] > 0 for r in results["single_core"] + results["loader"])
    assert rows[("seed", "DAPI", 1.0)]["ratio"] == 1.0
    assert list(tmp_path.iterdir()) == [out]  # the generated TIFFs and caches are removed
