"""The workflow's own GPU jobs once, end to end, without Snakemake: train CLI then extract CLI.

Writes a small synthetic image cache (docs/formats.md; random fields of the demo's size), runs
`python -m workflow_scripts.train.cli` on it with the demo recipe (tiny ViT, 2 epochs) exactly
as rules/train.smk does, checks that its log names the device (CUDA when there is one: bf16
autocast, fused AdamW, pinned memory) and that an evaluated-epoch checkpoint came out, then
`python -m workflow_scripts.evaluate.extract` on that checkpoint with the workflow's loader
settings, and checks one finite feature row per image. Prints each job's wall time.

    python benchmarks/gpu_e2e.py --work /tmp/e2e [--images 96] [--num-workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_train_step import random_fields, write_cache  # noqa: E402

from workflow_scripts import config as config_module  # noqa: E402
from workflow_scripts.evaluate import crops  # noqa: E402
from workflow_scripts.tables import read_table  # noqa: E402

CHANNEL = "DAPI"
EPOCHS = 2


def run_job(name: str, argv: list[str], log: Path) -> float:
    """Run one workflow CLI as its rule does (output to a log); its wall time. On failure the
    log's tail is printed and the process exits with the job's status."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        status = subprocess.run(
            [sys.executable, "-m", *argv], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO
        ).returncode
    seconds = time.perf_counter() - start
    print(f"{name}: exit {status} in {seconds:.1f} s (log {log})", flush=True)
    if status != 0:
        print("".join(log.read_text().splitlines(keepends=True)[-30:]), file=sys.stderr)
        raise SystemExit(f"error: {name} failed with exit status {status}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="scratch folder (emptied first)")
    parser.add_argument("--images", type=int, default=96, help="cache images")
    parser.add_argument("--num-workers", type=int, default=4, help="loader workers, both jobs")
    args = parser.parse_args(argv)

    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    config = config_module.load(
        [REPO / "config.yaml", REPO / "config" / "demo.yaml"],
        schema=config_module.has_schema_checker(),
    )
    arch = config_module.architecture_names(config)[0]
    entry = config_module.architecture(config, arch)
    settings = config_module.deep_merge(
        config_module.train_settings(config, arch),
        {
            "epochs": EPOCHS,
            "checkpoint_every": EPOCHS,
            "num_workers": args.num_workers,
        },
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    cache = args.work / "cache"
    clip_max = int(config["preprocess"]["clip_max"])
    fields = random_fields(16, tuple(config["data"]["image_shape"]), clip_max)
    write_cache(cache, fields, args.images, [CHANNEL], 1.0, clip_max)
    model_kwargs = json.dumps(entry["model_kwargs"])

    train_dir = args.work / "train"
    train_log = args.work / "train.log"
    train_s = run_job(
        "train",
        [
            "workflow_scripts.train.cli",
            "--arch",
            arch,
            "--channel",
            CHANNEL,
            "--cache-dir",
            str(cache),
            "--weights",
            "none",
            "--model-kwargs",
            model_kwargs,
            "--settings",
            json.dumps(settings),
            "--out-dir",
            str(train_dir),
            "--resume-dir",
            str(args.work / "resume"),
        ],
        train_log,
    )
    device_lines = [
        line
        for line in train_log.read_text().splitlines()
        if "process(es) on" in line or line.startswith(("note:", "warning:"))
    ]
    print("training log:", *device_lines, sep="\n  ")
    if not any(f"process(es) on {device}" in line for line in device_lines):
        raise SystemExit(f"error: {train_log} does not say it trained on {device}")
    checkpoint = train_dir / f"epoch_{EPOCHS:04d}.safetensors"
    if not checkpoint.is_file():
        raise SystemExit(f"error: training wrote no {checkpoint}")
    epochs = [json.loads(line) for line in (train_dir / "log.jsonl").read_text().splitlines()]
    print(
        f"epochs: {len(epochs)}, last: loss {epochs[-1]['loss']:.4f}, "
        f"{epochs[-1]['images_per_s']:.1f} images/s, peak {epochs[-1]['peak_memory_mb']:.0f} MB"
    )

    features = args.work / "features.parquet"
    evaluate = config["evaluate"]
    extract_s = run_job(
        "extract",
        [
            "workflow_scripts.evaluate.extract",
            "--arch",
            arch,
            "--channel",
            CHANNEL,
            "--cache-dir",
            str(cache),
            "--checkpoint",
            str(checkpoint),
            "--model-kwargs",
            model_kwargs,
            "--settings",
            json.dumps(crops.extraction_settings(evaluate)),
            "--batch-size",
            str(evaluate["batch_size"]),
            "--num-workers",
            str(args.num_workers),
            "--epoch",
            str(EPOCHS),
            "--out",
            str(features),
        ],
        args.work / "extract.log",
    )
    print((args.work / "extract.log").read_text().strip().splitlines()[-1])
    table = read_table(features)
    values = table[[c for c in table.columns if c.startswith("feat_")]].to_numpy()
    if len(table) != args.images or not np.isfinite(values).all():
        raise SystemExit(
            f"error: {features}: {len(table)} rows (expected {args.images}) or non-finite features"
        )
    print(
        f"end to end on {device}: train {train_s:.1f} s, extract {extract_s:.1f} s, "
        f"{len(table)} x {values.shape[1]} features: ok"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
