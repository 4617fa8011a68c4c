"""The memory planner's estimate against the measured peak memory of real CPU training steps.

For each model (tiny: the demo's depth-2 ViT-S; small: ViT-S/16, the seed recipe's crops and
head, a small batch so that it fits a laptop), a fresh process records its resident memory
after imports and inputs, builds student, teacher, AdamW and DINO loss as the trainer does,
runs --steps training steps (student forward/backward on all crops, teacher on the global
crops, AdamW, EMA) and reports peak RSS - baseline. The planner's number for one process on
the CPU (fp32, no DDP buckets) is printed beside it, without and with its margin.

    python benchmarks/bench_memory_plan.py [--steps 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCH = "vit_small_patch16_dinov3.lvd1689m"
CASES = {
    "tiny": {
        "model_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2},
        "demo": True,
        "batch": 16,
    },
    "small": {"model_kwargs": {}, "demo": False, "batch": 2},
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def measure(case: str, steps: int) -> dict:
    """In this process: baseline, then real training steps; peak RSS (ru_maxrss) - baseline."""
    import torch

    from workflow_scripts import config as cfg
    from workflow_scripts.model.backbone import build_backbone
    from workflow_scripts.train import memory as memory_plan
    from workflow_scripts.train.dino_model import build_dino_model
    from workflow_scripts.train.ema import make_teacher, update_teacher
    from workflow_scripts.train.loss import DINOLoss
    from workflow_scripts.train.optim import build_optimizer, param_groups

    torch.set_num_threads(1)
    spec = CASES[case]
    files = [REPO / "config.yaml"] + ([REPO / "config" / "demo.yaml"] if spec["demo"] else [])
    config = cfg.load(files)
    config["architectures"] = [
        {
            "name": ARCH,
            "weights": "none",
            "gpus": 0,
            "model_kwargs": spec["model_kwargs"],
            "train": {"batch_size_per_gpu": spec["batch"], "precision": "fp32"},
        }
    ]
    settings = cfg.train_settings(config, ARCH)
    g, loc = settings["global_crops"], settings["local_crops"]
    crops = [torch.rand(spec["batch"], 3, g["size"], g["size"])] * g["number"] + [
        torch.rand(spec["batch"], 3, loc["size"], loc["size"])
    ] * loc["number"]
    memory_plan.plan_architecture(config, ARCH)  # before the baseline: imports, caches
    baseline = rss_bytes()

    backbone = build_backbone(ARCH, "none", spec["model_kwargs"], settings["drop_path_rate"])
    student = build_dino_model(backbone, settings["head"]).train()
    teacher = make_teacher(student)
    optimizer = build_optimizer(param_groups(student, set()), settings["optimizer"], "cpu")
    loss_fn = DINOLoss(settings["head"]["out_dim"], g["number"], loc["number"])
    for group in optimizer.param_groups:
        group["lr"] = 1e-5
    for _ in range(steps):
        with torch.no_grad():
            teacher_output = teacher(crops[: g["number"]])
        loss = loss_fn(student(crops), teacher_output, 0.04)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_teacher(student, teacher, 0.99)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    size, activations = memory_plan.meta_counts(config, ARCH)  # fp32: precision fp32
    raw = memory_plan.estimate_bytes(size, activations, settings, 1, 4)
    single_process = raw["ddp"] - size.params * memory_plan.FP32_BYTES  # no DDP buckets
    measured = peak - baseline
    return {
        "case": case,
        "params_m": round(size.params / 1e6, 2),
        "batch": spec["batch"],
        "measured_mb": round(measured / 2**20, 1),
        "estimate_mb": round(single_process / 2**20, 1),
        "estimate_with_margin_mb": round(
            memory_plan.with_margin(single_process, 0.0) * memory_plan.GB / 2**20, 1
        ),
        "error_pct": round(100 * (single_process - measured) / measured, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return 0
    rows = []
    for case in args.cases:  # a fresh process each: ru_maxrss is per process
        out = subprocess.run(
            [sys.executable, __file__, "--one", case, "--steps", str(args.steps)],
            check=True,
            capture_output=True,
            text=True,
            env={
                "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(REPO),  # this checkout's workflow_scripts
            },
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
