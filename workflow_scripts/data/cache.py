"""The image cache: illumination-corrected, resized, clipped uint16 arrays, one per channel.

Built once from the validated image table so training and feature extraction read memory-mapped
arrays instead of decoding 11,544 TIFFs every epoch. Plates are processed one at a time (a plate
is ~70 images per channel), so memory stays at a few hundred MB whatever the dataset size.
Everything is written into a temporary folder beside the cache folder and moved into place at the
end, `meta.json` last: a failed or killed job never leaves a cache that looks complete.
`meta.json` records a digest of the pixels (`content_digest`), computed while the images are
written, so a resumed training can tell a rebuilt cache with other pixels from the same one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import operator
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from numpy.lib import format as npy_format

from workflow_scripts.config import digest
from workflow_scripts.data.illumination import (
    IlluminationSettings,
    correct,
    illumination_function,
)
from workflow_scripts.data.metadata import check_channels
from workflow_scripts.disk_space import ensure_free, remove_stale_temps, reserve
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.tables import path_column, read_json, read_table

CACHE_DTYPE = np.dtype(np.uint16)
META = "meta.json"
TABLE = "images.parquet"
ILLUMINATION_DIR = "illumination"
META_KEYS = (
    "n_images",
    "height",
    "width",
    "channels",
    "clip_max",
    "resize_factor",
    "illumination_correction",
    "settings_digest",
)
# Not required by readers: caches written before it existed have no `content_digest`.
CONTENT_DIGEST = "content_digest"


def array_name(channel: str) -> str:
    return f"{channel}.npy"


def image_digest(image: np.ndarray) -> bytes:
    """sha256 of one cached image's bytes (uint16, C order)."""
    return hashlib.sha256(np.ascontiguousarray(image, dtype=CACHE_DTYPE).data).digest()


def channel_digest(row_digests: list[bytes]) -> str:
    """A channel's content digest: sha256 of its images' sha256 digests in row order. Per image
    first, so the digests are computed in the worker threads while the images are written, in
    any order, and the whole array is never read again."""
    return hashlib.sha256(b"".join(row_digests)).hexdigest()


def array_content_digest(array: np.ndarray) -> str:
    """channel_digest of an (N, H, W) array that is already written (tests, benchmarks)."""
    return channel_digest([image_digest(image) for image in array])


def parse_settings(settings: dict) -> tuple[IlluminationSettings | None, float, float]:
    """config.yaml's `preprocess` section -> (illumination settings or None, resize factor,
    clip max)."""

    def get(mapping: dict, key: str, prefix: str = "preprocess"):
        if key not in mapping:
            raise InputError(f"--settings: key '{prefix}.{key}' is missing")
        return mapping[key]

    resize_factor = get(settings, "resize_factor")
    clip_max = get(settings, "clip_max")
    enabled = get(settings, "illumination_correction")
    if not isinstance(resize_factor, (int, float)) or not 0 < resize_factor <= 1:
        raise InputError(
            f"--settings: key 'preprocess.resize_factor' must be in (0, 1], not {resize_factor!r}"
        )
    if not isinstance(clip_max, (int, float)) or not 0 < clip_max <= np.iinfo(CACHE_DTYPE).max:
        raise InputError(
            "--settings: key 'preprocess.clip_max' must be in (0, 65535] (the cache is uint16), "
            f"not {clip_max!r}"
        )
    if not isinstance(enabled, bool):
        raise InputError(
            "--settings: key 'preprocess.illumination_correction' must be true or false"
        )
    illumination = None
    if enabled:
        section = get(settings, "illumination")
        values = {
            key: get(section, key, "preprocess.illumination")
            for key in ("statistic", "smoothing_sigma", "robust_floor_quantile")
        }
        try:
            illumination = IlluminationSettings(**values)
        except ValueError as err:
            raise InputError(f"--settings: key 'preprocess.illumination': {err}") from err
    return illumination, float(resize_factor), float(clip_max)


def output_shape(height: int, width: int, resize_factor: float) -> tuple[int, int]:
    return max(1, round(height * resize_factor)), max(1, round(width * resize_factor))


def prepare(
    image: np.ndarray, function: np.ndarray | None, shape: tuple[int, int], clip_max: float
) -> np.ndarray:
    """Raw image -> cached image: divide by the illumination function, resize, clip, uint16."""
    values = correct(image, function) if function is not None else image.astype(np.float32)
    if values.shape != shape:
        values = cv2.resize(values, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.rint(np.clip(values, 0, clip_max)).astype(CACHE_DTYPE)


def prepare_and_digest(image: np.ndarray, **kwargs) -> tuple[np.ndarray, bytes]:
    """`prepare`, and the prepared image's digest (in the worker thread: sha256 frees the GIL)."""
    prepared = prepare(image, **kwargs)
    return prepared, image_digest(prepared)


class ImageReader:
    """Reads one channel's raw TIFFs; any problem names the table row, column and file."""

    def __init__(
        self,
        table: pd.DataFrame,
        table_path: str | os.PathLike,
        channel: str,
        shape: tuple[int, int] | None,  # None: any 2-D shape
    ):
        self.paths = table[path_column(channel)].tolist()
        self.image_ids = table["image_id"].tolist()
        self.column = path_column(channel)
        self.table_path = table_path
        self.shape = shape

    def __call__(self, row: int) -> np.ndarray:
        path = self.paths[row]
        try:
            image = tifffile.imread(path)
        except Exception as err:  # missing, truncated or not a TIFF: tifffile/OS raise many types
            raise self.error(row, f"cannot be read ({type(err).__name__}: {err})") from err
        if image.dtype != CACHE_DTYPE or image.ndim != 2 or self.shape not in (None, image.shape):
            expected = f"uint16 of shape {self.shape}" if self.shape else "a 2-D uint16 image"
            raise self.error(
                row, f"is a {image.dtype} image of shape {image.shape}, expected {expected}"
            )
        return image

    def error(self, row: int, problem: str) -> InputError:
        return InputError(
            f"{self.table_path}: row {row} (image_id {self.image_ids[row]}), "
            f"column '{self.column}': "
            f"{self.paths[row]} {problem}"
        )


def write_cache(
    table: pd.DataFrame,
    table_path: str | os.PathLike,
    channels: list[str],
    settings: dict,
    folder: Path,
    workers: int,
) -> dict:
    """Write arrays, illumination functions, table and meta.json into `folder`; returns meta."""
    illumination, resize_factor, clip_max = parse_settings(settings)
    height, width = ImageReader(table, table_path, channels[0], None)(0).shape
    shape = output_shape(height, width, resize_factor)
    plates = table.groupby("plate", sort=False).indices
    if illumination is not None:
        (folder / ILLUMINATION_DIR).mkdir()
    row_digests: dict[str, list[bytes]] = {ch: [b""] * len(table) for ch in channels}
    meta = cache_meta(
        table,
        shape,
        channels,
        clip_max=clip_max,
        resize_factor=resize_factor,
        illumination_correction=illumination is not None,
        settings_digest=digest(settings),
    )
    with writing(folder, table, meta) as arrays, ThreadPoolExecutor(max_workers=workers) as pool:
        for k, (plate, rows) in enumerate(plates.items(), start=1):
            start = time.perf_counter()
            for ch in channels:
                read = ImageReader(table, table_path, ch, (height, width))
                raw = np.empty((len(rows), height, width), dtype=CACHE_DTYPE)
                for i, image in enumerate(pool.map(read, rows)):
                    raw[i] = image
                function = None
                if illumination is not None:
                    try:
                        function = illumination_function(raw, illumination)
                    except ValueError as err:
                        raise InputError(
                            f"{table_path}: plate {plate}, channel {ch}: {err}"
                        ) from err
                    np.save(folder / ILLUMINATION_DIR / f"{plate}_{ch}.npy", function)
                finish = partial(
                    prepare_and_digest, function=function, shape=shape, clip_max=clip_max
                )
                for row, (image, image_sha) in zip(rows, pool.map(finish, raw)):
                    arrays[ch][row] = image
                    row_digests[ch][row] = image_sha
                del raw  # freed before the next channel's stack is allocated
            print(
                f"plate {k}/{len(plates)} {plate}: {len(rows)} images x {len(channels)} channels "
                f"in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
        # digested in the worker threads as the images were written: `writing` reads nothing back
        meta[CONTENT_DIGEST] = {ch: channel_digest(row_digests[ch]) for ch in channels}
    return meta


# ------------------------------------------------------------------ the format, for every writer
class ArrayFile:
    """Write-only view of one channel's (n_images, height, width) uint16 `.npy` file:
    `array[i] = image` writes row i, `array[:] = images` every row. Rows are written with
    pwrite, so they pass through the page cache but not through this process: a memory map
    would keep every page it wrote resident here, and the cache build would grow to the whole
    cache (7.6 GB on BBBC021) instead of one plate."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, int, int]) -> None:
        self.path, self.offset, self.shape = path, offset, shape
        self.row_bytes = shape[1] * shape[2] * CACHE_DTYPE.itemsize
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, key: int | slice, value: np.ndarray) -> None:
        if key == slice(None):
            first, expected = 0, self.shape
        else:
            first, expected = operator.index(key), self.shape[1:]
            if first < 0:
                first += self.shape[0]
            if not 0 <= first < self.shape[0]:
                raise IndexError(f"row {key} of {self.path}, which has {self.shape[0]} rows")
        data = np.ascontiguousarray(value, dtype=CACHE_DTYPE)
        if data.shape != expected:
            raise ValueError(f"{self.path}: expected shape {expected}, got {data.shape}")
        view, position = memoryview(data).cast("B"), self.offset + first * self.row_bytes
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written

    def close(self, sync: bool) -> None:
        """Close the file; `sync`: its rows on disk first (before meta.json marks the cache
        complete)."""
        if self.fd < 0:
            return
        try:
            if sync:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1


def new_arrays(
    folder: Path, channels: list[str], n_images: int, shape: tuple[int, int]
) -> dict[str, ArrayFile]:
    """Array files `{channel}.npy` in `folder` (header, then zeros), their blocks allocated now:
    a full disk is an error here, not a short write later."""
    array_bytes = n_images * shape[0] * shape[1] * CACHE_DTYPE.itemsize
    ensure_free(
        folder.parent, array_bytes * len(channels), f"the image cache ({len(channels)} arrays)"
    )
    header = {
        "descr": npy_format.dtype_to_descr(CACHE_DTYPE),
        "fortran_order": False,
        "shape": (n_images, *shape),
    }
    arrays = {}
    for ch in channels:
        path = folder / array_name(ch)
        with open(path, "wb") as fh:
            npy_format.write_array_header_1_0(fh, header)
            offset = fh.tell()
        reserve(path, offset + array_bytes)
        arrays[ch] = ArrayFile(path, offset, (n_images, *shape))
    return arrays


def cache_meta(
    table: pd.DataFrame,
    shape: tuple[int, int],
    channels: list[str],
    *,
    clip_max: float,
    resize_factor: float = 1.0,
    illumination_correction: bool = False,
    settings_digest: str = "arrays",
    content_digest: dict[str, str] | None = None,
) -> dict:
    """meta.json's content (docs/formats.md); a `content_digest` of None is filled in by
    `writing` from the written arrays."""
    return {
        "n_images": len(table),
        "height": shape[0],
        "width": shape[1],
        "channels": list(channels),
        "clip_max": clip_max,
        "resize_factor": resize_factor,
        "illumination_correction": illumination_correction,
        "settings_digest": settings_digest,
        CONTENT_DIGEST: content_digest,
    }


def write_index(folder: Path, table: pd.DataFrame, meta: dict) -> None:
    """The image table, then meta.json: a folder with meta.json is a complete cache."""
    table.to_parquet(folder / TABLE, index=False)
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


@contextlib.contextmanager
def writing(
    out_dir: str | os.PathLike, table: pd.DataFrame, meta: dict
) -> Iterator[dict[str, ArrayFile]]:
    """The one writer of the cache format (the cache build, and tests and benchmarks that make
    their own fields): yields one write-only (n_images, height, width) uint16 ArrayFile per
    channel of `meta` (cache_meta), rows in table order; on a clean exit the arrays are synced
    to disk, meta's content digest taken from the files unless the caller recorded it while
    writing (write_cache), then the table and meta.json written, in the layout `load_cache`
    reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = new_arrays(out_dir, meta["channels"], len(table), (meta["height"], meta["width"]))
    try:
        yield arrays
        for array in arrays.values():
            array.close(sync=True)
    finally:
        for array in arrays.values():
            array.close(sync=False)
    if meta.get(CONTENT_DIGEST) is None:  # tests and benchmarks: read back once
        content = {
            ch: array_content_digest(np.load(array.path, mmap_mode="r"))
            for ch, array in arrays.items()
        }
        meta = {**meta, CONTENT_DIGEST: content}
    write_index(out_dir, table, meta)


def write_arrays(
    out_dir: str | os.PathLike, table: pd.DataFrame, arrays: dict[str, np.ndarray], **meta
) -> Path:
    """A cache of ready-made (N, H, W) arrays, one per channel (`cache_meta`'s keywords)."""
    first = next(iter(arrays.values()))
    if len(first) != len(table):
        raise ValueError(f"{len(first)} images in the arrays, {len(table)} rows in the table")
    with writing(out_dir, table, cache_meta(table, first.shape[1:], list(arrays), **meta)) as out:
        for channel, array in arrays.items():
            out[channel][:] = array
    return Path(out_dir)


def publish(folder: Path, out_dir: Path, channels: list[str]) -> None:
    """Move a complete cache from `folder` into `out_dir`, replacing an old one; meta.json goes
    last (and the old one first), so a cache with meta.json is always complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META).unlink(missing_ok=True)
    for name in [array_name(ch) for ch in channels] + [TABLE]:
        os.replace(folder / name, out_dir / name)
    if (out_dir / ILLUMINATION_DIR).exists():
        shutil.rmtree(out_dir / ILLUMINATION_DIR)
    if (folder / ILLUMINATION_DIR).exists():
        os.replace(folder / ILLUMINATION_DIR, out_dir / ILLUMINATION_DIR)
    os.replace(folder / META, out_dir / META)


def build_cache(
    table_path: str | os.PathLike,
    channels: list[str],
    settings: dict,
    out_dir: str | os.PathLike,
    workers: int = 4,
) -> dict:
    """Validated image table -> cache folder (docs/formats.md). Returns meta.json's content."""
    check_channels(channels)
    required = ["image_id", "plate"] + [path_column(ch) for ch in channels]
    table = read_table(table_path, required=required)
    if table.empty:
        raise InputError(f"{table_path}: the table has no rows")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # a build killed by SIGKILL / a lost node never ran its cleanup; this job owns the output
    for stale in remove_stale_temps(out_dir.parent, f".{out_dir.name}."):
        print(f"removed {stale} (temp folder of an earlier, interrupted build)")
    # beside the cache folder: same file system, so the final moves are renames
    folder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        meta = write_cache(table, table_path, channels, settings, folder, workers)
        publish(folder, out_dir, channels)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return meta


def load_cache(
    cache_dir: str | os.PathLike, channels: list[str]
) -> tuple[pd.DataFrame, dict[str, np.memmap], dict]:
    """The cache's table, read-only memory maps of the requested channels, and meta.json."""
    cache_dir = Path(cache_dir)
    meta_path = cache_dir / META
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: not found; build the cache first (rule build_image_cache)")
    meta = read_json(meta_path, required=META_KEYS)
    absent = [ch for ch in channels if ch not in meta["channels"]]
    if absent:
        raise InputError(
            f"{meta_path}: channel(s) {', '.join(absent)} not in the cache "
            f"(it has {', '.join(meta['channels'])})"
        )
    table = read_table(cache_dir / TABLE)
    if len(table) != meta["n_images"]:
        raise InputError(
            f"{cache_dir / TABLE}: {len(table)} rows but {meta_path} says "
            f"n_images={meta['n_images']}"
        )
    expected = (meta["n_images"], meta["height"], meta["width"])
    arrays = {}
    for ch in channels:
        path = cache_dir / array_name(ch)
        if not path.is_file():
            raise InputError(f"{path}: not found (channel {ch} of the cache)")
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from err
        if array.shape != expected or array.dtype != CACHE_DTYPE:
            raise InputError(
                f"{path}: {array.dtype} array of shape {array.shape}, but {meta_path} describes "
                f"uint16 of shape {expected}; rebuild the cache"
            )
        arrays[ch] = array
    return table, arrays, meta


def _exit_on_sigterm(signum: int, frame) -> None:
    # SLURM and Snakemake stop jobs with SIGTERM; exiting through SystemExit runs the cleanup
    sys.exit(128 + signum)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="validated image table (.parquet)")
    parser.add_argument("--channels", nargs="+", required=True)
    parser.add_argument(
        "--settings", required=True, help="config.yaml's preprocess section as JSON"
    )
    parser.add_argument(
        "--workers", type=int, default=4, help="threads reading and preparing images"
    )
    parser.add_argument("--out-dir", required=True, help="cache folder")
    args = parser.parse_args(argv)
    settings = json_object_option(args.settings, "--settings")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    start = time.perf_counter()
    meta = build_cache(args.table, args.channels, settings, args.out_dir, max(1, args.workers))
    print(
        f"{args.out_dir}: {meta['n_images']} images x {len(meta['channels'])} channels of "
        f"{meta['height']}x{meta['width']} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
