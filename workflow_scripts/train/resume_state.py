"""The resume state of a training job: everything needed to continue after its last epoch.

`{resume_dir}/state.pt` is rewritten atomically every epoch (tensors and plain containers only,
for weights_only loading); `{resume_dir}/epochs/` keeps each evaluated epoch's backbone
checkpoint (model/checkpoint.py), re-exported into the Snakemake output folder, because
Snakemake deletes a job's outputs before rerunning it (docs/formats.md).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from workflow_scripts.atomic import atomic_path
from workflow_scripts.disk_space import ensure_free, human
from workflow_scripts.errors import InputError, disk_full
from workflow_scripts.model.checkpoint import meta_path

RESUME_STATE = "state.pt"
EPOCHS_DIR = "epochs"


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
