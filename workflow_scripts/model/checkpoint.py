"""Backbone checkpoints: an evaluated epoch's teacher backbone as safetensors + JSON.

`epoch_NNNN.safetensors` holds the backbone in timm's names (no DINO head), so that timm (or
extraction) loads it strictly; `epoch_NNNN.json` records arch, epoch, model_kwargs and the train
settings (docs/formats.md). Training writes them (train/resume_state.py keeps copies beside the
resume state), extraction reads them. The full resume state is train/resume_state.py's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.errors import InputError
from workflow_scripts.model.backbone import backbone_from_state_dict, weights_mismatch
from workflow_scripts.tables import read_json

REQUIRED_META = ("arch", "epoch", "model_kwargs")


def checkpoint_path(directory: str | os.PathLike, epoch: int) -> Path:
    return Path(directory) / f"epoch_{epoch:04d}.safetensors"


def meta_path(checkpoint: str | os.PathLike) -> Path:
    return Path(checkpoint).with_suffix(".json")


def save_backbone_checkpoint(
    directory: str | os.PathLike, backbone: nn.Module | dict[str, torch.Tensor], meta: dict
) -> Path:
    """Write `epoch_{meta['epoch']:04d}.safetensors` and its JSON atomically; return the former."""
    path = checkpoint_path(directory, meta["epoch"])
    save_weights(backbone, path, metadata={"arch": meta["arch"], "epoch": str(meta["epoch"])})
    write_json(meta_path(path), meta)
    return path


def save_weights(
    model: nn.Module | dict[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: dict[str, str] | None = None,
) -> None:
    """The model's state_dict (or a state dict, e.g. gathered from FSDP shards) as safetensors
    (CPU, contiguous), written atomically."""
    state = model if isinstance(model, dict) else model.state_dict()
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        _sort_header_metadata(tmp)


def _sort_header_metadata(path: Path) -> None:
    """safetensors writes `__metadata__` in hash-map order, which changes from call to call;
    sorted keys make the same weights and metadata give the same bytes (a resumed run's
    checkpoint equals a clean run's). Same content, so the header keeps its length."""
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        raw = fh.read(size)
        header = json.loads(raw)
        if "__metadata__" not in header:
            return
        ordered = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for a valid header; never corrupt the file
            raise ValueError(f"{path}: unexpected safetensors header")
        fh.seek(8)
        fh.write(text.ljust(size, b" "))


def load_backbone_checkpoint(
    path: str | os.PathLike, expected_arch: str | None = None
) -> tuple[nn.Module, dict]:
    """Rebuild the backbone of `epoch_NNNN.safetensors` from its JSON and load it strictly.

    Returns (model in eval mode on CPU, meta dict). InputError names the file when it is missing
    or damaged, when its JSON lacks a key, when the weights do not fit the recorded
    architecture, or when `expected_arch` is given and differs from the recorded one.
    """
    path = Path(path)
    meta_file = meta_path(path)
    for required in (path, meta_file):
        if not required.is_file():
            raise InputError(f"checkpoint file not found: {required}")
    meta = read_json(meta_file, required=REQUIRED_META)
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise InputError(f"checkpoint {path} is for arch {meta['arch']}, not {expected_arch}")
    try:
        state_dict = load_file(path)
    except (safetensors.SafetensorError, OSError) as err:
        raise InputError(f"checkpoint {path} cannot be read: {err}") from err
    try:  # built on meta: the weights are held once (backbone_from_state_dict)
        model = backbone_from_state_dict(meta["arch"], state_dict, meta["model_kwargs"])
    except RuntimeError as err:
        raise weights_mismatch(
            f"checkpoint {path}", meta["arch"], meta["model_kwargs"], err
        ) from err
    return model.eval(), meta
