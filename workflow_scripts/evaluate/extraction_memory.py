"""Extraction memory: how many images one GPU can embed per batch, from the model's shapes.

An extraction job holds the backbone's weights (fp32, as loaded) and, per batch, the live
activations of one inference forward over each image's evaluation windows (windows of equal
size share a forward, as `extract.embed_crops` runs them). Both are measured on the meta device
(no memory, no compute):

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

import functools
import json
import math
import sys
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.crops import evaluation_crops
from workflow_scripts.memory_margin import FIXED_OVERHEAD_GB, GB, MARGIN_FRACTION

MB = 1e6
CPU_BATCH_SIZE = 64  # `auto` off CUDA: no device memory to plan against
# `auto` never goes beyond this: it bounds a batch's host-side crops (512 images' 4 windows
# at 224 x 256: 1.4 GB of fp32, per batch the loader prefetches)
MAX_AUTO_BATCH = 512
PROBE_BATCHES = (1, 3)  # the two batch sizes of the slope
# Host memory of an extraction job: the fp32 weights, once (loaded into a meta-built model),
# + half again for a dtype conversion or the next epoch's file read while the model is
# moved + the base (libraries, CUDA, the cache's memmapped pages, loader workers).
HOST_WEIGHTS_FACTOR = 1.5
HOST_BASE_MB = 8000
# aten ops autocast runs in the lower precision (torch's autocast list; under inference_mode
# the dispatch mode sees the composite ops, e.g. linear, not their addmm)
LOWER_PRECISION_OPS = {
    torch.ops.aten.linear.default,
    torch.ops.aten.matmul.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.scaled_dot_product_attention.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.convolution.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors created inside the mode that are still alive; `peak` = their most.
    `autocast_dtype`: cast fp32 inputs of LOWER_PRECISION_OPS to it first (autocast's rule)."""

    def __init__(self, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.autocast_dtype = autocast_dtype
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _track(self, tensor: torch.Tensor) -> None:
        # by storage: views (which inference tensors do not mark as such) share their base's;
        # a storage's Python object lives exactly as long as the storage
        storage = tensor.untyped_storage()
        if id(storage) in self._tracked:
            return
        self._tracked.add(id(storage))
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, id(storage), storage.nbytes())

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def _cast(self, value):
        if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
            value = value.to(self.autocast_dtype)
            self._track(value)
        return value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast_dtype is not None and func in LOWER_PRECISION_OPS:
            args, kwargs = tree_map(self._cast, (args, kwargs))
        out = func(*args, **kwargs)
        tree_map(lambda t: self._track(t) if isinstance(t, torch.Tensor) else None, out)
        return out


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


def _meta_backbone(arch: str, model_kwargs: dict):
    from workflow_scripts.model.backbone import NO_WEIGHTS, build_backbone

    with torch.device("meta"):
        return build_backbone(arch, NO_WEIGHTS, model_kwargs).eval().requires_grad_(False)


def forward_peak_bytes(model, windows, batch: int, device, autocast_dtype, embedding="cls"):
    """Peak live bytes of the tensors one extraction batch creates: its windows (made on
    `device`, as the loader's batch arrives) and every forward of `extract.embed`."""
    from workflow_scripts.model.embed import embed

    tracker = LiveBytes(autocast_dtype)
    with torch.inference_mode(), tracker:
        for n, height, width in windows:
            images = torch.zeros(n * batch, 3, height, width, device=device)
            embed(model, images, embedding).float()
            del images
    return tracker.peak


@functools.lru_cache(maxsize=64)
def _weights_bytes(arch: str, model_kwargs_json: str) -> int:
    model = _meta_backbone(arch, json.loads(model_kwargs_json))
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def host_mem_mb(arch: str, model_kwargs: dict) -> int:
    """mem_mb an extraction job of `arch` needs on the host (before any configured floor)."""
    weights = _weights_bytes(arch, json.dumps(model_kwargs, sort_keys=True))
    return math.ceil(HOST_WEIGHTS_FACTOR * weights / MB + HOST_BASE_MB)


@functools.lru_cache(maxsize=64)
def _measure(arch: str, model_kwargs_json: str, windows_json: str, dtype_name: str):
    model = _meta_backbone(arch, json.loads(model_kwargs_json))
    weights = _weights_bytes(arch, model_kwargs_json)
    windows = [tuple(w) for w in json.loads(windows_json)]
    dtype = None if dtype_name == "float32" else getattr(torch, dtype_name)
    low, high = (forward_peak_bytes(model, windows, b, "meta", dtype) for b in PROBE_BATCHES)
    return weights, (high - low) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])


def estimate(
    arch: str, model_kwargs: dict, settings: dict, field: tuple[int, int], device_type: str
) -> tuple[int, float]:
    """(weights bytes, live activation bytes per image) of extraction on `device_type`
    (bf16 autocast on cuda, fp32 elsewhere); `field` = the cached image's (height, width)."""
    windows = window_sizes(*field, settings)
    dtype = "bfloat16" if device_type == "cuda" else "float32"
    return _measure(arch, json.dumps(model_kwargs, sort_keys=True), json.dumps(windows), dtype)


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
    return ExtractionPlan(
        arch=arch,
        weights_gb=round(weights / GB, 3),
        per_image_mb=round(per_image / MB, 2),
        memory_gb=memory_gb,
        batch_size=derive_batch(weights, per_image, memory_gb, max_batch),
        room=derive_batch(weights, per_image, memory_gb, sys.maxsize),
    )


def plan_for_config(config: dict, arch: str, memory_gb: float) -> ExtractionPlan:
    """`plan` with the configuration's evaluation windows on its cached field."""
    from workflow_scripts import config as config_module
    from workflow_scripts.evaluate.crops import cached_field, extraction_settings

    field = cached_field(config["data"]["image_shape"], config["preprocess"]["resize_factor"])
    kwargs = config_module.architecture(config, arch).get("model_kwargs", {})
    return plan(arch, kwargs, extraction_settings(config["evaluate"]), field, memory_gb)


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
