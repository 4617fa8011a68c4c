"""The training planner's meta-device counts: parameters and saved-for-backward bytes of the
DINO student, from one student built on the meta device (no memory, no compute).

`count(inputs)` reads only `inputs` (train/memory.py's `count_inputs`: the architecture, its
model_kwargs and the train settings the count depends on), so the planner can cache it under
a digest of them (count_cache.py); train/memory.py turns the counts into GB per GPU.
"""

from __future__ import annotations

import torch

from workflow_scripts.model.backbone import NO_WEIGHTS, build_backbone
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.loss import DINOLoss


def meta_student(inputs: dict, dtype: torch.dtype):
    with torch.device("meta"):
        backbone = build_backbone(
            inputs["arch"], NO_WEIGHTS, inputs["model_kwargs"], inputs["drop_path_rate"]
        )
        student = build_dino_model(backbone, inputs["head"], "none")
    return student.to(dtype)


def unit_sizes(student) -> list[int]:
    """Parameters per FSDP unit of the backbone: each transformer block (ConvNeXt: stage)."""
    blocks = getattr(student.backbone, "blocks", None)
    if blocks is None:  # ConvNeXt: stages
        blocks = getattr(student.backbone, "stages", [])
    return [sum(p.numel() for p in block.parameters()) for block in blocks]


def saved_tensor_bytes(run) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `run()` executes."""
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


def activation_bytes(student, inputs: dict, dtype: torch.dtype) -> int:
    """Saved-for-backward bytes of one per-GPU batch of crops (inputs' batch_size_per_gpu)
    through student, head and DINO loss; with activation checkpointing, the saved block
    inputs plus one block recomputed."""
    student.train()
    n_global = inputs["global_crops"]["number"]
    n_local = inputs["local_crops"]["number"]
    batch = inputs["batch_size_per_gpu"]
    out_dim = inputs["head"]["out_dim"]
    with torch.device("meta"):
        global_size, local_size = inputs["global_crops"]["size"], inputs["local_crops"]["size"]
        crops = [torch.zeros(batch, 3, global_size, global_size, dtype=dtype)] * n_global
        crops += [torch.zeros(batch, 3, local_size, local_size, dtype=dtype)] * n_local
        loss = DINOLoss(out_dim, n_global, n_local)
        teacher_output = torch.zeros(n_global * batch, out_dim, dtype=dtype)

    def forward() -> None:
        loss(student(crops), teacher_output, 0.04)

    full = saved_tensor_bytes(forward)
    if not inputs["activation_checkpointing"]:
        return full
    student.backbone.set_grad_checkpointing(True)
    depth = max(1, len(unit_sizes(student)))
    # checkpointed blocks keep their inputs; backward recomputes one block at a time
    return saved_tensor_bytes(forward) + full // depth


def count(inputs: dict) -> dict[str, int]:
    """train/memory.py's COUNT_FIELDS for `inputs`, from one meta-device student."""
    dtype = getattr(torch, inputs["dtype"])
    student = meta_student(inputs, dtype)
    units = unit_sizes(student)
    head = sum(p.numel() for p in student.head.parameters())
    return {
        "backbone_params": sum(p.numel() for p in student.backbone.parameters()),
        "head_params": head,
        "largest_unit_params": max(units + [head]),
        "depth": len(units),
        "activation_bytes": activation_bytes(student, inputs, dtype),
    }
