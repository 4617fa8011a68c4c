"""Cost of the image cache's content digest (meta.json `content_digest`, data/cache.py).

The cache builder hashes each prepared image (sha256 of its uint16 bytes) in the worker thread
that prepared it, so the digest adds CPU time but no reading. This script measures that CPU time
per image on random fields of a given size and extrapolates to a whole cache; `--cache-dir`
times an existing cache's arrays instead (read from the page cache or disk, plus hashing).

    python benchmarks/bench_cache_digest.py                       # 512x640 (BBBC021 at 0.5)
    python benchmarks/bench_cache_digest.py --shape 204 256 --images 432
    python benchmarks/bench_cache_digest.py --cache-dir results/demo/cache
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from workflow_scripts.data import cache

BBBC021_IMAGES = 3848  # annotated fields of view (treated), the estimate's size per channel


def per_image_seconds(images: np.ndarray, workers: int) -> float:
    start = time.perf_counter()
    if workers == 1:
        digests = [cache.image_digest(image) for image in images]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            digests = list(pool.map(cache.image_digest, images))
    cache.channel_digest(digests)
    return (time.perf_counter() - start) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=2, type=int, default=[512, 640], metavar=("H", "W"))
    parser.add_argument("--images", type=int, default=200, help="random fields to time")
    parser.add_argument("--estimate", type=int, default=BBBC021_IMAGES, help="images/channel")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="threads, as the cache rule")
    parser.add_argument("--cache-dir", type=Path, help="time an existing cache's arrays")
    args = parser.parse_args()
    if args.cache_dir:
        meta = json.loads((args.cache_dir / cache.META).read_text())
        start = time.perf_counter()
        for channel in meta["channels"]:
            array = np.load(args.cache_dir / cache.array_name(channel), mmap_mode="r")
            cache.array_content_digest(array)
        seconds = time.perf_counter() - start
        n = meta["n_images"] * len(meta["channels"])
        print(
            f"{args.cache_dir}: {meta['n_images']} images x {len(meta['channels'])} channels of "
            f"{meta['height']}x{meta['width']}: {seconds:.3f} s "
            f"({seconds / n * 1e3:.3f} ms per image, one thread, reading included)"
        )
        return
    images = np.random.default_rng(0).integers(
        0, 65535, size=(args.images, *args.shape), dtype=np.uint16
    )
    megabytes = images[0].nbytes / 1e6
    for workers in sorted({1, args.workers}):
        seconds = per_image_seconds(images, workers)
        total = seconds * args.estimate * args.channels
        print(
            f"{args.shape[0]}x{args.shape[1]} uint16 ({megabytes:.2f} MB/image), {workers} "
            f"thread(s): {seconds * 1e3:.3f} ms per image ({megabytes / seconds:.0f} MB/s); "
            f"{args.estimate} images x {args.channels} channels: {total:.1f} s"
        )


if __name__ == "__main__":
    main()
