"""DINO fine-tuning of one timm DINOv3 backbone on one channel of the image cache.

Single process (CPU or one GPU):
    python -m workflow_scripts.train.cli --arch A --channel C --cache-dir D --weights W \\
        --model-kwargs JSON --settings JSON --out-dir OUT/train/A/C --resume-dir OUT/resume/A/C
Several GPUs: the same arguments after `torchrun --standalone --nproc-per-node=N`
(or under srun with one task per GPU; see workflow_scripts/train/distributed.py).
A killed job rerun with the same arguments continues after its last finished epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from workflow_scripts import config as config_module
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.train.loop import TrainJob, run


def check_device(gpus: int | None, allow_cpu_fallback: bool) -> None:
    """GPUs were asked for but none is visible: stop, unless CPU training was allowed. Without
    this, `gpus: 2` on a machine without CUDA silently trains on 2 CPU processes."""
    import torch

    if gpus and not torch.cuda.is_available() and not allow_cpu_fallback:
        raise InputError(
            f"config key 'architectures[].gpus' is {gpus} but this training job sees no CUDA "
            f"device (torch {torch.__version__}, CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); set gpus: 0 to train on "
            "CPU, or config key 'allow_cpu_fallback: true' to run these processes on CPU"
        )


def validate_settings(settings: dict) -> dict:
    """Check --settings against the schema's train definition and require every key that
    config.yaml's train section has (the schema leaves keys optional for overlays).

    Without jsonschema (a bare GPU node running the checks in benchmarks/) only the keys are
    checked, with a note: the workflow validated the whole config before it launched this."""
    try:
        import jsonschema
    except ImportError:
        print(
            "note: jsonschema is not installed: --settings checked for missing keys only",
            file=sys.stderr,
        )
    else:
        schema = config_module.read_yaml(config_module.SCHEMA_PATH)
        train_schema = {**schema["definitions"]["train"], "definitions": schema["definitions"]}
        validator = jsonschema.Draft7Validator(train_schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(settings))
        if error is not None:
            key = ".".join(str(p) for p in error.absolute_path) or "<top level>"
            raise InputError(f"option --settings, key '{key}': {error.message}")
    reference = config_module.read_yaml(config_module.REPO_DIR / "config.yaml")["train"]
    missing = _missing_keys(reference, settings)
    if missing:
        raise InputError(f"option --settings: missing key(s) {', '.join(missing)}")
    return settings


def _missing_keys(reference: dict, settings: dict, prefix: str = "") -> list[str]:
    missing = []
    for key, value in reference.items():
        if key not in settings:
            missing.append(prefix + key)
        elif isinstance(value, dict) and isinstance(settings[key], dict):
            missing += _missing_keys(value, settings[key], f"{prefix}{key}.")
    return missing


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--arch", required=True, help="timm model name, e.g. vit_small_patch16_dinov3.lvd1689m"
    )
    parser.add_argument(
        "--channel", required=True, help="a cache channel (DAPI, Tubulin, Actin) or rgb"
    )
    parser.add_argument(
        "--cache-dir", required=True, type=Path, help="image cache (docs/formats.md)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="none (random init) | hub (timm download) | path to a weights file",
    )
    parser.add_argument("--model-kwargs", default="{}", help="JSON: extra timm.create_model kwargs")
    parser.add_argument(
        "--settings",
        required=True,
        help="JSON: the config train section with the architecture's overrides",
    )
    parser.add_argument(
        "--out-dir", required=True, type=Path, help="evaluated-epoch checkpoints and log.jsonl"
    )
    parser.add_argument(
        "--resume-dir",
        required=True,
        type=Path,
        help="resume state and epoch copies; survives Snakemake reruns",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs the job was given (architectures[].gpus); > 0 needs CUDA",
    )
    parser.add_argument(
        "--allow-cpu-fallback",
        type=int,
        choices=[0, 1],
        default=0,
        help="1: with --gpus > 0 and no CUDA device, train on CPU anyway",
    )
    parser.add_argument(
        "--strategy",
        choices=["ddp", "fsdp"],
        default="ddp",
        help="ddp (replicated) or fsdp (FSDP2, sharded per block); see "
        "workflow_scripts/cluster/memory_plan.py",
    )
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block in backward (saves activation memory)",
    )
    args = parser.parse_args(argv)
    check_device(args.gpus, bool(args.allow_cpu_fallback))
    run(
        TrainJob(
            arch=args.arch,
            channel=args.channel,
            cache_dir=args.cache_dir,
            weights=args.weights,
            model_kwargs=json_object_option(args.model_kwargs, "--model-kwargs"),
            settings=validate_settings(json_object_option(args.settings, "--settings")),
            out_dir=args.out_dir,
            resume_dir=args.resume_dir,
            strategy=args.strategy,
            activation_checkpointing=args.activation_checkpointing,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
