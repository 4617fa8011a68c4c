"""The planner's view of extraction: the plan line and an extraction job's host memory, from
the meta-device counts (evaluate/extraction_counts.py) kept in the count cache (count_cache.py).

Planning only (the planner CLI, the Snakefile's resources): extraction jobs count for themselves
(extraction_memory.auto_batch_size), so this module and the cache are none of their code inputs.
"""

from __future__ import annotations

from workflow_scripts import count_cache
from workflow_scripts.evaluate import extraction_memory
from workflow_scripts.evaluate.extraction_memory import ExtractionPlan

COUNTING_MODULE = "workflow_scripts.evaluate.extraction_counts"


def _count_weights(inputs: dict) -> dict:
    from workflow_scripts.evaluate import extraction_counts  # torch, timm: only when not cached

    return extraction_counts.count_weights(inputs)


def _count_per_image(inputs: dict) -> dict:
    from workflow_scripts.evaluate import extraction_counts

    return extraction_counts.count_per_image(inputs)


def weights_bytes(arch: str, model_kwargs: dict) -> int:
    inputs = {"arch": arch, "model_kwargs": model_kwargs}
    counts = count_cache.cached(
        "extraction_weights", inputs, COUNTING_MODULE, _count_weights, ("weights_bytes",)
    )
    return counts["weights_bytes"]


def per_image_bytes(arch: str, model_kwargs: dict, windows: list, dtype: str) -> float:
    inputs = {"arch": arch, "model_kwargs": model_kwargs, "windows": windows, "dtype": dtype}
    counts = count_cache.cached(
        "extraction_per_image", inputs, COUNTING_MODULE, _count_per_image, ("per_image_bytes",)
    )
    return counts["per_image_bytes"]


def host_mem_mb(arch: str, model_kwargs: dict) -> int:
    """mem_mb an extraction job of `arch` needs on the host (before any configured floor)."""
    return extraction_memory.host_mem_mb_for(weights_bytes(arch, model_kwargs))


def plan_for_config(config: dict, arch: str, memory_gb: float) -> ExtractionPlan:
    """The CUDA extraction plan of `arch` on a GPU of `memory_gb`, with the configuration's
    evaluation windows on its cached field."""
    from workflow_scripts import config as config_module
    from workflow_scripts.evaluate.crops import cached_field, extraction_settings

    field = cached_field(config["data"]["image_shape"], config["preprocess"]["resize_factor"])
    kwargs = config_module.architecture(config, arch).get("model_kwargs", {})
    windows = extraction_memory.window_sizes(*field, extraction_settings(config["evaluate"]))
    dtype = extraction_memory.extraction_dtype("cuda")
    return extraction_memory.plan_from_counts(
        arch,
        weights_bytes(arch, kwargs),
        per_image_bytes(arch, kwargs, windows, dtype),
        memory_gb,
    )
