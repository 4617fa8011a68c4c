"""Start-up cost of feature extraction: one CLI call per epoch vs one call for all epochs.

The cluster workflow extracts every trained epoch of one (architecture, channel) in one call of
`workflow_scripts.evaluate.extract` (rules/evaluate.smk). This times both ways on the same
synthetic cache and checkpoints, as the rule runs them (separate Python processes, wall clock):

- per epoch: E calls of `--epoch e --checkpoint c --out o`;
- one call:  `--epoch e1 .. eE --checkpoint c1 .. cE --out o1 .. oE`;

and prints the seconds of each and the start-up paid per extra call ((per epoch - one call) /
(E - 1)): importing torch/timm/pandas, reading the cache, CUDA initialisation on a GPU. It also
checks that both ways wrote identical features. Default: the demo's tiny ViT (depth 2, width 64,
64 px crops of 204x256 fields, 688 images, like config/demo.yaml); `--full`: ViT-S/16 at 224 px
on 512x640 fields (the real cache), slow on a CPU.

    python benchmarks/bench_extract_epochs.py [--epochs 4] [--images 688] [--full] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from workflow_scripts.data.cache import write_arrays  # noqa: E402
from workflow_scripts.model.backbone import build_backbone  # noqa: E402
from workflow_scripts.model.checkpoint import save_backbone_checkpoint  # noqa: E402

ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
CLIP_MAX = 10000


def write_cache(folder: Path, n_images: int, shape: tuple[int, int]) -> Path:
    """A one-channel (DAPI) cache of random pixels (workflow_scripts.data.cache's writer)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, CLIP_MAX, size=(n_images, *shape), dtype=np.uint16)
    table = pd.DataFrame(
        {
            "image_id": [f"img{i:05d}" for i in range(n_images)],
            "plate": "P1",
            "compound": "DMSO",
            "moa": "DMSO",
        }
    )
    return write_arrays(
        folder, table, {"DAPI": pixels}, clip_max=CLIP_MAX, settings_digest="benchmark"
    )


def write_checkpoints(folder: Path, epochs: list[int], model_kwargs: dict) -> list[str]:
    paths = []
    for epoch in epochs:
        torch.manual_seed(epoch)
        model = build_backbone(ARCH, "none", model_kwargs)
        meta = {
            "arch": ARCH,
            "channel": "DAPI",
            "epoch": epoch,
            "config_digest": "benchmark",
            "model_kwargs": model_kwargs,
            "in_chans": 3,
            "train_settings": {"input_standardization": "none", "interpolation": "bicubic"},
        }
        paths.append(str(save_backbone_checkpoint(folder, model, meta)))
    return paths


def run_extract(
    common: list[str], epochs: list[int], checkpoints: list[str], outs: list[Path]
) -> float:
    cmd = [
        sys.executable,
        "-m",
        "workflow_scripts.evaluate.extract",
        *common,
        "--epoch",
        *map(str, epochs),
        "--checkpoint",
        *checkpoints,
        "--out",
        *map(str, outs),
    ]
    start = time.perf_counter()
    subprocess.run(
        cmd, cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--images", type=int, default=688)
    parser.add_argument("--workers", type=int, default=0, help="extraction DataLoader workers")
    parser.add_argument(
        "--full", action="store_true", help="ViT-S/16, 224 px crops, 512x640 fields"
    )
    args = parser.parse_args(argv)
    model_kwargs, shape, size = ({}, (512, 640), 224) if args.full else (TINY, (204, 256), 64)
    epochs = list(range(1, args.epochs + 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = write_cache(tmp / "cache", args.images, shape)
        checkpoints = write_checkpoints(tmp / "train", epochs, model_kwargs)
        common = [
            "--arch",
            ARCH,
            "--channel",
            "DAPI",
            "--cache-dir",
            str(cache),
            "--model-kwargs",
            json.dumps(model_kwargs),
            "--batch-size",
            "64",
            "--num-workers",
            str(args.workers),
            "--settings",
            json.dumps({"crop_grid": [2, 2], "input_size": size, "embedding": "cls"}),
        ]
        per_epoch = sum(
            run_extract(common, [e], [c], [tmp / f"single_{e}.parquet"])
            for e, c in zip(epochs, checkpoints)
        )
        one_call = run_extract(
            common, epochs, checkpoints, [tmp / f"multi_{e}.parquet" for e in epochs]
        )
        for e in epochs:
            pd.testing.assert_frame_equal(
                pd.read_parquet(tmp / f"single_{e}.parquet"),
                pd.read_parquet(tmp / f"multi_{e}.parquet"),
            )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = "ViT-S/16 224 px" if args.full else "tiny ViT 64 px"
    startup = (per_epoch - one_call) / max(1, args.epochs - 1)
    print(
        f"{args.epochs} epochs x {args.images} images ({model}, {device}, {args.workers} workers): "
        f"one call per epoch {per_epoch:.1f} s, one call {one_call:.1f} s "
        f"({per_epoch / one_call:.2f}x); start-up per extra call {startup:.1f} s; "
        "features identical"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
