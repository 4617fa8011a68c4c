"""Training data path throughput: the seed's TIFF + albumentations path vs the workflow's cache
path.

Writes real-size BBBC021-like fields (1280x1024 uint16, one uncompressed TIFF per channel, as
BBBC021 ships them) and matching caches at resize_factor 1.0 and 0.5 (same pixels), then measures
multi-crop samples/s on one core (num_workers=0, one torch and OpenCV thread) for the seed path
(benchmarks/seed_datapath.py) and the workflow's MultiCropDataset, per grey channel and rgb, and
loader throughput with worker processes. The recipe is config.yaml's train section.

    python benchmarks/bench_datapath.py [--images 64] [--workers 2] [--json results.json]
    python benchmarks/bench_datapath.py --quick     # CI smoke: a few images, short timings
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
import torch

REPO = Path(__file__).resolve().parents[1]

from seed_datapath import SeedMultiCropDataset  # noqa: E402

from workflow_scripts import config as config_module  # noqa: E402
from workflow_scripts.atomic import write_json  # noqa: E402
from workflow_scripts.data import cache  # noqa: E402
from workflow_scripts.train.dataset import build_train_loader  # noqa: E402

CHANNELS = ["DAPI", "Tubulin", "Actin"]
RAW_SHAPE = (1024, 1280)  # (height, width) of a BBBC021 field
RESIZE_FACTORS = (1.0, 0.5)
BENCH_CHANNELS = ("DAPI", "rgb")
SEED_PATH = "seed (TIFF + albumentations)"
WORKFLOW_PATH = "workflow (cache + multicrop)"


def write_fields(root: Path, n_images: int, clip_max: int, seed: int = 0) -> list[dict[str, str]]:
    """One uncompressed uint16 TIFF per field and channel; ~1 % of pixels above clip_max."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_images):
        field = {}
        for channel in CHANNELS:
            pixels = rng.gamma(2.0, clip_max / 8, size=RAW_SHAPE).astype(np.uint16)
            path = root / "tiff" / f"field{i:03d}_{channel}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, pixels)
            field[channel] = str(path)
        paths.append(field)
    return paths


def write_cache(
    cache_dir: Path, fields: list[dict[str, str]], resize_factor: float, clip_max: int
) -> None:
    """A cache in the docs/formats.md layout from the same TIFFs (no illumination correction)."""
    height, width = (round(side * resize_factor) for side in RAW_SHAPE)
    # all treated: train.images (treated by default) uses every row
    table = pd.DataFrame(
        {"image_id": [f"P/W{i:03d}/s1" for i in range(len(fields))], "is_control": False}
    )
    meta = cache.cache_meta(
        table, (height, width), CHANNELS, clip_max=clip_max, resize_factor=resize_factor
    )
    with cache.writing(cache_dir, table, meta) as arrays:
        for channel, array in arrays.items():
            for i, field in enumerate(fields):
                pixels = np.minimum(tifffile.imread(field[channel]), clip_max)
                if resize_factor != 1.0:
                    pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
                array[i] = pixels


def samples_per_second(
    get_sample: Callable[[int], object], n_images: int, min_seconds: float
) -> float:
    """Fetch samples round-robin over the fields until at least `min_seconds` have passed."""
    get_sample(0)  # warm-up: imports, first page faults
    count, start = 0, time.perf_counter()
    while True:
        get_sample(count % n_images)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds and count >= n_images:
            return count / elapsed


def loader_samples_per_second(
    loader: torch.utils.data.DataLoader,
    epochs: int,
    set_epoch: Callable[[int], None] = lambda epoch: None,
) -> float:
    """Samples/s over `epochs` epochs after a warm-up epoch that starts the persistent workers
    (each measured epoch includes refilling the prefetch queue, as in training)."""
    set_epoch(0)
    for _ in loader:
        pass
    count, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        set_epoch(epoch)
        count += loader.batch_size * sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def best_of_rounds(measurements: list[Callable[[], float]], rounds: int) -> list[dict[str, float]]:
    """Run the measurements interleaved, `rounds` times; per measurement the best rate (the
    least disturbed by other load on a shared machine) and the median."""
    rates = [[] for _ in measurements]
    for _ in range(rounds):
        for measure, history in zip(measurements, rates):
            history.append(measure())
    return [{"samples_per_s": max(h), "median_samples_per_s": float(np.median(h))} for h in rates]


def run(args: argparse.Namespace) -> dict:
    config = config_module.load([REPO / "config.yaml"])
    arch = config_module.architecture_names(config)[0]
    settings = config_module.train_settings(config, arch)
    clip_max = config["preprocess"]["clip_max"]
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "opencv": cv2.__version__,
        },
        "recipe": {key: settings[key] for key in ("global_crops", "local_crops", "interpolation")},
        "images": args.images,
        "rounds": args.rounds,
        "single_core": [],
        "loader": [],
    }
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        root = Path(tmp)
        print(
            f"writing {args.images} fields of {RAW_SHAPE[1]}x{RAW_SHAPE[0]} "
            f"x {len(CHANNELS)} channels..."
        )
        fields = write_fields(root, args.images, clip_max)
        for factor in RESIZE_FACTORS:
            write_cache(root / f"cache_{factor:g}", fields, factor, clip_max)

        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        single = []  # (row, sample getter); the seed row of a channel comes first
        for channel in BENCH_CHANNELS:
            names = CHANNELS if channel == "rgb" else [channel]
            seed_dataset = SeedMultiCropDataset(
                [[f[n] for n in names] for f in fields], settings, clip_max
            )
            single.append(
                (
                    {"path": SEED_PATH, "channel": channel, "resize_factor": 1.0},
                    seed_dataset.__getitem__,
                )
            )
            for factor in RESIZE_FACTORS:
                loader, _ = build_train_loader(
                    str(root / f"cache_{factor:g}"),
                    channel,
                    {**settings, "num_workers": 0, "batch_size_per_gpu": 1},
                    rank=0,
                    world_size=1,
                    seed=0,
                    device_type="cpu",
                )
                single.append(
                    (
                        {"path": WORKFLOW_PATH, "channel": channel, "resize_factor": factor},
                        lambda i, dataset=loader.dataset: dataset[(0, i)],
                    )
                )
        rates = best_of_rounds(
            [
                lambda get=get: samples_per_second(get, args.images, args.seconds)
                for _, get in single
            ],
            args.rounds,
        )
        for (row, _), rate in zip(single, rates):
            seed_rate = next(
                r
                for (s, _), r in zip(single, rates)
                if s["path"] == SEED_PATH and s["channel"] == row["channel"]
            )
            ratio = rate["samples_per_s"] / seed_rate["samples_per_s"]
            results["single_core"].append({**row, **rate, "ratio": ratio})

        batch_size = min(settings["batch_size_per_gpu"], args.images // args.workers)
        loader_settings = {
            **settings,
            "num_workers": args.workers,
            "batch_size_per_gpu": batch_size,
        }

        def workflow_loader(factor: float) -> float:
            loader, sampler = build_train_loader(
                str(root / f"cache_{factor:g}"),
                "DAPI",
                loader_settings,
                rank=0,
                world_size=1,
                seed=0,
                device_type="cpu",
            )
            return loader_samples_per_second(loader, args.epochs, sampler.set_epoch)

        def seed_loader() -> float:
            loader = torch.utils.data.DataLoader(
                SeedMultiCropDataset([[f["DAPI"]] for f in fields], settings, clip_max),
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=args.workers,
                persistent_workers=True,
            )
            return loader_samples_per_second(loader, args.epochs)

        loader_rows = [{"path": SEED_PATH, "resize_factor": 1.0}] + [
            {"path": WORKFLOW_PATH, "resize_factor": factor} for factor in RESIZE_FACTORS
        ]
        rates = best_of_rounds(
            [seed_loader]
            + [lambda factor=factor: workflow_loader(factor) for factor in RESIZE_FACTORS],
            args.rounds,
        )
        for row, rate in zip(loader_rows, rates):
            results["loader"].append(
                {
                    **row,
                    "channel": "DAPI",
                    "workers": args.workers,
                    "batch_size": batch_size,
                    **rate,
                    "ratio": rate["samples_per_s"] / rates[0]["samples_per_s"],
                }
            )
    return results


def print_tables(results: dict) -> None:
    recipe = results["recipe"]
    print(
        f"\nrecipe: {recipe['global_crops']['number']} x {recipe['global_crops']['size']} px + "
        f"{recipe['local_crops']['number']} x {recipe['local_crops']['size']} px, "
        f"{recipe['interpolation']}; {results['images']} fields; {results['machine']}"
    )
    print(f"samples/s: best (median) of {results['rounds']} interleaved rounds")
    print("\nmulti-crop samples/s on one core (num_workers=0, 1 thread)")
    print(f"{'path':<30} {'channel':<8} {'resize':>6} {'samples/s/core':>20} {'ratio':>7}")
    for row in results["single_core"]:
        rate = f"{row['samples_per_s']:.1f} ({row['median_samples_per_s']:.1f})"
        print(
            f"{row['path']:<30} {row['channel']:<8} {row['resize_factor']:>6g} {rate:>20} "
            f"{row['ratio']:>6.1f}x"
        )
    print("\nloader samples/s (worker processes, batches of the training loader)")
    print(
        f"{'path':<30} {'channel':<8} {'resize':>6} {'workers':>7} {'batch':>5} {'samples/s':>20} "
        f"{'ratio':>7}"
    )
    for row in results["loader"]:
        rate = f"{row['samples_per_s']:.1f} ({row['median_samples_per_s']:.1f})"
        print(
            f"{row['path']:<30} {row['channel']:<8} {row['resize_factor']:>6g} {row['workers']:>7} "
            f"{row['batch_size']:>5} {rate:>20} {row['ratio']:>6.1f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="fields to generate")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="minimum time per single-core measurement"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved repetitions; the best is reported"
    )
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument(
        "--epochs",
        type=int,
        default=3,
        help="epochs per loader measurement (after one warm-up epoch)",
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke: 4 fields, short timings")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--tmpdir", help="where to write the fields and caches (default: system temp)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.seconds, args.epochs, args.rounds = 4, 0.2, 1, 1
    results = run(args)
    print_tables(results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
