"""Extraction's meta-device counts: the backbone's weight bytes and the live bytes of one
inference forward per image (the method: evaluate/extraction_memory.py's docstring).

`count_weights(inputs)` and `count_per_image(inputs)` read only `inputs` (architecture,
model_kwargs; and the windows and autocast dtype), so the planner can cache them under a digest
of them (count_cache.py, evaluate/extraction_plan.py). Both build the backbone once per process.
"""

from __future__ import annotations

import functools
import json
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

PROBE_BATCHES = (1, 3)  # the two batch sizes of the slope
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


@functools.lru_cache(maxsize=4)
def _meta_backbone(arch: str, model_kwargs_json: str):
    """Built once for the weights and the forward (a meta forward leaves the model as it was)."""
    from workflow_scripts.model.backbone import NO_WEIGHTS, build_backbone

    with torch.device("meta"):
        model = build_backbone(arch, NO_WEIGHTS, json.loads(model_kwargs_json))
    return model.eval().requires_grad_(False)


def meta_backbone(arch: str, model_kwargs: dict):
    return _meta_backbone(arch, json.dumps(model_kwargs, sort_keys=True))


def count_weights(inputs: dict) -> dict[str, int]:
    """{'weights_bytes'}: parameter and buffer bytes of the backbone, as loaded (fp32)."""
    model = meta_backbone(inputs["arch"], inputs["model_kwargs"])
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {"weights_bytes": weights}


def count_per_image(inputs: dict) -> dict[str, float]:
    """{'per_image_bytes'}: the slope of the forward's peak over PROBE_BATCHES (fixed costs
    drop out) for inputs' windows [(n, height, width), ...] under inputs' dtype (float32: no
    autocast)."""
    model = meta_backbone(inputs["arch"], inputs["model_kwargs"])
    windows = [tuple(w) for w in inputs["windows"]]
    dtype = None if inputs["dtype"] == "float32" else getattr(torch, inputs["dtype"])
    low, high = (forward_peak_bytes(model, windows, b, "meta", dtype) for b in PROBE_BATCHES)
    return {"per_image_bytes": (high - low) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])}
