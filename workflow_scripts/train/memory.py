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

The parameter and activation counts come from train/memory_counts.py (torch, timm), through the
count cache (count_cache.py) under a digest of `count_inputs`: this module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflow_scripts import config as config_module
from workflow_scripts import count_cache
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


# precision.py's rule on CUDA ('auto' = bf16), by dtype name: planning imports no torch
CUDA_COMPUTE_DTYPES = {"auto": "bfloat16", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# what train/memory_counts.py counts, and the module that counts it (its code is in the key)
COUNT_FIELDS = (
    "backbone_params",
    "head_params",
    "largest_unit_params",
    "depth",
    "activation_bytes",
)
COUNTING_MODULE = "workflow_scripts.train.memory_counts"


def compute_dtype_name(settings: dict) -> str:
    """The dtype activations are kept in on a GPU (bf16 when `precision` resolves to bf16)."""
    return CUDA_COMPUTE_DTYPES[settings["precision"]]


def count_inputs(config: dict, arch: str) -> dict:
    """Everything the meta-device counts of `arch`'s training job depend on, and nothing else:
    the key of its cache entry (count_cache.py). GPUs, nodes, strategy, optimizer and memory
    enter only the arithmetic after the count."""
    entry = config_module.architecture(config, arch)
    settings = config_module.train_settings(config, arch)
    return {
        "arch": arch,
        "model_kwargs": entry["model_kwargs"],
        "drop_path_rate": settings["drop_path_rate"],
        "head": settings["head"],
        "global_crops": {k: settings["global_crops"][k] for k in ("number", "size")},
        "local_crops": {k: settings["local_crops"][k] for k in ("number", "size")},
        "batch_size_per_gpu": settings["batch_size_per_gpu"],
        "dtype": compute_dtype_name(settings),
        "activation_checkpointing": bool(entry.get("activation_checkpointing", False)),
    }


def _count(inputs: dict) -> dict[str, int]:
    from workflow_scripts.train import memory_counts  # torch, timm: only when not cached

    return memory_counts.count(inputs)


def meta_counts(config: dict, arch: str) -> tuple[ModelSize, int]:
    """(model size, activation bytes per GPU) of `arch`'s training job: from the count cache,
    or counted on the meta device (train/memory_counts.py) and cached."""
    counts = count_cache.cached(
        "training", count_inputs(config, arch), COUNTING_MODULE, _count, COUNT_FIELDS
    )
    size = ModelSize(
        backbone_params=counts["backbone_params"],
        head_params=counts["head_params"],
        largest_unit_params=counts["largest_unit_params"],
        depth=counts["depth"],
    )
    return size, counts["activation_bytes"]


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
    size, activations = meta_counts(config, arch)
    compute_bytes = DTYPE_BYTES[compute_dtype_name(settings)]
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
