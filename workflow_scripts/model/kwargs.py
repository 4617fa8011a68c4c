"""Planning-time check of each architecture's model_kwargs (imported by config_check.py only).

A module of its own, apart from workflow_scripts.config: it imports torch and timm, and the CPU
rules that import config must not depend on them (workflow_scripts.environments follows imports).
A build that succeeded is remembered in the count cache (count_cache.py), so a checked
configuration is not built again, nor torch imported, at the next `snakemake -n`.
"""

from __future__ import annotations

from workflow_scripts import count_cache
from workflow_scripts.errors import InputError

MODULE = "workflow_scripts.model.kwargs"


def check_model_kwargs(config: dict) -> None:
    """Build each architecture with its model_kwargs on the meta device (no memory, no
    weights), so a typo stops `snakemake -n` instead of the training job hours later."""
    for i, entry in enumerate(config["architectures"]):
        if not entry.get("model_kwargs"):  # the usual case: nothing to build
            continue
        inputs = {"arch": entry["name"], "model_kwargs": entry["model_kwargs"]}
        try:
            count_cache.cached("model_kwargs", inputs, MODULE, _build, ("parameters",))
        except InputError as err:  # not cached: the next run builds it again
            raise InputError(f"config key 'architectures.{i}.model_kwargs': {err}") from None


def _build(inputs: dict) -> dict[str, int]:
    """{'parameters'} of the model built on the meta device; InputError when it does not build."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(
                inputs["arch"], pretrained=False, num_classes=0, **inputs["model_kwargs"]
            )
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise InputError(
            f"{inputs['model_kwargs']} does not build {inputs['arch']}: {type(err).__name__}: {err}"
        ) from None
    return {"parameters": sum(p.numel() for p in model.parameters())}
