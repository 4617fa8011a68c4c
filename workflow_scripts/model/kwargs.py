"""Planning-time check of each architecture's model_kwargs (imported by rules/common.smk only).

A module of its own, apart from workflow_scripts.config: it imports torch and timm, and the CPU
rules that import config must not depend on them (workflow_scripts.environments follows imports).
"""

from __future__ import annotations

from workflow_scripts.errors import InputError


def check_model_kwargs(config: dict) -> None:
    """Build each architecture with its model_kwargs on the meta device (no memory, no
    weights), so a typo stops `snakemake -n` instead of the training job hours later."""
    entries = [(i, e) for i, e in enumerate(config["architectures"]) if e.get("model_kwargs")]
    if not entries:
        return  # the usual case: no torch import while planning
    import timm
    import torch

    for i, entry in entries:
        try:
            with torch.device("meta"):
                timm.create_model(
                    entry["name"], pretrained=False, num_classes=0, **entry["model_kwargs"]
                )
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise InputError(
                f"config key 'architectures.{i}.model_kwargs': {entry['model_kwargs']} does not "
                f"build {entry['name']}: {type(err).__name__}: {err}"
            ) from None
