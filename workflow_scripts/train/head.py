"""DINO projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototype layer.

Two GPU-side rules live here. With `fp32` (train.head.fp32, default true) the head runs in fp32
even under bf16/fp16 autocast: its logits are divided by the teacher temperature (0.04), so
bf16 rounding in the MLP and the prototype layer reaches ~0.06 nats per logit (mean KL to the
fp32 teacher ~5e-5 nats); an fp32 prototype layer alone barely helps (the bf16 MLP output
carries most of it), the whole head in fp32 leaves ~0.015 nats (KL ~4e-6) from the bf16
embedding it receives (benchmarks/bench_head_precision.py). It costs ~1.2 % (ViT-S) / 0.3 %
(ViT-B) of a step's FLOP, at fp32 rates. An optional BatchNorm head is synchronised across
processes (`synchronize_batch_norm`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from workflow_scripts.errors import InputError

LAST_LAYER = "last_layer"  # parameter-name marker: frozen for the first epochs (optim.py)


class DINOHead(nn.Module):
    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        fp32: bool = True,
    ) -> None:
        super().__init__()
        self.fp32 = fp32  # run in fp32 under autocast (module docstring)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:]):
                layers.append(nn.Linear(d_in, d_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        # norm_last_layer: prototypes stay unit-norm (g = 1 fixed), which stabilises DINO
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if (
            self.fp32
            and torch.amp.is_autocast_available(device_type)
            and torch.is_autocast_enabled(device_type)
        ):
            with torch.autocast(device_type, enabled=False):
                return self.prototype_logits(self.mlp(x.float()))
        return self.prototype_logits(self.mlp(x))

    def prototype_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the L2-normalised bottleneck with the (weight-normed) prototypes."""
        return self.last_layer(nn.functional.normalize(x, dim=-1, p=2))


def synchronize_batch_norm(model: nn.Module, world_size: int, device_type: str) -> nn.Module:
    """With several processes, make the head's BatchNorm (train.head.use_bn) a SyncBatchNorm:
    batch statistics over the global batch, so every rank normalises alike and keeps the same
    running statistics, which the teacher copies (DINO does the same). SyncBatchNorm needs GPUs:
    several CPU processes with a BatchNorm head are refused. Without BatchNorm, or alone: as is."""
    has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not has_batch_norm or world_size == 1:
        return model
    if device_type != "cuda":
        raise InputError(
            f"train.head.use_bn: true with {world_size} processes on {device_type}: the BatchNorm "
            f"statistics would differ between processes and SyncBatchNorm needs GPUs; train in "
            f"one process or set train.head.use_bn: false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
