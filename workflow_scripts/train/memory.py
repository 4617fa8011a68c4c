"""Training memory: GB per GPU of a training job under DDP and under FSDP (`plan_architecture`).

cluster/memory_plan.py chooses the strategy from it (`strategy: auto` = DDP when its estimate
fits `resources.gpu_mem_gb`, FSDP otherwise), refuses at `snakemake -n` what cannot fit, and is
the planner CLI.

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

import functools
import json
from dataclasses import dataclass

from workflow_scripts import config as config_module
from workflow_scripts.memory_margin import FIXED_OVERHEAD_GB, GB, MARGIN_FRACTION

FP32_BYTES = 4
OPTIMIZER_STATES = {"adamw": 2, "sgd": 1}  # fp32 tensors per parameter
# the multi-tensor (foreach) optimizer step allocates a parameter-sized temporary
OPTIMIZER_STEP_TEMPORARIES = 1
DEFAULT_GPU_MEM_GB = 80.0


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

    from workflow_scripts.model.backbone import NO_WEIGHTS, build_backbone
    from workflow_scripts.train.dino_model import build_dino_model

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

    from workflow_scripts.model.precision import Precision

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
