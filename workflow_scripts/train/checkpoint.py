"""Checkpoints: evaluated-epoch backbones (safetensors + JSON) and the full resume state.

Two kinds, two places (docs/formats.md):
- `epoch_NNNN.safetensors` + `.json`: the teacher backbone (timm names, no DINO head) of an
  evaluated epoch. Kept in `{resume_dir}/epochs/` and re-exported into the Snakemake output
  folder, because Snakemake deletes a job's outputs before rerunning it.
- `{resume_dir}/state.pt`: everything needed to continue after the last finished epoch,
  rewritten atomically every epoch; tensors and plain containers only (weights_only loading).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.disk_space import ensure_free, human
from workflow_scripts.errors import InputError, disk_full
from workflow_scripts.tables import read_json
from workflow_scripts.train.backbone import backbone_from_state_dict, weights_mismatch

RESUME_STATE = "state.pt"
EPOCHS_DIR = "epochs"
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


def save_resume_state(path: str | os.PathLike, state: dict) -> None:
    """torch.save to a temp file + rename: a kill mid-write leaves the previous state intact.
    A full disk is one line naming the file and the bytes needed (torch itself reports a short
    write as "unexpected pos")."""
    needed = _tensor_bytes(state)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # the old state stays until the new one is complete: the new one needs room of its own
    ensure_free(Path(path).parent, needed, f"the resume state {Path(path).name}")
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as err:
        if not disk_full(err):
            raise
        raise InputError(
            f"{path}: no space left on device writing the resume state: needs about {needed} "
            f"bytes ({human(needed)}); the previous state is kept"
        ) from err


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested state (what torch.save writes, give or take headers)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_resume_state(path: str | os.PathLike) -> dict | None:
    """The saved resume state, or None when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, unpickling refusal, ...: all mean "damaged"
        raise InputError(
            f"resume state {path} cannot be read ({type(err).__name__}: {err}); "
            f"delete or move it to start this training job from scratch"
        ) from err


def set_aside(resume_dir: str | os.PathLike, label: str) -> Path:
    """Move the resume state, epoch copies and log into `{resume_dir}/stale-{label}-{time}/`."""
    resume_dir = Path(resume_dir)
    target = resume_dir / f"stale-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True)
    for name in (RESUME_STATE, EPOCHS_DIR, "log.jsonl"):
        if (resume_dir / name).exists():
            os.replace(resume_dir / name, target / name)
    return target


def export_checkpoints(source_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Hard-link (or copy, across file systems) every checkpoint pair of `source_dir` into
    `out_dir`, each atomically. Returns the exported safetensors paths."""
    exported = []
    for checkpoint in sorted(Path(source_dir).glob("epoch_*.safetensors")):
        for source in (checkpoint, meta_path(checkpoint)):
            _link_or_copy(source, Path(out_dir) / source.name)
        exported.append(Path(out_dir) / checkpoint.name)
    return exported


def _link_or_copy(source: Path, target: Path) -> None:
    # rename() onto another link of the same file is a no-op that would leave the temp behind
    if target.exists() and os.path.samefile(source, target):
        return
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
