"""Memory planner: GB per GPU of a training job under DDP and under FSDP, and the strategy.

    python -m workflow_scripts.train.memory_plan [--configfile config.yaml ...] [--all-models]

prints, for every architecture of the configuration (or every timm DINOv3 model), the
parameters, the estimated GB per GPU for DDP and for FSDP at the configured GPUs x nodes, and
the strategy a training job uses, then per architecture the extraction plan (weights GB, MB
per image, the batch `evaluate.batch_size: auto` derives at resources.gpu_mem_gb, or "does not
fit"; evaluate/extraction_memory.py). `strategy: auto` picks DDP when its estimate fits
`resources.gpu_mem_gb`, FSDP otherwise; rules/common.smk refuses (at `snakemake -n`) a
configuration whose chosen strategy does not fit, with these numbers.

The estimate, per GPU (world size W = gpus x nodes):
- model state, 4 bytes per fp32 element: student parameters + gradients + optimizer state
  (AdamW 2, SGD 1 per parameter, one temporary in its step) + teacher parameters; DDP adds
  its gradient buckets (one more gradient copy); FSDP divides all of it by W and adds the
  unsharded working set: the largest sharded unit (a block or the DINO head) gathered for
  student forward, its prefetch, its gradient, and the teacher's (in the compute dtype);
- activations: the bytes of every tensor autograd saves for backward, counted in one
  forward of the DINO student (backbone + head + loss) on the meta device (no memory, no
  compute) on a batch of `train.batch_size_per_gpu` images' crops. Counted in the compute dtype
  (bf16 when `precision` resolves to bf16 on CUDA); attention is counted as the math kernel
  (with its seq^2 weights), which flash attention does not keep: an over-estimate;
  with activation checkpointing, the saved block inputs plus one block recomputed;
- margin: x (1 + MARGIN_FRACTION) + FIXED_OVERHEAD_GB (CUDA context, NCCL buffers, allocator
  fragmentation).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from workflow_scripts import config as config_module
from workflow_scripts.errors import InputError, cli
from workflow_scripts.memory_margin import FIXED_OVERHEAD_GB, GB, MARGIN_FRACTION

FP32_BYTES = 4
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}  # fp32 tensors per parameter
# the multi-tensor (foreach) optimizer step allocates a parameter-sized temporary
OPTIMIZER_STEP_TEMPORARIES = 1
DEFAULT_GPU_MEM_GB = 80.0
STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass(frozen=True)
class ModelSize:
    backbone_params: int
    head_params: int
    largest_unit_params: int  # the largest FSDP unit: one transformer block or the DINO head
    depth: int

    @property
    def params(self) -> int:
        return self.backbone_params + self.head_params


@dataclass(frozen=True)
class Plan:
    arch: str
    params_m: float
    gpus: int
    nodes: int
    world_size: int
    activations_gb: float
    ddp_gb: float
    fsdp_gb: float
    gpu_mem_gb: float
    requested: str
    strategy: str  # ddp | fsdp: what the training job runs

    @property
    def chosen_gb(self) -> float:
        return self.fsdp_gb if self.strategy == "fsdp" else self.ddp_gb

    @property
    def fits(self) -> bool:
        return self.chosen_gb <= self.gpu_mem_gb


def _meta_student(arch: str, model_kwargs: dict, settings: dict, dtype):
    import torch

    from workflow_scripts.train.backbone import NO_WEIGHTS, build_backbone
    from workflow_scripts.train.model import build_dino_model

    with torch.device("meta"):
        backbone = build_backbone(arch, NO_WEIGHTS, model_kwargs, settings["drop_path_rate"])
        student = build_dino_model(backbone, settings["head"], "none")
    return student.to(dtype)


def _unit_sizes(student) -> list[int]:
    blocks = getattr(student.backbone, "blocks", None)
    if blocks is None:  # ConvNeXt: stages
        blocks = getattr(student.backbone, "stages", [])
    return [sum(p.numel() for p in block.parameters()) for block in blocks]


@functools.lru_cache(maxsize=64)
def model_size(arch: str, model_kwargs_json: str, head_json: str) -> ModelSize:
    import torch

    settings = {"drop_path_rate": 0.0, "head": json.loads(head_json)}
    student = _meta_student(arch, json.loads(model_kwargs_json), settings, torch.float32)
    units = _unit_sizes(student)
    head = sum(p.numel() for p in student.head.parameters())
    return ModelSize(
        backbone_params=sum(p.numel() for p in student.backbone.parameters()),
        head_params=head,
        largest_unit_params=max(units + [head]),
        depth=len(units),
    )


def saved_tensor_bytes(run) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `run()` executes."""
    import torch

    sizes: dict[int, int] = {}
    keep = []  # keeps saved tensors alive, so no id is reused during the count

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        keep.append(base)
        sizes[id(base)] = base.numel() * base.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(sizes.values())


@functools.lru_cache(maxsize=64)
def activation_bytes(
    arch: str, model_kwargs_json: str, settings_json: str, dtype_name: str, checkpointing: bool
) -> int:
    """Saved-for-backward bytes of one per-GPU batch of crops through student, head and
    DINO loss (the batch size is settings' batch_size_per_gpu)."""
    import torch

    from workflow_scripts.train.loss import DINOLoss

    settings = json.loads(settings_json)
    dtype = getattr(torch, dtype_name)
    student = _meta_student(arch, json.loads(model_kwargs_json), settings, dtype).train()
    n_global = settings["global_crops"]["number"]
    n_local = settings["local_crops"]["number"]
    batch = settings["batch_size_per_gpu"]
    with torch.device("meta"):
        crops = [
            torch.zeros(
                batch,
                3,
                settings["global_crops"]["size"],
                settings["global_crops"]["size"],
                dtype=dtype,
            )
        ] * n_global
        crops += [
            torch.zeros(
                batch,
                3,
                settings["local_crops"]["size"],
                settings["local_crops"]["size"],
                dtype=dtype,
            )
        ] * n_local
        loss = DINOLoss(settings["head"]["out_dim"], n_global, n_local)
        teacher_output = torch.zeros(n_global * batch, settings["head"]["out_dim"], dtype=dtype)

    def forward() -> None:
        loss(student(crops), teacher_output, 0.04)

    full = saved_tensor_bytes(forward)
    if not checkpointing:
        return full
    student.backbone.set_grad_checkpointing(True)
    depth = max(1, len(_unit_sizes(student)))
    # checkpointed blocks keep their inputs; backward recomputes one block at a time
    return saved_tensor_bytes(forward) + full // depth


def compute_dtype(settings: dict):
    """The dtype activations are kept in on a GPU (precision.py's rule for CUDA)."""
    import torch

    from workflow_scripts.train.precision import Precision

    return Precision.resolve(settings["precision"], "cuda").autocast_dtype or torch.float32


def estimate_bytes(
    size: ModelSize, activations: int, settings: dict, world_size: int, compute_bytes: int
) -> dict[str, float]:
    """Bytes per GPU before the margin: {'ddp': ..., 'fsdp': ...}."""
    optimizer_states = OPTIMIZER_STATES[settings["optimizer"]["name"]]
    # student param + grad + optimizer states (+ its step's temporaries) + teacher param
    state = size.params * FP32_BYTES * (3 + optimizer_states + OPTIMIZER_STEP_TEMPORARIES)
    ddp = state + size.params * FP32_BYTES + activations  # + DDP's gradient buckets
    # gathered unit, its prefetched neighbour and its gradient (student), and the teacher's
    working_set = size.largest_unit_params * (3 * compute_bytes + compute_bytes)
    fsdp = state / world_size + working_set + activations
    return {"ddp": ddp, "fsdp": fsdp}


def with_margin(nbytes: float, fixed_overhead_gb: float = FIXED_OVERHEAD_GB) -> float:
    return nbytes * (1 + MARGIN_FRACTION) / GB + fixed_overhead_gb


def gpu_memory_gb(config: dict) -> float:
    """resources.gpu_mem_gb: the memory of one GPU, what every plan is made against."""
    return float(config["resources"].get("gpu_mem_gb", DEFAULT_GPU_MEM_GB))


def plan_architecture(config: dict, arch: str) -> Plan:
    entry = config_module.architecture(config, arch)
    settings = config_module.train_settings(config, arch)
    gpus = int(entry["gpus"])
    nodes = int(entry.get("nodes", 1))
    world_size = max(1, gpus) * nodes
    gpu_mem_gb = gpu_memory_gb(config)
    dtype = compute_dtype(settings)
    kwargs_json = json.dumps(entry["model_kwargs"], sort_keys=True)
    size = model_size(arch, kwargs_json, json.dumps(settings["head"], sort_keys=True))
    activations = activation_bytes(
        arch,
        kwargs_json,
        json.dumps(settings, sort_keys=True),
        str(dtype).removeprefix("torch."),
        bool(entry.get("activation_checkpointing", False)),
    )
    compute_bytes = dtype.itemsize
    raw = estimate_bytes(size, activations, settings, world_size, compute_bytes)
    ddp_gb, fsdp_gb = with_margin(raw["ddp"]), with_margin(raw["fsdp"])
    requested = entry.get("strategy", "auto")
    strategy = requested
    if requested == "auto":
        strategy = "ddp" if ddp_gb <= gpu_mem_gb or world_size == 1 else "fsdp"
    return Plan(
        arch=arch,
        params_m=round(size.params / 1e6, 1),
        gpus=gpus,
        nodes=nodes,
        world_size=world_size,
        activations_gb=round(activations / GB, 2),
        ddp_gb=round(ddp_gb, 2),
        fsdp_gb=round(fsdp_gb, 2),
        gpu_mem_gb=gpu_mem_gb,
        requested=requested,
        strategy=strategy,
    )


def training_strategy(config: dict, arch: str) -> str:
    """ddp or fsdp for this architecture's training job. CPU jobs (gpus 0) are not planned:
    `auto` is DDP there (a single process unless launched otherwise)."""
    entry = config_module.architecture(config, arch)
    requested = entry.get("strategy", "auto")
    if requested != "auto":
        return requested
    if int(entry["gpus"]) == 0:
        return "ddp"
    return plan_architecture(config, arch).strategy


def check_fits(config: dict) -> None:
    """InputError, with the numbers, for the first GPU architecture that cannot fit."""
    for index, entry in enumerate(config["architectures"]):
        if int(entry.get("gpus", 1)) == 0:
            continue
        plan = plan_architecture(config, entry["name"])
        if not plan.fits:
            raise InputError(
                f"config key 'architectures.{index}' ({plan.arch}, {plan.params_m} M "
                f"parameters): needs about {plan.chosen_gb:.1f} GB per GPU with {plan.strategy} "
                f"over {plan.world_size} GPU(s) (ddp {plan.ddp_gb:.1f} GB, fsdp "
                f"{plan.fsdp_gb:.1f} GB, of which activations {plan.activations_gb:.1f} GB); "
                f"resources.gpu_mem_gb is {plan.gpu_mem_gb:g}. Add gpus or nodes, set "
                f"activation_checkpointing: true, or lower train.batch_size_per_gpu"
            )


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


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configfile",
        nargs="+",
        type=Path,
        default=[config_module.REPO_DIR / "config.yaml"],
        help="config.yaml and overlays, in order (default: config.yaml)",
    )
    parser.add_argument(
        "--all-models",
        action="store_true",
        help="plan every timm DINOv3 ViT (dinov3_models.yaml) with the first "
        "architecture's gpus/nodes/strategy instead of the configured list",
    )
    parser.add_argument("--gpus", type=int, help="override every architecture's gpus")
    parser.add_argument("--nodes", type=int, help="override every architecture's nodes")
    parser.add_argument(
        "--activation-checkpointing",
        choices=["true", "false"],
        help="override every architecture's activation_checkpointing",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    config = config_module.load(args.configfile, schema=config_module.has_schema_checker())
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
    extraction = [extraction_plan(config, name) for name in names]
    if args.json:
        print("\n".join(json.dumps(asdict(p)) for p in plans))
        print("\n".join(json.dumps({"extraction": asdict(e)}) for e in extraction))
    else:
        print(format_table(plans))
        print("\n".join(e.line() for e in extraction))
    return 0


def extraction_plan(config: dict, arch: str):
    """The extraction line of `arch` at resources.gpu_mem_gb (evaluate/extraction_memory.py)."""
    from workflow_scripts.evaluate import extraction_memory

    return extraction_memory.plan_for_config(config, arch, gpu_memory_gb(config))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
