"""Illumination correction and the image cache."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from tiff_factory import CHANNELS, WELLS, make_dataset, write_tiff

from workflow_scripts.config import digest
from workflow_scripts.data import cache
from workflow_scripts.data.illumination import IlluminationSettings, illumination_function
from workflow_scripts.errors import InputError
from workflow_scripts.tables import path_column

REPO = Path(__file__).resolve().parents[1]
FLAT_SHAPE = (48, 64)


def settings(
    correction: bool = False, resize: float = 1.0, clip_max: float = 65535, **illumination
) -> dict:
    return {
        "illumination_correction": correction,
        "illumination": {
            "statistic": "median",
            "smoothing_sigma": 2,
            "robust_floor_quantile": 0.0,
            **illumination,
        },
        "resize_factor": resize,
        "clip_max": clip_max,
    }


def gradient(plate: str, channel: str) -> np.ndarray:
    """A smooth vignetting field, different per plate and channel (range ~0.4 to ~1.6)."""
    y, x = np.mgrid[0 : FLAT_SHAPE[0], 0 : FLAT_SHAPE[1]].astype(np.float64)
    direction = 1 if sum(map(ord, plate + channel)) % 2 else -1
    ramp = direction * (x / FLAT_SHAPE[1] - 0.5)
    return 1.0 + ramp + 0.2 * (y / FLAT_SHAPE[0] - 0.5) * (1 + CHANNELS.index(channel))


def cells_under_gradient(plate, well, site, channel, rng):
    """Background 1000 with sparse bright 'cells' at random places, times the plate's field."""
    pattern = np.full(FLAT_SHAPE, 1000.0)
    for _ in range(4):
        y, x = rng.integers(0, FLAT_SHAPE[0] - 6), rng.integers(0, FLAT_SHAPE[1] - 6)
        pattern[y : y + 6, x : x + 6] += 3000
    return np.rint(pattern * gradient(plate, channel)).astype(np.uint16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    table = make_dataset(folder / "images")
    table.to_parquet(folder / "images.parquet", index=False)
    return folder / "images.parquet", table


@pytest.fixture(scope="module")
def vignetted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vignetted")
    # 8 wells x 2 sites: enough images per plate that the per-pixel median is background
    wells = {**WELLS, **{f"F{10 + i}": spec for i, spec in enumerate(WELLS.values())}}
    table = make_dataset(folder / "images", pixels=cells_under_gradient, wells=wells)
    table.to_parquet(folder / "images.parquet", index=False)
    return folder / "images.parquet", table


def raw_image(table, row: int, channel: str) -> np.ndarray:
    return tifffile.imread(table.loc[row, path_column(channel)])


def unevenness(image: np.ndarray) -> float:
    """Ratio of the brightest to the darkest background (median) of the image's column quarters."""
    quarters = [np.median(q) for q in np.array_split(image, 4, axis=1)]
    return max(quarters) / min(quarters)


def test_flat_field_is_recovered_per_plate_and_channel(vignetted, tmp_path):
    table_path, table = vignetted
    out = tmp_path / "cache"
    meta = cache.build_cache(table_path, CHANNELS, settings(correction=True), out, workers=2)
    _, arrays, _ = cache.load_cache(out, CHANNELS)
    interior = (slice(4, -4), slice(4, -4))  # smoothing leaves the border slightly off
    for plate, rows in table.groupby("plate").indices.items():
        for ch in CHANNELS:
            function = np.load(out / "illumination" / f"{plate}_{ch}.npy")
            assert function.dtype == np.float32 and function.shape == FLAT_SHAPE
            assert function.mean() == pytest.approx(1.0, abs=1e-5)
            field = gradient(plate, ch)
            np.testing.assert_allclose(
                function[interior], (field / field.mean())[interior], rtol=0.03
            )
            for row in rows:
                background = np.asarray(arrays[ch][row], dtype=float)
                raw = raw_image(table, row, ch).astype(float)
                # the background is flat after correction, not before
                assert unevenness(raw) > 1.5
                assert unevenness(background) < 1.04
    assert meta["illumination_correction"] is True
    assert len(list((out / "illumination").iterdir())) == table["plate"].nunique() * len(CHANNELS)


def test_median_ignores_an_outlier_image_that_the_mean_follows():
    field = gradient("Week1_1", "DAPI")
    images = np.stack([np.rint(1000 * field)] * 5).astype(np.uint16)
    images[0, 10:20, 10:20] = 60000  # one image with a huge bright object
    median = illumination_function(images, IlluminationSettings("median", 0, 0.0))
    mean = illumination_function(images, IlluminationSettings("mean", 0, 0.0))
    expected = field / field.mean()
    np.testing.assert_allclose(median, expected, rtol=2e-3)
    assert np.all(mean[10:20, 10:20] > 2 * expected[10:20, 10:20])
    np.testing.assert_allclose(mean.mean(), 1.0, rtol=1e-5)


def test_floor_keeps_dark_corners_from_blowing_up():
    images = np.full((3, 20, 20), 1000, np.uint16)
    images[:, :3, :3] = 0  # 9 of 400 pixels are dark: more than a 2% quantile
    with pytest.raises(ValueError, match="zero on more than a fraction 0.02"):
        illumination_function(images, IlluminationSettings("median", 0, 0.02))
    function = illumination_function(images, IlluminationSettings("median", 0, 0.05))
    assert function.min() == pytest.approx(
        function.max()
    )  # the corner is floored to the background


def test_row_order_dtype_and_values_without_correction(dataset, tmp_path):
    table_path, table = dataset
    out = tmp_path / "cache"
    cache.build_cache(table_path, ["Tubulin", "DAPI"], settings(), out, workers=3)
    cached_table, arrays, meta = cache.load_cache(out, ["DAPI", "Tubulin"])
    assert cached_table.equals(table)
    for ch in ("DAPI", "Tubulin"):
        assert arrays[ch].dtype == np.uint16 and arrays[ch].shape == (len(table), 24, 32)
        for row in range(len(table)):
            np.testing.assert_array_equal(arrays[ch][row], raw_image(table, row, ch))
    assert not (out / "Actin.npy").exists() and not (out / "illumination").exists()
    assert meta == {
        "n_images": len(table),
        "height": 24,
        "width": 32,
        "channels": ["Tubulin", "DAPI"],
        "clip_max": 65535.0,
        "resize_factor": 1.0,
        "illumination_correction": False,
        "settings_digest": digest(settings()),
        "content_digest": {ch: pixel_digest(arrays[ch]) for ch in ("Tubulin", "DAPI")},
    }


def pixel_digest(array: np.ndarray) -> str:
    """Independent of cache.py: sha256 over the sha256 of each image's bytes, row by row."""
    rows = b"".join(hashlib.sha256(np.asarray(image).tobytes()).digest() for image in array)
    return hashlib.sha256(rows).hexdigest()


def test_content_digest_follows_the_pixels_and_the_writers_agree(dataset, tmp_path):
    table_path, table = dataset
    meta = cache.build_cache(table_path, CHANNELS, settings(), tmp_path / "built", workers=3)
    _, arrays, _ = cache.load_cache(tmp_path / "built", CHANNELS)
    assert meta["content_digest"] == {ch: pixel_digest(arrays[ch]) for ch in CHANNELS}
    # the writer for ready-made arrays (tests, benchmarks) records the same digest
    copy = cache.write_arrays(
        tmp_path / "copy", table, {ch: np.array(arrays[ch]) for ch in CHANNELS}, clip_max=65535
    )
    assert json.loads((copy / "meta.json").read_text())["content_digest"] == meta["content_digest"]
    changed = np.array(arrays["DAPI"])
    changed[-1, -1, -1] ^= 1  # one bit of one pixel
    other = cache.write_arrays(tmp_path / "changed", table, {"DAPI": changed}, clip_max=65535)
    assert (
        json.loads((other / "meta.json").read_text())["content_digest"]["DAPI"]
        != (meta["content_digest"]["DAPI"])
    )


def test_replaced_raw_images_of_the_same_size_give_another_resume_key(tmp_path):
    """Issue 23, case 1: new pixels under the same names and sizes must never resume training
    on the old state (the key covered settings, size and order, not the pixels)."""
    from workflow_scripts.train.resume_key import resume_key

    table = make_dataset(tmp_path / "images")
    table.to_parquet(tmp_path / "images.parquet", index=False)

    def build_and_key() -> str:
        cache.build_cache(tmp_path / "images.parquet", ["DAPI"], settings(), tmp_path / "cache")
        return resume_key(
            arch="vit_small_patch16_dinov3.lvd1689m",
            channel="DAPI",
            settings={"epochs": 4},
            model_kwargs={},
            weights="none",
            cache_dir=tmp_path / "cache",
        )

    first = build_and_key()
    assert build_and_key() == first  # rebuilt from the same pixels: the state may be continued
    rng = np.random.default_rng(1)
    for path in table[path_column("DAPI")]:
        old = tifffile.imread(path)
        write_tiff(Path(path), rng.integers(100, 3000, size=old.shape, dtype=np.uint16))
    assert build_and_key() != first


@pytest.mark.parametrize("factor, shape", [(0.5, (12, 16)), (0.3, (7, 10))])
def test_resize_shape(dataset, tmp_path, factor, shape):
    table_path, table = dataset
    meta = cache.build_cache(table_path, ["Actin"], settings(resize=factor), tmp_path / "cache")
    _, arrays, _ = cache.load_cache(tmp_path / "cache", ["Actin"])
    assert arrays["Actin"].shape == (len(table), *shape)
    assert (meta["height"], meta["width"]) == shape


def test_half_size_is_the_mean_of_2x2_blocks(dataset, tmp_path):
    table_path, table = dataset
    cache.build_cache(table_path, ["DAPI"], settings(resize=0.5), tmp_path / "cache")
    _, arrays, _ = cache.load_cache(tmp_path / "cache", ["DAPI"])
    raw = raw_image(table, 3, "DAPI").astype(np.float64)
    blocks = raw.reshape(12, 2, 16, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(arrays["DAPI"][3], blocks, atol=0.51)


def test_clipping(dataset, tmp_path):
    table_path, table = dataset
    cache.build_cache(table_path, ["Actin"], settings(clip_max=1500), tmp_path / "cache")
    _, arrays, meta = cache.load_cache(tmp_path / "cache", ["Actin"])
    raw = np.stack([raw_image(table, row, "Actin") for row in range(len(table))])
    np.testing.assert_array_equal(arrays["Actin"], np.minimum(raw, 1500))
    assert arrays["Actin"].max() == 1500 and meta["clip_max"] == 1500


def test_cache_is_read_only_memory_map(dataset, tmp_path):
    table_path, _ = dataset
    cache.build_cache(table_path, ["DAPI"], settings(), tmp_path / "cache")
    _, arrays, _ = cache.load_cache(tmp_path / "cache", ["DAPI"])
    assert isinstance(arrays["DAPI"], np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        arrays["DAPI"][0, 0, 0] = 1


def test_load_cache_errors(dataset, tmp_path):
    table_path, table = dataset
    out = tmp_path / "cache"
    with pytest.raises(InputError, match=r"meta.json: not found; build the cache first"):
        cache.load_cache(out, ["DAPI"])
    cache.build_cache(table_path, ["DAPI", "Actin"], settings(), out)
    with pytest.raises(
        InputError, match=r"channel\(s\) Tubulin not in the cache \(it has DAPI, Actin\)"
    ):
        cache.load_cache(out, ["Tubulin"])
    np.save(out / "Actin.npy", np.zeros((len(table), 24, 31), np.uint16))
    with pytest.raises(
        InputError,
        match=r"Actin.npy: uint16 array of shape \(24, 24, 31\), but \S+ describes "
        r"uint16 of shape \(24, 24, 32\); rebuild the cache",
    ):
        cache.load_cache(out, ["DAPI", "Actin"])
    (out / "DAPI.npy").unlink()
    with pytest.raises(InputError, match=r"DAPI.npy: not found \(channel DAPI of the cache\)"):
        cache.load_cache(out, ["DAPI"])


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"clip_max": None}, r"key 'preprocess.clip_max' is missing"),
        (
            {"clip_max": 70000},
            r"preprocess.clip_max' must be in \(0, 65535\] \(the cache is uint16\), not 70000",
        ),
        ({"resize_factor": 2}, r"'preprocess.resize_factor' must be in \(0, 1\], not 2"),
        (
            {
                "illumination": {
                    "statistic": "mode",
                    "smoothing_sigma": 1,
                    "robust_floor_quantile": 0,
                }
            },
            r"'preprocess.illumination': statistic must be one of mean, median, not 'mode'",
        ),
        (
            {"illumination": {"statistic": "mean"}},
            r"key 'preprocess.illumination.smoothing_sigma' is missing",
        ),
    ],
)
def test_bad_settings(dataset, tmp_path, bad, message):
    values = {**settings(correction=True), **bad}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(InputError, match=message):
        cache.build_cache(dataset[0], ["DAPI"], values, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unreadable_tiff_leaves_no_partial_cache(dataset, tmp_path):
    _, table = dataset
    table = table.copy()
    last = len(table) - 1  # the last plate: earlier plates are already in the arrays when it fails
    broken = tmp_path / "broken.tif"
    write_tiff(broken, np.ones((24, 32), np.uint16))
    broken.write_bytes(broken.read_bytes()[:-200])
    table.loc[last, "path_Tubulin"] = str(broken)
    table_path = tmp_path / "images.parquet"
    table.to_parquet(table_path, index=False)
    out = tmp_path / "work" / "cache"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow_scripts.data.cache",
            "--table",
            str(table_path),
            "--channels",
            *CHANNELS,
            "--settings",
            json.dumps(settings(correction=True)),
            "--workers",
            "2",
            "--out-dir",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"error: {table_path}: row {last} (image_id {table.loc[last, 'image_id']}), "
        "column 'path_Tubulin': "
        f"{broken} cannot be read ("
    )
    assert list((tmp_path / "work").iterdir()) == []  # neither the cache nor its temporary folder


def test_image_of_another_size_is_named(dataset, tmp_path):
    _, table = dataset
    table = table.copy()
    table.loc[5, "path_DAPI"] = str(
        write_tiff(tmp_path / "small.tif", np.ones((20, 32), np.uint16))
    )
    table.to_parquet(tmp_path / "images.parquet", index=False)
    message = (
        rf"row 5 \(image_id {table.loc[5, 'image_id']}\), column 'path_DAPI': "
        r"\S+small.tif is a uint16 "
        r"image of shape \(20, 32\), expected uint16 of shape \(24, 32\)"
    )
    with pytest.raises(InputError, match=message):
        cache.build_cache(tmp_path / "images.parquet", ["DAPI"], settings(), tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------ issue #11: full disk
def test_too_little_free_space_is_one_error_naming_folder_and_bytes(dataset, tmp_path, monkeypatch):
    from workflow_scripts import disk_space

    table_path, table = dataset
    needed = len(table) * 24 * 32 * 2 * 2  # two uint16 channels
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: needed - 1)
    out = tmp_path / "cache"
    with pytest.raises(
        InputError,
        match=rf"{tmp_path}: not enough free disk space for the image "
        rf"cache \(2 arrays\): needs {needed} bytes",
    ):
        cache.build_cache(table_path, ["DAPI", "Actin"], settings(), out, workers=1)
    assert list(tmp_path.iterdir()) == []  # no cache, no temp folder
    monkeypatch.setattr(disk_space, "free_bytes", lambda directory: needed)
    cache.build_cache(table_path, ["DAPI", "Actin"], settings(), out, workers=1)
    assert (out / "meta.json").is_file()


def test_a_disk_filling_up_during_the_build_is_an_error_not_a_sigbus(
    dataset, tmp_path, monkeypatch
):
    import errno
    import os

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    table_path, table = dataset
    with pytest.raises(InputError, match=r"DAPI\.npy: no space left on device: needs \d+ bytes"):
        cache.build_cache(table_path, ["DAPI"], settings(), tmp_path / "cache", workers=1)
    assert list(tmp_path.iterdir()) == []


def test_temp_folder_of_a_killed_build_is_removed(dataset, tmp_path):
    table_path, _ = dataset
    stale = tmp_path / ".cache.k1lled00.tmp"  # as mkdtemp names them
    (stale / "illumination").mkdir(parents=True)
    (stale / "DAPI.npy").write_bytes(b"\0" * 1000)
    unrelated = tmp_path / ".cache_other.k1lled00.tmp"
    unrelated.mkdir()
    cache.build_cache(table_path, ["DAPI"], settings(), tmp_path / "cache", workers=1)
    assert not stale.exists() and unrelated.exists()


def test_array_files_write_rows_and_whole_arrays_as_numpy_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 65535, (5, 6, 7), dtype=np.uint16)
    arrays = cache.new_arrays(tmp_path, ["DAPI", "Actin"], 5, (6, 7))
    for i in (4, 0, 2):  # rows in any order; row -1 is the last
        arrays["DAPI"][i] = rows[i]
    arrays["DAPI"][-4] = rows[1]
    arrays["Actin"][:] = rows[::-1]
    with pytest.raises(IndexError):
        arrays["DAPI"][5] = rows[0]
    with pytest.raises(ValueError, match=r"expected shape \(6, 7\)"):
        arrays["DAPI"][0] = rows[0, :5]
    for array in arrays.values():
        array.close(sync=True)
    dapi = np.load(tmp_path / "DAPI.npy")
    expected = rows.copy()
    expected[3] = 0  # never written: the file's zeros
    np.testing.assert_array_equal(dapi, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "Actin.npy"), rows[::-1])


PEAK_MEMORY = """
import json, resource, sys
from workflow_scripts.data.cache import build_cache
build_cache(sys.argv[1], ["DAPI"], json.loads(sys.argv[2]), sys.argv[3], workers=2)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_cache_build_memory_is_bounded_by_a_plate_not_by_the_cache(tmp_path):
    """Three times the plates (each of 30 fields of 512 x 640) add 197 MB of cache; the build's
    peak resident memory (file pages of a memory map included) must not follow them."""
    shape = (512, 640)
    rng = np.random.default_rng(0)
    files = []
    for i in range(30):  # one plate's worth of distinct fields, reused by every plate
        files.append(tmp_path / f"f{i}.tif")
        write_tiff(files[-1], rng.integers(900, 1100, shape, dtype=np.uint16))
    peaks = {}
    for n_plates in (5, 15):
        rows = [
            {"image_id": f"P{p}/{i}", "plate": f"P{p}", "path_DAPI": str(files[i])}
            for p in range(n_plates)
            for i in range(len(files))
        ]
        table_path = tmp_path / f"table{n_plates}.parquet"
        pd.DataFrame(rows).to_parquet(table_path, index=False)
        out = subprocess.run(
            [sys.executable, "-c", PEAK_MEMORY, str(table_path), json.dumps(settings(True)),
             str(tmp_path / f"cache{n_plates}")],
            capture_output=True, text=True, check=True, cwd=REPO,
        ).stdout  # fmt: skip
        peaks[n_plates] = int(out.split()[-1])
    extra_cache = 10 * len(files) * shape[0] * shape[1] * 2
    assert peaks[15] - peaks[5] < 0.25 * extra_cache, (peaks, extra_cache)
