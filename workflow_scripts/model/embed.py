"""Embedding a batch of images with a timm backbone: what training's evaluation and the
memory estimate both run.

`embedding` (what a ViT's `forward_features` returns for DINOv3 in timm: the final-norm tokens
[CLS, 4 register tokens, patch tokens], `model.num_prefix_tokens` = 5):
  cls            the CLS token (upstream DINOv3's `x_norm_clstoken`; note that timm's default
                 pooled output for these models is the patch mean, not the CLS token)
  mean_patch     the mean of the patch tokens (registers excluded)
  cls+mean_patch both, concatenated (2 x embed_dim)
ConvNeXt backbones have no tokens: only `cls`, meaning their pooled (normalised) output.
"""

from __future__ import annotations

import torch
from torch import nn

from workflow_scripts.errors import InputError
from workflow_scripts.model.precision import Precision

EMBEDDINGS = ("cls", "mean_patch", "cls+mean_patch")


def check_embedding(model: nn.Module, embedding: str) -> None:
    if embedding not in EMBEDDINGS:
        raise InputError(
            f"settings key 'embedding': '{embedding}' is not one of {', '.join(EMBEDDINGS)}"
        )
    if embedding != "cls" and getattr(model, "cls_token", None) is None:
        raise InputError(
            f"settings key 'embedding': '{embedding}' needs a ViT's tokens, but this "
            f"{type(model).__name__} backbone only has a pooled output; use 'cls' (= the pooled "
            "output for ConvNeXt models)"
        )


def embed(model: nn.Module, images: torch.Tensor, embedding: str) -> torch.Tensor:
    """(B, 3, S, S) standardised images -> (B, D) embeddings (see the module docstring)."""
    tokens = model.forward_features(images)
    if tokens.ndim == 4:  # ConvNeXt feature map (B, C, h, w): timm's pooled + normed output
        return model.forward_head(tokens, pre_logits=True)
    cls_token = tokens[:, 0]
    mean_patch = tokens[:, model.num_prefix_tokens :].mean(dim=1)
    if embedding == "cls":
        return cls_token
    if embedding == "mean_patch":
        return mean_patch
    return torch.cat([cls_token, mean_patch], dim=1)


def embed_crops(
    model: nn.Module,
    normalize: nn.Module,
    crops: list[torch.Tensor],
    embedding: str,
    precision: Precision,
    device: torch.device,
) -> torch.Tensor:
    """One (B, 3, h, w) batch per crop position -> (B, n_crops, D) float32 embeddings on the
    CPU; positions of equal size share one forward pass."""
    by_size: dict[tuple[int, ...], list[int]] = {}
    for position, images in enumerate(crops):
        by_size.setdefault(tuple(images.shape[-2:]), []).append(position)
    embedded: list[torch.Tensor | None] = [None] * len(crops)
    for positions in by_size.values():
        images = torch.cat([crops[p] for p in positions]).to(device, non_blocking=True)
        with precision.autocast():
            embeddings = embed(model, normalize(images), embedding)
        chunks = embeddings.float().cpu().split(len(crops[positions[0]]))
        for position, chunk in zip(positions, chunks):
            embedded[position] = chunk
    return torch.stack(embedded, dim=1)
