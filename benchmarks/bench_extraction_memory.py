"""Extraction memory: the meta-device estimate (workflow_scripts/evaluate/extraction_memory.py)
against real CPU forwards, per image (the slope between two batch sizes), fp32.

    python benchmarks/bench_extraction_memory.py [--json out.json]
    python benchmarks/bench_extraction_memory.py --cuda-arch vit_large_patch16_dinov3.lvd1689m

CPU rows: `meta` = the estimate; `tracked` = the same live-bytes tracker on real CPU tensors;
`process` = the growth of the process's peak resident memory (VmHWM, reset through
/proc/self/clear_refs) over one forward, measured in a child process with one thread and
glibc's mmap threshold fixed (freed activations go back to the system, so each forward's peak
is its own). `--cuda-arch`: on a GPU, torch.cuda.max_memory_allocated of extraction at the
derived batch (bf16 autocast, fp32 weights) against weights + batch x the per-image estimate.
`--cuda-arch` with `--meta-init` builds the model on meta and fills it on the GPU (no CPU copy,
random values; for the 7B) and extracts `--images` images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from workflow_scripts.evaluate import extraction_counts  # noqa: E402
from workflow_scripts.evaluate import extraction_memory as em  # noqa: E402

ARCH = "vit_small_patch16_dinov3.lvd1689m"
MODELS = {  # name: model_kwargs of the small ViT's timm name
    "tiny": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    "small": {},
}
# the default seed windows on the default 512 x 640 cached field
SETTINGS = {
    "crops": "seed",
    "seed_windows": {
        "field": [512, 640],
        "boxes": [
            [64, 32, 320, 256],
            [320, 32, 544, 256],
            [64, 256, 320, 480],
            [320, 256, 544, 480],
        ],
        "multiple": 16,
    },
    "embedding": "cls",
    "crop_median": "lower",
}
FIELD = (512, 640)
BATCHES = (1, 5)


def _model(model_kwargs: dict, arch: str = ARCH):
    from workflow_scripts.model.backbone import build_backbone

    torch.manual_seed(0)
    return build_backbone(arch, "none", model_kwargs).eval().requires_grad_(False)


def _status(key: str) -> int:
    """/proc/self/status value in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(model_kwargs: dict) -> dict:
    """In a fresh process: VmHWM growth of one forward per batch size."""
    torch.set_num_threads(1)
    model = _model(model_kwargs)
    windows = em.window_sizes(*FIELD, SETTINGS)
    extraction_counts.forward_peak_bytes(model, windows, 1, "cpu", None)  # warm-up: kernels, caches
    growth = {}
    for batch in BATCHES:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _status("VmRSS")
        extraction_counts.forward_peak_bytes(model, windows, batch, "cpu", None)
        growth[batch] = _status("VmHWM") - base
    return growth


def process_per_image(model_kwargs: dict) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(model_kwargs)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    growth = {int(k): v for k, v in json.loads(result.stdout.splitlines()[-1]).items()}
    return (growth[BATCHES[1]] - growth[BATCHES[0]]) / (BATCHES[1] - BATCHES[0])


def tracked_per_image(model_kwargs: dict) -> float:
    model = _model(model_kwargs)
    windows = em.window_sizes(*FIELD, SETTINGS)
    low, high = (
        extraction_counts.forward_peak_bytes(model, windows, b, "cpu", None) for b in BATCHES
    )
    return (high - low) / (BATCHES[1] - BATCHES[0])


def cpu_rows(names=tuple(MODELS)) -> list[dict]:
    rows = []
    for name in names:
        kwargs = MODELS[name]
        weights, meta = em.estimate(ARCH, kwargs, SETTINGS, FIELD, "cpu")
        rows.append(
            {
                "model": name,
                "weights_mb": weights / em.MB,
                "meta_mb_per_image": meta / em.MB,
                "tracked_mb_per_image": tracked_per_image(kwargs) / em.MB,
                "process_mb_per_image": process_per_image(kwargs) / em.MB,
            }
        )
    return rows


def cuda_check(arch: str, meta_init: bool, images: int, memory_gb: float | None) -> dict:
    """Extraction on the GPU at the derived batch: peak allocated vs the estimate."""
    from timm.models._manipulate import reinit_non_persistent_buffers

    from workflow_scripts.model.embed import embed_crops
    from workflow_scripts.model.precision import Precision

    device = torch.device("cuda")
    free = torch.cuda.mem_get_info(device)[0] / em.GB
    result = em.plan(arch, {}, SETTINGS, FIELD, memory_gb or free)
    batch = result.batch_size
    print(result.line(), f"(free {free:.1f} GB)", flush=True)
    if meta_init:  # no CPU copy: meta, then memory on the GPU, random values
        with torch.device("meta"):
            model = _model({}, arch)
        model = model.to_empty(device=device)
        with torch.no_grad():
            for tensor in (*model.parameters(), *model.buffers()):
                if tensor.is_floating_point():
                    tensor.normal_(0, 0.02)
        reinit_non_persistent_buffers(model)
    else:
        model = _model({}, arch).to(device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated()
    windows = em.window_sizes(*FIELD, SETTINGS)
    crops = [torch.rand(min(batch, images), 3, h, w) for n, h, w in windows for _ in range(n)]
    start = time.perf_counter()
    with torch.inference_mode():
        out = embed_crops(
            model, torch.nn.Identity(), crops, "cls", Precision.resolve("auto", "cuda"), device
        )
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    # the estimate's per-image bytes on top of what the weights really take on the GPU
    estimated = weights + len(crops[0]) * result.per_image_mb * em.MB
    row = {
        "arch": arch,
        "batch": len(crops[0]),
        "derived_batch": batch,
        "weights_gb_allocated": weights / em.GB,
        "peak_gb": peak / em.GB,
        "estimate_gb_no_margin": estimated / em.GB,
        "peak_over_estimate": peak / estimated,
        "with_margin_gb": em.needed_bytes(
            result.weights_gb * em.GB, result.per_image_mb * em.MB, len(crops[0])
        )
        / em.GB,
        "device_gb": torch.cuda.get_device_properties(device).total_memory / em.GB,
        "seconds": time.perf_counter() - start,
        "finite": bool(torch.isfinite(out).all()),
    }
    print(json.dumps(row), flush=True)
    print(
        f"extraction memory {arch} on cuda: batch {row['batch']}, peak {row['peak_gb']:.2f} GB, "
        f"estimate {row['estimate_gb_no_margin']:.2f} GB (+margin {row['with_margin_gb']:.2f}), "
        f"planned against {result.memory_gb:.0f} GB of {row['device_gb']:.0f} GB",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="CPU: the tiny ViT only")
    parser.add_argument("--cuda-arch", help="on a GPU: check this architecture")
    parser.add_argument("--meta-init", action="store_true")
    parser.add_argument("--images", type=int, default=10**6, help="at most this many per batch")
    parser.add_argument("--memory-gb", type=float, help="plan against this instead of free memory")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if args.cuda_arch:
        if not torch.cuda.is_available():
            print(f"{args.cuda_arch}: skipped, no CUDA device")
            return 0
        rows = [cuda_check(args.cuda_arch, args.meta_init, args.images, args.memory_gb)]
    else:
        rows = cpu_rows(("tiny",) if args.quick else tuple(MODELS))
        print(f"{'model':8} {'weights MB':>11} {'meta MB/img':>12} {'tracked':>9} {'process':>9}")
        for r in rows:
            print(
                f"{r['model']:8} {r['weights_mb']:11.1f} {r['meta_mb_per_image']:12.2f} "
                f"{r['tracked_mb_per_image']:9.2f} {r['process_mb_per_image']:9.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
