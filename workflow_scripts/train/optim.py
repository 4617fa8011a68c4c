"""Optimizer, parameter groups (weight decay only where it belongs) and per-step gradient rules."""

from __future__ import annotations

import torch
from torch import nn

from workflow_scripts.train.head import LAST_LAYER

DECAY_FLAG = "apply_weight_decay"  # param-group key: does the weight-decay schedule apply?
LR_SCALE = "lr_scale"  # param-group key: multiplier of the scheduled lr (layer-wise decay)
BACKBONE_PREFIX = "backbone."
# ViT parameters before the first block: layer 0 of layer-wise lr decay (timm names)
EMBEDDING_NAMES = ("cls_token", "reg_token", "pos_embed", "patch_embed", "mask_token")


def vit_layer_id(name: str, num_layers: int) -> int:
    """DINOv2/v3 layer id of a MultiCropModel parameter: backbone tokens and patch embedding 0,
    `backbone.blocks.i` i + 1, everything else (final norm, DINO head) num_layers + 1."""
    if not name.startswith(BACKBONE_PREFIX):
        return num_layers + 1
    local = name[len(BACKBONE_PREFIX) :]
    if local.split(".")[0] in EMBEDDING_NAMES:
        return 0
    if local.startswith("blocks."):
        return int(local.split(".")[1]) + 1
    return num_layers + 1


def layer_lr_scale(name: str, layer_decay: float, num_layers: int) -> float:
    """Layer-wise lr decay (DINOv3 `layerwise_decay`): decay ** (num_layers + 1 - layer id), so
    the head and final norm get the full lr and each earlier block `layer_decay` times less."""
    return layer_decay ** (num_layers + 1 - vit_layer_id(name, num_layers))


def param_groups(
    model: nn.Module, no_decay_names: set[str], layer_decay: float = 1.0, num_layers: int = 0
) -> list[dict]:
    """Weights (decayed) and biases / norm & layer-scale vectors (ndim <= 1) plus the named
    tokens in `no_decay_names` (cls / register tokens, position embedding), not decayed. With
    `layer_decay` < 1 (ViTs of `num_layers` blocks) each group is split by lr scale."""
    groups: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not (param.ndim <= 1 or name in no_decay_names)
        scale = layer_lr_scale(name, layer_decay, num_layers) if layer_decay != 1.0 else 1.0
        groups.setdefault((decayed, scale), []).append(param)
    return [
        {
            "params": params,
            DECAY_FLAG: decayed,
            LR_SCALE: scale,
            **({} if decayed else {"weight_decay": 0.0}),
        }
        for (decayed, scale), params in groups.items()
        if params or scale == 1.0
    ]


def cancel_backbone_gradients(model: nn.Module) -> None:
    """Drop the backbone's gradients (head warm-up: only the randomly initialised DINO head
    learns while the pretrained backbone stays as it is; the optimizer skips None gradients)."""
    for name, param in model.named_parameters():
        if name.startswith(BACKBONE_PREFIX):
            param.grad = None


def build_optimizer(
    groups: list[dict], optimizer_settings: dict, device_type: str
) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CUDA) or SGD with momentum; lr and weight decay are set per step."""
    name = optimizer_settings["name"]
    if name == "adamw":
        return torch.optim.AdamW(
            groups, lr=0.0, betas=tuple(optimizer_settings["betas"]), fused=device_type == "cuda"
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=optimizer_settings["momentum"])
    raise ValueError(f"unknown optimizer {name!r}")


def set_lr_and_weight_decay(
    optimizer: torch.optim.Optimizer, lr: float, weight_decay: float
) -> None:
    for group in optimizer.param_groups:
        # numpy scalars would not load with weights_only
        group["lr"] = float(lr) * group.get(LR_SCALE, 1.0)
        group["weight_decay"] = float(weight_decay) if group[DECAY_FLAG] else 0.0


def cancel_last_layer_gradients(model: nn.Module) -> None:
    """Drop the prototype layer's gradients (None: the optimizer then skips it entirely, no
    weight decay or momentum either). DINO does this in the first epoch(s) for stability."""
    for name, param in model.named_parameters():
        if LAST_LAYER in name:
            param.grad = None


def clip_gradients(model: nn.Module, max_norm: float) -> None:
    """Clip each parameter's gradient norm to max_norm separately, as DINO's recipe does (not
    the global norm: one exploding layer then does not shrink every other layer's update);
    max_norm 0 disables clipping.

    Per parameter the gradient is scaled by min(1, max_norm / (norm + 1e-6)) (DINO's
    utils.clip_gradients, and nn.utils.clip_grad_norm_ on that one parameter), but the norms
    come from one multi-tensor call and the scaling from another: 8 dispatched ops per step
    instead of 1,360 for a ViT-S/B student (170 tensors). (The scaling multiplies tensors of
    different shapes, which CUDA may still run as one kernel per tensor, but without Python.)"""
    if max_norm <= 0:
        return
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads))
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scales.unbind()))
