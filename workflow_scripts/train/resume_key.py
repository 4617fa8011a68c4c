"""What a saved training state must match to be continued: everything the weights depend on.

A resubmitted job (preemption, time limit) continues its run; but when Snakemake reruns training
because its inputs changed — a rebuilt image cache, a new weights file, edited training code, a
different GPU count (global batch) — the old state must not be continued or re-exported.

The world size (processes = GPUs x nodes) is kept beside the key, not in it: a state saved at
another world size differs from this job's only in its global batch, which the opt-in
`train.resume_at_other_world_size` accepts (`world_size_decision`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from workflow_scripts import config as config_module
from workflow_scripts.code_deps import module_files

# Settings that cannot change the trained weights; editing them keeps a run resumable.
# (resume_at_other_world_size: whether a state may be continued, not what it holds)
RESULT_NEUTRAL_SETTINGS = ("num_workers", "resume_at_other_world_size")
TRAINING_PROGRAM = "workflow_scripts.train.cli"


def cache_identity(cache_dir: Path) -> dict:
    """The image cache's settings digest, size, image order and pixels: the content digest the
    cache builder records in meta.json while it writes the arrays (data/cache.py), so replaced
    raw images of the same size give another key and the old state is not continued."""
    meta = json.loads((Path(cache_dir) / "meta.json").read_text())
    image_ids = pd.read_parquet(Path(cache_dir) / "images.parquet", columns=["image_id"])
    order = hashlib.sha256("\n".join(image_ids["image_id"]).encode()).hexdigest()
    keys = ("settings_digest", "n_images", "height", "width", "channels", "content_digest")
    return {key: meta.get(key) for key in keys} | {"image_order": order}


def weights_identity(weights: str) -> dict:
    """A weights file by size and modification time (hashing 25 GB of ViT-7B takes minutes)."""
    path = Path(weights)
    if weights in ("none", "hub") or not path.is_file():
        return {"weights": weights}
    stat = path.stat()
    return {"weights": weights, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def code_identity() -> str:
    """Digest of the training program's source files (it and everything it imports)."""
    sha = hashlib.sha256()
    for path in module_files(TRAINING_PROGRAM):
        sha.update(Path(path).name.encode())
        sha.update(Path(path).read_bytes())
    return sha.hexdigest()


def resume_key(
    *,
    arch: str,
    channel: str,
    settings: dict,
    model_kwargs: dict,
    weights: str,
    cache_dir: Path,
) -> str:
    kept = {k: v for k, v in settings.items() if k not in RESULT_NEUTRAL_SETTINGS}
    return config_module.digest(
        {
            "arch": arch,
            "channel": channel,
            "settings": kept,
            "model_kwargs": model_kwargs,
            "weights": weights_identity(weights),
            "data": cache_identity(cache_dir),
            "code": code_identity(),
        }
    )


def world_size_decision(saved: int, current: int, allowed: bool) -> str | None:
    """None when a state saved by `saved` processes may be continued by `current` ones; else
    why not (the state is then set aside)."""
    if saved == current or allowed:
        return None
    return (
        f"it was saved by {saved} process(es) and this job has {current} (another global "
        "batch); set train.resume_at_other_world_size: true to continue it"
    )
