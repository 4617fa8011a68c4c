"""Extraction memory: how many images one GPU can embed per batch, from the model's shapes.

An extraction job holds the backbone's weights (fp32, as loaded) and, per batch, the live
activations of one inference forward over each image's evaluation windows (windows of equal
size share a forward, as `extract.embed_crops` runs them). Both are counted on the meta device
(no memory, no compute; evaluate/extraction_counts.py), by the extraction job itself for
`--batch-size auto` and, through the count cache, by the planner (evaluate/extraction_plan.py):

- weights: parameter and buffer bytes of the backbone built on meta;
- per image: a TorchDispatchMode adds the bytes of every tensor an op creates and subtracts
  them when the tensor is freed (views count with their base), under torch.inference_mode; the
  peak over the forward at two batch sizes, and their slope, so fixed costs drop out. On CUDA
  the forward runs under bf16 autocast with fp32 weights: the tracker casts the inputs of the
  ops autocast runs in bf16 (matmuls, convolutions, attention) and leaves the rest as promoted
  (the residual stream and the norms stay fp32, as under autocast; tests: the same bytes as a
  real CPU bf16 autocast forward). An op's own scratch is not seen (the mode sees its inputs
  and outputs): attention counts as its output, as the flash and memory-efficient kernels keep
  no seq^2 matrix. Autocast caches no weight casts under inference_mode (measured on CPU).

batch = floor((memory - margin(weights)) / (per_image x (1 + MARGIN_FRACTION))), at least 1,
at most `max_batch`; margin = x (1 + MARGIN_FRACTION) + FIXED_OVERHEAD_GB (CUDA context,
allocator), as the training estimate (train/memory.py) uses.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.crops import evaluation_crops
from workflow_scripts.memory_margin import FIXED_OVERHEAD_GB, GB, MARGIN_FRACTION

if TYPE_CHECKING:
    import torch

MB = 1e6
CPU_BATCH_SIZE = 64  # `auto` off CUDA: no device memory to plan against
# `auto` never goes beyond this: it bounds a batch's host-side crops (512 images' 4 windows
# at 224 x 256: 1.4 GB of fp32, per batch the loader prefetches)
MAX_AUTO_BATCH = 512
# Host memory of an extraction job: the fp32 weights, once (loaded into a meta-built model),
# + half again for a dtype conversion or the next epoch's file read while the model is
# moved + the base (libraries, CUDA, the cache's memmapped pages, loader workers).
HOST_WEIGHTS_FACTOR = 1.5
HOST_BASE_MB = 8000


@dataclass(frozen=True)
class ExtractionPlan:
    arch: str
    weights_gb: float
    per_image_mb: float
    memory_gb: float
    batch_size: int  # what `auto` uses; 0: even one image does not fit
    room: int  # images that fit, before the MAX_AUTO_BATCH cap

    @property
    def fits(self) -> bool:
        return self.batch_size >= 1

    def line(self) -> str:
        batch = f"batch {self.batch_size}" if self.fits else "does not fit"
        if self.room > self.batch_size:
            batch += f" (capped; {self.room} would fit)"
        return (
            f"extraction plan {self.arch}: weights {self.weights_gb:.2f} GB, "
            f"{self.per_image_mb:.1f} MB per image, {batch} at {self.memory_gb:g} GB"
        )


def window_sizes(height: int, width: int, settings: dict) -> list[tuple[int, int, int]]:
    """(windows, out_height, out_width) per forward of one image: equal sizes share one."""
    counts: dict[tuple[int, int], int] = {}
    for crop in evaluation_crops(height, width, settings):
        key = (crop.out_height, crop.out_width)
        counts[key] = counts.get(key, 0) + 1
    return [(n, h, w) for (h, w), n in counts.items()]


def host_mem_mb_for(weights_bytes: int) -> int:
    """mem_mb an extraction job needs on the host for a backbone of `weights_bytes` (before
    any configured floor)."""
    return math.ceil(HOST_WEIGHTS_FACTOR * weights_bytes / MB + HOST_BASE_MB)


def extraction_dtype(device_type: str) -> str:
    """The autocast dtype extraction runs on `device_type`: bf16 on CUDA, none (fp32) elsewhere."""
    return "bfloat16" if device_type == "cuda" else "float32"


def estimate(
    arch: str, model_kwargs: dict, settings: dict, field: tuple[int, int], device_type: str
) -> tuple[int, float]:
    """(weights bytes, live activation bytes per image) of extraction on `device_type`
    (bf16 autocast on cuda, fp32 elsewhere); `field` = the cached image's (height, width).
    Counted now, on the meta device (the planner's cached copy: evaluate/extraction_plan.py)."""
    from workflow_scripts.evaluate import extraction_counts  # torch

    model = {"arch": arch, "model_kwargs": model_kwargs}
    windows = window_sizes(*field, settings)
    dtype = extraction_dtype(device_type)
    weights = extraction_counts.count_weights(model)["weights_bytes"]
    per_image = extraction_counts.count_per_image({**model, "windows": windows, "dtype": dtype})
    return weights, per_image["per_image_bytes"]


def derive_batch(
    weights_bytes: float, per_image_bytes: float, memory_gb: float, max_batch: int = MAX_AUTO_BATCH
) -> int:
    """Images per batch so that weights + batch x per image, with the margin, fit `memory_gb`;
    0 when not even one image does."""
    room = memory_gb * GB - needed_bytes(weights_bytes, 0, 0)
    per_image = per_image_bytes * (1 + MARGIN_FRACTION)
    if room < per_image:
        return 0
    return max(1, min(max_batch, math.floor(room / per_image)))


def needed_bytes(weights_bytes: float, per_image_bytes: float, batch: int) -> float:
    """Bytes one GPU needs for a batch, margin included."""
    return (weights_bytes + batch * per_image_bytes) * (1 + MARGIN_FRACTION) + (
        FIXED_OVERHEAD_GB * GB
    )


def plan_from_counts(
    arch: str,
    weights_bytes: float,
    per_image_bytes: float,
    memory_gb: float,
    max_batch: int = MAX_AUTO_BATCH,
) -> ExtractionPlan:
    """The extraction plan of `arch` on a GPU of `memory_gb`, from its counts."""
    return ExtractionPlan(
        arch=arch,
        weights_gb=round(weights_bytes / GB, 3),
        per_image_mb=round(per_image_bytes / MB, 2),
        memory_gb=memory_gb,
        batch_size=derive_batch(weights_bytes, per_image_bytes, memory_gb, max_batch),
        room=derive_batch(weights_bytes, per_image_bytes, memory_gb, sys.maxsize),
    )


def plan(
    arch: str,
    model_kwargs: dict,
    settings: dict,
    field: tuple[int, int],
    memory_gb: float,
    max_batch: int = MAX_AUTO_BATCH,
) -> ExtractionPlan:
    """The CUDA extraction plan of `arch` on a GPU of `memory_gb`."""
    weights, per_image = estimate(arch, model_kwargs, settings, field, "cuda")
    return plan_from_counts(arch, weights, per_image, memory_gb, max_batch)


def auto_batch_size(
    arch: str,
    model_kwargs: dict,
    settings: dict,
    field: tuple[int, int],
    device: torch.device,
    max_batch: int = MAX_AUTO_BATCH,
) -> tuple[int, str]:
    """`--batch-size auto`: (batch, the plan line). CUDA: from the device's free memory;
    elsewhere CPU_BATCH_SIZE. InputError when one image does not fit."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE, f"batch size auto on {device.type}: {CPU_BATCH_SIZE}"
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    result = plan(arch, model_kwargs, settings, field, free / GB, max_batch)
    if not result.fits:
        needed = needed_bytes(result.weights_gb * GB, result.per_image_mb * MB, 1) / GB
        raise InputError(
            f"--batch-size auto: architecture {arch} needs about {needed:.1f} GB to extract "
            f"one image (weights {result.weights_gb:.1f} GB), but {free / GB:.1f} GB of "
            f"{device} are free"
        )
    return result.batch_size, result.line()
