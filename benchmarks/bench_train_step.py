"""Training-step throughput of the real Trainer: the seed's configuration vs the workflow's tuned.

    seed   fp32, batch 16 (--seed-batch), 1 loader worker, no compile, and the seed's data
           path: per sample PIL decodes each full 16-bit TIFF and albumentations crops it 10
           times (benchmarks/seed_datapath.py); no pinned memory, lr unscaled.
    tuned  precision auto (bf16 autocast on CUDA, fp32 on CPU), batch --tuned-batch with the lr
           scaled linearly (DINO: lr = base x batch / 256, base = the configured lr x 256 / the
           configured batch size, so the seed's lr at 16), min(cores, 8) workers, pinned memory
           and fused AdamW on CUDA, the workflow's cache + multicrop loader; torch.compile of both
           backbones with --compile.

Both run `workflow_scripts.train.loop.Trainer.train_step` (teacher forward under no_grad on the
global crops, student forward + backward on all crops, DINO loss, clipping, AdamW, EMA) on
random uint16 fields written to a temporary directory: raw TIFFs of --field-shape (BBBC021:
1024x1280) for the seed path and a cache per docs/formats.md at --resize-factor (0.5: 512x640,
the real cache) for the workflow's. Steps are steady-state: the prototype layer is trained (as
after the first epoch). Each configuration runs in its own process.

Measured after --warmup steps (loader start-up, compilation), over --steps steps; with
--repeats the configurations run interleaved and each one's fastest run is reported:
  images/s      samples per second, each with all its crops
  data wait     fraction of the wall time the loop is blocked on the loader (next batch):
                the CPU-bound share
  GPU busy      (CUDA) fraction of the wall time with a kernel or copy running on the GPU: union
                of the device activity intervals torch.profiler records over --profile-steps
                further steps, divided by their wall time
  peak memory   CUDA max_memory_allocated over the timed steps; on CPU the peak RSS of the
                training process (loader workers not included)
  FLOP/image    FlopCounterMode over one real step (attention through the math kernel on CPU,
                which it counts); MFU (CUDA) = model FLOP/image (benchmarks/flops.py) x images/s
                / the card's dense bf16 peak (--peak-tflops overrides)

    python benchmarks/bench_train_step.py --arch vit_small_patch16_dinov3.lvd1689m --json out.json
    python benchmarks/bench_train_step.py --quick          # CI smoke: tiny model, demo recipe
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from flops import ISSUE_VIT_S_GFLOP, analytic_step_flops  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from workflow_scripts import config as config_module  # noqa: E402
from workflow_scripts.atomic import write_json  # noqa: E402
from workflow_scripts.data import cache  # noqa: E402
from workflow_scripts.train.distributed import DistributedContext  # noqa: E402
from workflow_scripts.train.loop import Trainer, TrainJob  # noqa: E402
from workflow_scripts.train.schedules import scaled_lr  # noqa: E402

DEFAULT_ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY_MODEL = {"depth": 2, "embed_dim": 64, "num_heads": 2}
CONFIG_NAMES = ("seed", "tuned")
SEED_WORKERS = 1
DISTINCT_FIELDS = 16  # random fields generated; the cache and the TIFF list cycle through them
# Dense bf16 tensor-core peak, TFLOP/s, by device-name substring (first match; NVIDIA datasheets).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)


# ---------------------------------------------------------------------------- data
def random_fields(n: int, shape: tuple[int, int], clip_max: int, seed: int = 0) -> list[np.ndarray]:
    """uint16 fields with a skewed intensity histogram, ~1 % of pixels above clip_max."""
    rng = np.random.default_rng(seed)
    return [rng.gamma(2.0, clip_max / 8, size=shape).astype(np.uint16) for _ in range(n)]


def write_tiffs(folder: Path, fields: list[np.ndarray], channels: list[str]) -> list[list[str]]:
    """One uncompressed TIFF per field and channel (as BBBC021 ships them); per field the paths
    in model channel order."""
    folder.mkdir(parents=True)
    paths = []
    for i, field in enumerate(fields):
        paths.append([])
        for channel in channels:
            path = folder / f"field{i:03d}_{channel}.tif"
            tifffile.imwrite(path, field)
            paths[-1].append(str(path))
    return paths


def write_cache(
    cache_dir: Path,
    fields: list[np.ndarray],
    n_images: int,
    channels: list[str],
    resize_factor: float,
    clip_max: int,
) -> None:
    """A cache per docs/formats.md with `n_images` rows cycling through `fields` (clipped,
    resized)."""
    height, width = (round(side * resize_factor) for side in fields[0].shape)
    rows = [
        cv2.resize(np.minimum(field, clip_max), (width, height), interpolation=cv2.INTER_AREA)
        for field in fields
    ]
    # all treated: train.images (treated by default) uses every row
    table = pd.DataFrame(
        {"image_id": [f"P/W{i:05d}/s1" for i in range(n_images)], "is_control": False}
    )
    meta = cache.cache_meta(
        table, (height, width), channels, clip_max=clip_max, resize_factor=resize_factor
    )
    with cache.writing(cache_dir, table, meta) as arrays:
        for array in arrays.values():
            for i in range(n_images):
                array[i] = rows[i % len(rows)]


# ---------------------------------------------------------------------------- configurations
def config_overrides(name: str, recipe: dict, args: argparse.Namespace) -> dict:
    """The train-settings keys that make a configuration (everything else: the recipe)."""
    # the recipe's lr at its own batch size (config.yaml: the seed's 4e-6 at 16)
    lr, min_lr = scaled_lr(recipe["optimizer"], recipe["batch_size_per_gpu"], 1)
    if name == "seed":
        return {
            "precision": "fp32",
            "batch_size_per_gpu": args.seed_batch,
            "num_workers": SEED_WORKERS,
            "compile": False,
            "optimizer": {"lr_scaling": "none", "lr": lr, "min_lr": min_lr},
        }
    # DINO's rule, lr = base x batch / 256, with the base that gives the recipe's lr
    per_256 = 256 / recipe["batch_size_per_gpu"]
    return {
        "precision": "auto",
        "batch_size_per_gpu": args.tuned_batch,
        "num_workers": args.tuned_workers,
        "compile": args.compile,
        "optimizer": {"lr_scaling": "linear", "lr": lr * per_256, "min_lr": min_lr * per_256},
    }


def batches_needed(args: argparse.Namespace, device: torch.device) -> int:
    return args.warmup + args.steps + (args.profile_steps if device.type == "cuda" else 0)


def bench_settings(recipe: dict, name: str, args: argparse.Namespace, n_batches: int) -> dict:
    settings = config_module.deep_merge(recipe, config_overrides(name, recipe, args))
    # schedules long enough for every step of the run in epoch 0; steady state: prototype
    # layer not frozen (the Trainer freezes it in the first epoch only)
    return config_module.deep_merge(
        settings,
        {
            "epochs": n_batches,
            "checkpoint_every": n_batches,
            "optimizer": {"freeze_last_layer_epochs": 0},
        },
    )


def cycle(loader: torch.utils.data.DataLoader) -> Iterator[list[torch.Tensor]]:
    while True:
        yield from loader


def seed_path_available() -> bool:
    """Whether the seed's data path (albumentations) imports."""
    try:
        import seed_datapath  # noqa: F401
    except ImportError:
        return False
    return True


def seed_loader(
    tiff_paths: list[list[str]], settings: dict, clip_max: int
) -> torch.utils.data.DataLoader:
    """The seed's loader: per-sample TIFF decode + albumentations, shuffled, no pinned memory."""
    # imported here: albumentations is needed by the seed row only (a bare GPU node may lack it)
    from seed_datapath import SeedMultiCropDataset

    return torch.utils.data.DataLoader(
        SeedMultiCropDataset(tiff_paths, settings, clip_max),
        batch_size=settings["batch_size_per_gpu"],
        shuffle=True,
        num_workers=settings["num_workers"],
        drop_last=True,
    )


# ---------------------------------------------------------------------------- measurement
def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping (start, end) intervals."""
    covered, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def counted_flops_per_image(trainer: Trainer, crops: list[torch.Tensor]) -> float:
    """FlopCounterMode over one real train_step on the first image of `crops` (FLOP scale with
    the batch); compiled backbones run eagerly for it."""
    counter = FlopCounterMode(display=False)
    # CPU's fused attention kernel is not in FlopCounterMode's table; the math kernel is
    on_cpu = trainer.device.type == "cpu"
    attention = sdpa_kernel([SDPBackend.MATH]) if on_cpu else contextlib.nullcontext()
    with torch.compiler.set_stance("force_eager"), attention, counter:
        trainer.train_step([crop[:1] for crop in crops], 0, 0)
    return float(counter.get_total_flops())


def gpu_busy_fraction(
    trainer: Trainer, batches: Iterator, steps: int, first_step: int
) -> float | None:
    """Share of wall time with GPU activity (kernels, copies) over `steps` profiled steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(trainer.device)
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        start = time.perf_counter()
        for step in range(first_step, first_step + steps):
            trainer.train_step(next(batches), 0, step)
        synchronize(trainer.device)
        wall = time.perf_counter() - start
    intervals = [
        (event.time_range.start, event.time_range.end)
        for event in profiler.events()
        if event.device_type == DeviceType.CUDA
    ]
    if not intervals:
        print(
            "warning: the profiler recorded no GPU activity (CUPTI missing?): GPU busy unknown",
            file=sys.stderr,
        )
        return None
    return union_length(intervals) / 1e6 / wall  # profiler times are microseconds


def run_config(
    name: str, args: argparse.Namespace, paths: dict, recipe: dict, clip_max: int
) -> dict:
    """One configuration in this (fresh) process: build the Trainer, warm up, time, profile."""
    # a spawned process inherits "spawn" for its own children; loader workers start as in
    # training, with the platform's default method
    multiprocessing.set_start_method(None, force=True)
    device = cuda_device() if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    n_batches = batches_needed(args, device)
    settings = bench_settings(recipe, name, args, n_batches)
    scratch = Path(paths["root"]) / name
    job = TrainJob(
        arch=args.arch,
        channel=args.channel,
        cache_dir=Path(paths["cache"]),
        weights="none",
        model_kwargs=args.model_kwargs,
        settings=settings,
        out_dir=scratch / "train",
        resume_dir=scratch / "resume",
    )
    trainer = Trainer(job, DistributedContext(rank=0, world_size=1, local_rank=0, device=device))
    if name == "seed":
        loader = seed_loader(paths["tiffs"], settings, clip_max)
    else:
        loader = trainer.loader
        trainer.sampler.set_epoch(0)
    batches = cycle(loader)
    trainer.student.train()

    losses = [trainer.train_step(next(batches), 0, step) for step in range(args.warmup)]
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data_wait = 0.0
    start = time.perf_counter()
    for step in range(args.warmup, args.warmup + args.steps):
        before = time.perf_counter()
        crops = next(batches)
        data_wait += time.perf_counter() - before
        losses.append(trainer.train_step(crops, 0, step))  # .item() inside: synchronises
    synchronize(device)
    wall = time.perf_counter() - start
    batch_size = settings["batch_size_per_gpu"]
    result = {
        "config": name,
        "precision": "fp32"
        if trainer.precision.autocast_dtype is None
        else str(trainer.precision.autocast_dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "num_workers": settings["num_workers"],
        "pin_memory": bool(loader.pin_memory),
        "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
        "compile": settings["compile"],
        "peak_lr": scaled_lr(settings["optimizer"], batch_size, 1)[0],
        "data_path": "seed: TIFF + albumentations"
        if name == "seed"
        else "workflow: cache + multicrop",
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "images_per_s": batch_size * args.steps / wall,
        "step_time_s": wall / args.steps,
        "data_wait_fraction": data_wait / wall,
        "peak_memory_mb": (
            torch.cuda.max_memory_allocated(device)
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        / 2**20,
        "peak_memory_kind": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS",
        "gpu_busy_fraction": None,
        "losses_finite": all(math.isfinite(loss) for loss in losses),
    }
    if device.type == "cuda" and args.profile_steps:
        result["gpu_busy_fraction"] = gpu_busy_fraction(
            trainer, batches, args.profile_steps, args.warmup + args.steps
        )
    result["flop_counter_per_image"] = counted_flops_per_image(trainer, crops)
    return result


def cuda_device() -> torch.device:
    """The visible GPU this process measures on, with its index (set_device needs one)."""
    return torch.device("cuda", torch.cuda.current_device())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def available_cores() -> int:
    """Cores this process may run on (a SLURM allocation, taskset), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine(device: torch.device) -> dict:
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU: {cpu_model()}",
        "cpu": cpu_model(),
        "cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


# ---------------------------------------------------------------------------- driver
def run(args: argparse.Namespace) -> dict:
    device = cuda_device() if args.device == "cuda" else torch.device(args.device)
    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    config = config_module.load(args.config, schema=config_module.has_schema_checker())
    recipe = (
        config_module.train_settings(config, args.arch)
        if args.arch in config_module.architecture_names(config)
        else config["train"]
    )
    clip_max = int(config["preprocess"]["clip_max"])
    channels = config_module.image_channels(config, args.channel)
    n_batches = batches_needed(args, device)
    try:
        analytic = analytic_step_flops(args.arch, args.model_kwargs, recipe).total
    except ValueError:  # not a ViT (convnext): FlopCounterMode's count stands alone
        analytic = None
    results: dict = {
        "machine": machine(device),
        "arch": args.arch,
        "model_kwargs": args.model_kwargs,
        "channel": args.channel,
        "recipe": {key: recipe[key] for key in ("global_crops", "local_crops", "head")},
        "field_shape": list(args.field_shape),
        "resize_factor": args.resize_factor,
        "model_flop_per_image": analytic,
        "issue_estimate_gflop_vit_s": ISSUE_VIT_S_GFLOP,
        "peak_tflops": peak_tflops(device, args.peak_tflops),
        "configs": {},
        "skipped_configs": {},
    }
    configs = list(args.configs)
    if "seed" in configs and not seed_path_available():
        # a bare GPU node: measure the rest rather than nothing
        configs.remove("seed")
        reason = (
            "albumentations is not installed (its data path is the seed's); "
            "pip install albumentations, or carry the wheels of benchmarks/make_wheels.sh"
        )
        results["skipped_configs"]["seed"] = reason
        print(f"warning: seed configuration skipped: {reason}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        root = Path(tmp)
        fields = random_fields(DISTINCT_FIELDS, tuple(args.field_shape), clip_max)
        n_cache = max(args.tuned_batch, args.seed_batch) * n_batches
        write_cache(root / "cache", fields, n_cache, channels, args.resize_factor, clip_max)
        pool = write_tiffs(root / "tiff", fields, channels) if "seed" in configs else []
        seed_fields = (
            [pool[i % len(pool)] for i in range(args.seed_batch * n_batches)] if pool else []
        )
        paths = {"root": str(root), "cache": str(root / "cache"), "tiffs": seed_fields}
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for repeat in range(
            args.repeats
        ):  # interleaved, so slow phases of a shared machine hit all
            for name in configs:
                print(
                    f"{name} ({repeat + 1}/{args.repeats}): {args.warmup} + {args.steps} steps on "
                    f"{device}...",
                    flush=True,
                )
                with ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")
                ) as executor:
                    outcome = executor.submit(run_config, name, args, paths, recipe, clip_max)
                    runs[name].append(outcome.result())
                # at once, so a run killed later still leaves this one in its log
                print(f"result {name}: {json.dumps(runs[name][-1])}", flush=True)
    for name, outcomes in runs.items():
        # the least disturbed run; the others' rates are kept beside it
        best = max(outcomes, key=lambda outcome: outcome["images_per_s"])
        best["images_per_s_all_repeats"] = [outcome["images_per_s"] for outcome in outcomes]
        model_flop = analytic if analytic is not None else best["flop_counter_per_image"]
        best["achieved_tflops"] = model_flop * best["images_per_s"] / 1e12
        peak = results["peak_tflops"]
        best["mfu"] = best["achieved_tflops"] / peak if peak else None
        results["configs"][name] = best
    if set(CONFIG_NAMES) <= set(results["configs"]):
        results["speedup_images_per_s"] = (
            results["configs"]["tuned"]["images_per_s"] / results["configs"]["seed"]["images_per_s"]
        )
    return results


def print_results(results: dict) -> None:
    recipe = results["recipe"]
    g, loc = recipe["global_crops"], recipe["local_crops"]
    print(
        f"\n{results['arch']} {results['model_kwargs'] or ''} on {results['machine']['device']} "
        f"({results['machine']['cores']} cores); channel {results['channel']}; "
        f"{g['number']}x{g['size']} + {loc['number']}x{loc['size']} px crops, head out_dim "
        f"{recipe['head']['out_dim']}; fields {'x'.join(map(str, results['field_shape']))}, cache "
        f"at {results['resize_factor']:g}"
    )
    header = (
        f"{'config':<7} {'prec':<5} {'batch':>5} {'wkrs':>4} {'compile':>7} {'images/s':>9} "
        f"{'step s':>7} {'data wait':>9} {'GPU busy':>8} {'peak MB':>8} {'TFLOP/s':>8} {'MFU':>6}"
    )
    print(header)
    for row in results["configs"].values():
        busy = "-" if row["gpu_busy_fraction"] is None else f"{row['gpu_busy_fraction']:.0%}"
        mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
        print(
            f"{row['config']:<7} {row['precision']:<5} {row['batch_size']:>5} "
            f"{row['num_workers']:>4} "
            f"{str(row['compile']):>7} {row['images_per_s']:>9.2f} {row['step_time_s']:>7.3f} "
            f"{row['data_wait_fraction']:>9.0%} {busy:>8} {row['peak_memory_mb']:>8.0f} "
            f"{row['achieved_tflops']:>8.3f} {mfu:>6}"
        )
    if "speedup_images_per_s" in results:
        print(f"tuned / seed images/s: {results['speedup_images_per_s']:.2f}x")
    for name, reason in results.get("skipped_configs", {}).items():
        print(f"{name}: skipped: {reason}")
    counted = ", ".join(
        f"{row['flop_counter_per_image'] / 1e9:.2f} G" for row in results["configs"].values()
    )
    line = f"FLOP per image per step: FlopCounterMode on a real step {counted}"
    analytic = results["model_flop_per_image"]
    if analytic:
        line += f"; analytic model FLOP {analytic / 1e9:.2f} G = {analytic / 2e9:.2f} GMAC"
    print(
        f"{line}; the issue's ~{results['issue_estimate_gflop_vit_s']:g} G for ViT-S/16 counts "
        "multiply-accumulates (1 MAC = 2 FLOP)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="timm model name")
    parser.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help="JSON: extra timm.create_model kwargs, e.g. '{\"depth\": 2}'",
    )
    parser.add_argument(
        "--config",
        nargs="+",
        default=[str(REPO / "config.yaml")],
        help="config file(s), later overlay earlier: the train recipe (crops, head)",
    )
    parser.add_argument("--channel", default="DAPI", help="a data channel (grey) or rgb")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (workers, compile)"
    )
    parser.add_argument(
        "--profile-steps", type=int, default=5, help="CUDA: profiled steps for GPU busy"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per configuration, interleaved; the fastest is reported",
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIG_NAMES), help="comma list of seed, tuned"
    )
    parser.add_argument(
        "--seed-batch",
        type=int,
        default=16,
        help="seed batch size per GPU (the seed's: 16; smaller for big models on CPU)",
    )
    parser.add_argument("--tuned-batch", type=int, default=64, help="tuned batch size per GPU")
    parser.add_argument(
        "--tuned-workers",
        type=int,
        default=min(available_cores(), 8),
        help="tuned loader workers (default: min(cores, 8))",
    )
    parser.add_argument("--compile", action="store_true", help="tuned: torch.compile the backbones")
    parser.add_argument(
        "--field-shape",
        type=int,
        nargs=2,
        default=[1024, 1280],
        metavar=("H", "W"),
        help="raw field (TIFF) shape",
    )
    parser.add_argument("--resize-factor", type=float, default=0.5, help="cache resize factor")
    parser.add_argument(
        "--peak-tflops", type=float, help="device peak for MFU (default: by card name)"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--tmpdir", help="where to write the fields and cache (default: system temp)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke: tiny model, demo recipe and field size, 1 + 2 steps, batch 8",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.model_kwargs = args.model_kwargs or dict(TINY_MODEL)
        args.config = [str(REPO / "config.yaml"), str(REPO / "config" / "demo.yaml")]
        args.steps, args.warmup, args.profile_steps, args.tuned_batch = 2, 1, 1, 8
        args.field_shape, args.resize_factor = [204, 256], 1.0
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = set(args.configs) - set(CONFIG_NAMES)
    if unknown or not args.configs:
        parser.error(f"--configs: choose from {', '.join(CONFIG_NAMES)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    positive = (args.steps, args.repeats, args.seed_batch, args.tuned_batch, args.tuned_workers + 1)
    if min(positive) < 1 or args.warmup < 0:
        parser.error(
            "--steps, --repeats and the batch sizes must be positive; --warmup and "
            "--tuned-workers >= 0"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print_results(results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
