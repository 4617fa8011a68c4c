"""Backbone pooling and gradient clipping: the parts of the DINO recipe that live outside the
loss."""

import torch
from torch import nn

from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.train.optim import clip_gradients

ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def test_vit_embedding_is_the_cls_token_and_receives_gradient():
    torch.manual_seed(0)
    model = build_backbone(ARCH, "none", TINY)
    images = torch.rand(2, 3, 32, 32)
    tokens = model.forward_features(images)
    torch.testing.assert_close(model(images), tokens[:, 0])  # what extraction's "cls" reads
    model(images).sum().backward()
    assert model.cls_token.grad is not None and model.cls_token.grad.abs().sum() > 0


def test_convnext_keeps_its_pooled_output():
    model = build_backbone(
        "convnext_tiny.dinov3_lvd1689m", "none", {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}
    )
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 64)


def test_gradients_are_clipped_per_parameter():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[6.0, 8.0]])  # norm 10
    model.bias.grad = torch.tensor([1.0])  # norm 1: below the limit, untouched
    clip_gradients(model, 3.0)
    torch.testing.assert_close(model.weight.grad, torch.tensor([[1.8, 2.4]]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.bias.grad, torch.tensor([1.0]))
    clip_gradients(model, 0.0)  # disabled
    torch.testing.assert_close(model.bias.grad, torch.tensor([1.0]))
