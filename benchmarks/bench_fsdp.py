"""FSDP against DDP: the training CLI under torchrun, images/s and peak memory per strategy.

Writes a random image cache (bench_train_step.py's), then runs the real training program
(`python -m workflow_scripts.train.cli` under `torchrun --nproc-per-node=N`) once with
`--strategy ddp` and once with `--strategy fsdp`, one epoch of --steps steps, random init, the
configured recipe (config.yaml's train section; --quick: the demo's tiny model and recipe on the
CPU), and prints per strategy the epoch's images/s and rank 0's peak memory (log.jsonl: CUDA
max_memory_allocated, on the CPU the peak RSS), with the planner's estimate beside it. The first
steps (allocator warm-up) are included in images/s. FSDP needs N >= 2 to shard anything.

    python benchmarks/bench_fsdp.py --arch vit_large_patch16_dinov3.lvd1689m --nproc 8 --steps 20
    python benchmarks/bench_fsdp.py --quick          # CPU, gloo, 2 processes, tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from bench_train_step import random_fields, write_cache  # noqa: E402

from workflow_scripts import config as cfg  # noqa: E402
from workflow_scripts.train import memory as memory_plan  # noqa: E402

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
CHANNEL = "DAPI"


def run(args: argparse.Namespace) -> list[dict]:
    files = [REPO / "config.yaml"] + ([REPO / "config" / "demo.yaml"] if args.quick else [])
    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    config = cfg.load(files, schema=cfg.has_schema_checker())
    model_kwargs = TINY if args.quick else {}
    overrides = {
        "epochs": 1,
        "checkpoint_every": 1,
        "max_steps_per_epoch": args.steps,
        "num_workers": 0 if args.quick else min(8, (os.cpu_count() or 2) // args.nproc),
    }
    if args.batch:
        overrides["batch_size_per_gpu"] = args.batch
    config["architectures"] = [
        {
            "name": args.arch,
            "weights": "none",
            "gpus": args.nproc,
            "model_kwargs": model_kwargs,
            "train": overrides,
        }
    ]
    settings = cfg.train_settings(config, args.arch)
    n_images = args.steps * settings["batch_size_per_gpu"] * args.nproc
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        shape = (128, 160) if args.quick else (512, 640)
        write_cache(tmp / "cache", random_fields(4, shape, 10000), n_images, [CHANNEL], 1.0, 10000)
        plan = memory_plan.plan_architecture(config, args.arch)
        for strategy in ("ddp", "fsdp"):
            out = tmp / strategy
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={args.nproc}",
                "-m",
                "workflow_scripts.train.cli",
                "--arch",
                args.arch,
                "--channel",
                CHANNEL,
                "--cache-dir",
                str(tmp / "cache"),
                "--weights",
                "none",
                "--model-kwargs",
                json.dumps(model_kwargs),
                "--settings",
                json.dumps(settings),
                "--out-dir",
                str(out / "train"),
                "--resume-dir",
                str(out / "resume"),
                "--strategy",
                strategy,
            ]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
            if args.quick:
                env["OMP_NUM_THREADS"] = "1"
            subprocess.run(command, cwd=REPO, env=env, check=True)
            epoch = json.loads((out / "train" / "log.jsonl").read_text().splitlines()[-1])
            rows.append(
                {
                    "arch": args.arch,
                    "strategy": strategy,
                    "processes": args.nproc,
                    "batch_per_process": settings["batch_size_per_gpu"],
                    "steps": epoch["steps"],
                    "images_per_s": round(epoch["images_per_s"], 2),
                    "peak_memory_mb_rank0": round(epoch["peak_memory_mb"], 1),
                    "planned_gb": plan.fsdp_gb if strategy == "fsdp" else plan.ddp_gb,
                    "loss": epoch["loss"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vit_large_patch16_dinov3.lvd1689m")
    parser.add_argument("--nproc", type=int, default=2, help="processes (GPUs) per strategy")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, help="batch per process (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="CPU smoke: tiny model, demo recipe")
    parser.add_argument("--work", help="folder for the temporary cache (default: $TMPDIR)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.steps = "vit_small_patch16_dinov3.lvd1689m", min(args.steps, 3)
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
