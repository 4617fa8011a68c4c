"""Memory planner: which strategy a training job runs, whether it fits, and the planner CLI.

    python -m workflow_scripts.cluster.memory_plan [--configfile OVERLAY ...] [--all-models]

prints, for every architecture of the configuration (or every timm DINOv3 model), the
parameters, the estimated GB per GPU for DDP and for FSDP at the configured GPUs x nodes
(train/memory.py), and the strategy a training job uses, then per architecture the extraction
plan (weights GB, MB per image, the batch `evaluate.batch_size: auto` derives at
resources.gpu_mem_gb, or "does not fit"; evaluate/extraction_plan.py). `strategy: auto` picks
DDP when its estimate fits `resources.gpu_mem_gb`, FSDP otherwise; the Snakefile's config check
refuses (at `snakemake -n`) a configuration whose chosen strategy does not fit, with these
numbers. The configuration is config.yaml with the --configfile overlays, as Snakemake reads it.
The meta-device counts are cached (count_cache.py): a configuration counted once plans without
importing torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

from workflow_scripts import config as config_module
from workflow_scripts import config_check
from workflow_scripts.errors import cli
from workflow_scripts.train.memory import Plan, gpu_memory_gb, plan_architecture


def format_table(plans: list[Plan]) -> str:
    header = (
        f"{'architecture':46} {'params M':>9} {'GPUs':>5} {'act GB':>7} {'DDP GB':>8} "
        f"{'FSDP GB':>8} {'limit':>6} {'strategy':>9} fits"
    )
    lines = [header]
    for p in plans:
        chosen = p.strategy if p.requested != "auto" else f"auto:{p.strategy}"
        lines.append(
            f"{p.arch:46} {p.params_m:9.1f} {p.gpus}x{p.nodes:<3} {p.activations_gb:7.2f} "
            f"{p.ddp_gb:8.2f} {p.fsdp_gb:8.2f} {p.gpu_mem_gb:6g} {chosen:>9} "
            f"{'yes' if p.fits else 'NO'}"
        )
    return "\n".join(lines)


def at_least_one(text: str) -> int:
    """argparse type of --gpus and --nodes: an integer >= 1 (0 GPUs is a CPU job: not planned)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        type=Path,
        default=[],
        help="overlays applied in order on config.yaml, which is always read first, as "
        "`snakemake --configfile` does (e.g. --configfile config/demo.yaml)",
    )
    parser.add_argument(
        "--all-models",
        action="store_true",
        help="plan every timm DINOv3 ViT (dinov3_models.yaml) with the first "
        "architecture's gpus/nodes/strategy instead of the configured list",
    )
    parser.add_argument("--gpus", type=at_least_one, help="override every architecture's gpus")
    parser.add_argument("--nodes", type=at_least_one, help="override every architecture's nodes")
    parser.add_argument(
        "--activation-checkpointing",
        choices=["true", "false"],
        help="override every architecture's activation_checkpointing",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    files = [config_module.REPO_DIR / "config.yaml", *args.configfile]
    config = config_module.load(files, schema=config_module.has_schema_checker())
    config_check.check(config, files=False, models=False)  # planning needs no data
    if args.all_models:
        template = {
            k: v
            for k, v in config["architectures"][0].items()
            if k not in ("name", "model_kwargs", "train")
        }
        names = [m for m in config_module.known_models() if m.startswith("vit_")]
        config = {**config, "architectures": [{**template, "name": n} for n in names]}
    overrides = {"gpus": args.gpus, "nodes": args.nodes}
    if args.activation_checkpointing:
        overrides["activation_checkpointing"] = args.activation_checkpointing == "true"
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = {**config, "architectures": [{**e, **overrides} for e in config["architectures"]]}
    names = config_module.architecture_names(config)
    plans = [plan_architecture(config, name) for name in names]
    extraction = [extraction_line(config, name) for name in names]
    if args.json:
        print("\n".join(json.dumps(asdict(p)) for p in plans))
        print("\n".join(json.dumps({"extraction": asdict(e)}) for e in extraction))
    else:
        print(format_table(plans))
        print("\n".join(e.line() for e in extraction))
    return 0


def extraction_line(config: dict, arch: str):
    """The extraction plan of `arch` at resources.gpu_mem_gb (evaluate/extraction_plan.py)."""
    from workflow_scripts.evaluate import extraction_plan

    return extraction_plan.plan_for_config(config, arch, gpu_memory_gb(config))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
