"""Backbone + DINO head applied to a list of multi-resolution crops (student and teacher)."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from workflow_scripts.model.backbone import input_standardization
from workflow_scripts.train.head import DINOHead


class MultiCropModel(nn.Module):
    """Runs the backbone once per crop resolution (crops of one size are batched together)
    and the head once on all embeddings. Output rows: crop 0's batch, crop 1's batch, ..."""

    def __init__(self, backbone: nn.Module, head: DINOHead, standardization: str = "none") -> None:
        super().__init__()
        self.normalize = input_standardization(backbone, standardization)
        self.backbone = backbone
        self.head = head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        embeddings = [
            self.backbone(self.normalize(torch.cat(list(same_size))))
            for _, same_size in itertools.groupby(crops, key=lambda crop: crop.shape[-2:])
        ]
        return self.head(torch.cat(embeddings))


def build_dino_model(
    backbone: nn.Module, head_settings: dict, standardization: str = "none"
) -> MultiCropModel:
    # head_hidden_size: the pooled width when a timm model has a pre-logits layer
    embed_dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    head = DINOHead(embed_dim, **head_settings)
    return MultiCropModel(backbone, head, standardization)
