"""The FSDP resume state: torch.distributed.checkpoint (DCP) shards plus a small commit record.

Layout in `{resume_dir}`:
- `sharded/epoch_NNNN/`: DCP checkpoint of student, teacher and optimizer (every rank writes its
  shards; DCP reshards on load, so a state saved by 2 processes loads into 1, or into N);
- `sharded/epoch_NNNN/extra.pt`: loss centre, scaler, each rank's RNG streams (rank 0 writes);
- `sharded_state.json`: {epoch, config_digest, world_size, dir}, written atomically by rank 0
  after every rank finished its shards. It is the commit point: a kill before it leaves the
  previous epoch's state in charge; older epoch directories are deleted after it.

The evaluated-epoch export is unchanged: the teacher backbone's full (unsharded) state dict,
gathered here on every rank, written by rank 0 as single-file safetensors with timm names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from workflow_scripts.atomic import atomic_path, write_json
from workflow_scripts.errors import InputError
from workflow_scripts.tables import read_json
from workflow_scripts.train import distributed

COMMIT_FILE = "sharded_state.json"
SHARDS_DIR = "sharded"
EXTRA_FILE = "extra.pt"


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (collective: every rank must call it; FSDP2 or plain)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def full_backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone part of a MultiCropModel's full state dict, with timm's names
    (collective). Gathered from the root: the backbone is not itself an FSDP module."""
    prefix = "backbone."
    return {
        name.removeprefix(prefix): tensor
        for name, tensor in full_state_dict(model).items()
        if name.startswith(prefix)
    }


def _epoch_dir(resume_dir: Path, epoch: int) -> Path:
    return Path(resume_dir) / SHARDS_DIR / f"epoch_{epoch:04d}"


def _app_state(student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    student_state, optimizer_state = get_state_dict(student, optimizer)
    return {
        "student": student_state,
        "teacher": get_model_state_dict(teacher),
        "optimizer": optimizer_state,
    }


def save(
    resume_dir: Path,
    epoch: int,
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict,
    is_main: bool,
) -> None:
    """Collective: every rank writes its shards of `epoch`; rank 0 writes `extra` (loss
    centre, RNG streams: plain tensors and containers). Not yet the resume state: commit()."""
    directory = _epoch_dir(resume_dir, epoch)
    if is_main and directory.exists():
        shutil.rmtree(directory)  # left by a run killed before its commit
    distributed.barrier()
    dcp.save(_app_state(student, teacher, optimizer), checkpoint_id=directory)
    if is_main:
        with atomic_path(directory / EXTRA_FILE) as tmp:
            torch.save(extra, tmp)
    distributed.barrier()


def commit(resume_dir: Path, epoch: int, config_digest: str, world_size: int) -> None:
    """Rank 0, after save(): make `epoch` the resume state and drop older shard directories."""
    resume_dir = Path(resume_dir)
    write_json(
        resume_dir / COMMIT_FILE,
        {
            "epoch": epoch,
            "config_digest": config_digest,
            "world_size": world_size,
            "dir": os.path.relpath(_epoch_dir(resume_dir, epoch), resume_dir),
        },
    )
    for old in (resume_dir / SHARDS_DIR).glob("epoch_*"):
        if old.name != f"epoch_{epoch:04d}":
            shutil.rmtree(old, ignore_errors=True)


def read_commit(resume_dir: Path) -> dict | None:
    """The committed record {epoch, config_digest, world_size, dir, extra}, or None."""
    path = Path(resume_dir) / COMMIT_FILE
    if not path.is_file():
        return None
    record = read_json(path, required=("epoch", "config_digest", "dir"))
    extra_path = Path(resume_dir) / record["dir"] / EXTRA_FILE
    try:
        record["extra"] = torch.load(extra_path, map_location="cpu", weights_only=True)
    except Exception as err:  # missing, truncated, refused: all mean "damaged"
        raise InputError(
            f"sharded resume state {path} -> {extra_path} cannot be read "
            f"({type(err).__name__}: {err}); delete {path} to start this job from scratch"
        ) from err
    return record


def load(
    resume_dir: Path,
    record: dict,
    student: nn.Module,
    teacher: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> None:
    """Collective: load the committed shards into the (sharded or plain) models and optimizer,
    whatever the world size that saved them."""
    directory = Path(resume_dir) / record["dir"]
    state = _app_state(student, teacher, optimizer)
    saved = set(dcp.FileSystemReader(directory).read_metadata().state_dict_metadata)
    # A parameter that has had no gradient yet (the last layer, frozen in the first epochs) has
    # no optimizer state in the checkpoint, while DCP's state dict of a fresh optimizer holds a
    # placeholder for every parameter: load what was saved and leave the others without state,
    # as in the run that saved it (their first step starts it)
    state["optimizer"]["state"] = {
        name: values
        for name, values in state["optimizer"]["state"].items()
        if all(f"optimizer.state.{name}.{key}" in saved for key in values)
    }
    dcp.load(state, checkpoint_id=directory)
    set_model_state_dict(student, state["student"])
    set_optimizer_state_dict(
        student, optimizer, state["optimizer"], options=StateDictOptions(strict=False)
    )
    set_model_state_dict(teacher, state["teacher"])


def set_aside(resume_dir: Path, target: Path) -> None:
    """Move a sharded state (commit record and shards) into `target` (checkpoint.set_aside's)."""
    resume_dir = Path(resume_dir)
    target.mkdir(parents=True, exist_ok=True)
    for name in (COMMIT_FILE, SHARDS_DIR):
        if (resume_dir / name).exists():
            os.replace(resume_dir / name, target / name)
