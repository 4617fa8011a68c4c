"""FSDP2 sharding of the DINO student and teacher (torch.distributed.fsdp.fully_shard).

Each transformer block (ConvNeXt: each stage) and the DINO head is one FSDP unit; the root
module holds the rest (patch embedding, tokens, final norm). The teacher is sharded the same
way on the same mesh, so the teacher's local shard of a parameter lines up with the student's
and the EMA update runs on local shards without communication (ema.py). Mixed precision:
bf16 parameters for compute and fp32 gradient reduction on CUDA when the run's precision is
bf16; fp32 elsewhere (CPU/gloo runs).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

STRATEGIES = ("ddp", "fsdp")


def device_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    """A 1-D mesh over every rank of the process group (cpu with gloo, cuda with nccl)."""
    return init_device_mesh(device.type, (world_size,))


def mixed_precision(autocast_dtype: torch.dtype | None, device_type: str) -> MixedPrecisionPolicy:
    if device_type == "cuda" and autocast_dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def sharding_units(model: nn.Module) -> list[nn.Module]:
    """The submodules that become their own FSDP unit: blocks (or stages), then the head."""
    backbone = model.backbone
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        blocks = getattr(backbone, "stages", [])
    return [*blocks, model.head]


def shard(model: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy) -> nn.Module:
    """Shard `model` (a MultiCropModel) in place, unit by unit, then its root."""
    for unit in sharding_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 (DTensor) parameter; an ordinary tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def reshard(module: nn.Module) -> None:
    """Free the gathered parameters of an FSDP2 module (no-op for anything else)."""
    if isinstance(module, FSDPModule):
        module.reshard()
