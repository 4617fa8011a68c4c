"""Per-parameter gradient clipping with multi-tensor ops gives what one clip_grad_norm_ call per
parameter (the previous implementation) and DINO's formula give, on a real student."""

import torch
from torch import nn

from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.optim import clip_gradients

ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
HEAD = {"out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16, "norm_last_layer": False}


def student_with_gradients() -> nn.Module:
    """A DINO student whose gradient norms straddle the limit: each parameter's gradient is
    rescaled to a norm drawn from 0 to 6 (some exactly zero), one parameter has none."""
    torch.manual_seed(0)
    model = build_dino_model(build_backbone(ARCH, "none", TINY), HEAD)
    model([torch.rand(2, 3, 32, 32)]).square().mean().backward()
    params = list(model.parameters())
    targets = torch.rand(len(params)) * 6
    for i, (param, target) in enumerate(zip(params, targets)):
        if i % 11 == 3:
            param.grad = torch.zeros_like(param)
        elif param.grad is not None:
            param.grad = torch.randn_like(param) * (target / (param.numel() ** 0.5))
    params[1].grad = None
    return model


def clip_one_call_per_parameter(model: nn.Module, max_norm: float) -> None:
    """The previous implementation."""
    for param in model.parameters():
        if param.grad is not None:
            nn.utils.clip_grad_norm_(param, max_norm)


def clip_dino_formula(model: nn.Module, max_norm: float) -> None:
    """DINO's utils.clip_gradients, written out."""
    for param in model.parameters():
        if param.grad is not None:
            clip_coef = max_norm / (param.grad.norm(2) + 1e-6)
            if clip_coef < 1:
                param.grad.mul_(clip_coef)


def gradients(model: nn.Module) -> list:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def test_foreach_clipping_matches_per_parameter_clipping_and_dino():
    max_norm = 3.0
    results = []
    for clip in (clip_gradients, clip_one_call_per_parameter, clip_dino_formula):
        model = student_with_gradients()
        before = gradients(model)
        clip(model, max_norm)
        results.append(gradients(model))
    norms = [g.norm() for g in before if g is not None]
    # the data exercises both branches: some clipped, some left alone, zeros, a missing grad
    assert any(n > max_norm for n in norms) and any(0 < n < max_norm for n in norms)
    assert any(n == 0 for n in norms) and any(g is None for g in before)
    ours, previous, dino = results
    for mine, old, formula, original in zip(ours, previous, dino, before):
        if original is None:
            assert mine is None
            continue
        torch.testing.assert_close(mine, old, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(mine, formula, rtol=1e-6, atol=1e-9)
        assert mine.norm() <= max_norm * (1 + 1e-5)


def test_clipping_disabled_and_without_gradients_changes_nothing():
    model = student_with_gradients()
    before = gradients(model)
    clip_gradients(model, 0.0)
    for mine, original in zip(gradients(model), before):
        assert (mine is None and original is None) or torch.equal(mine, original)
    clip_gradients(nn.Linear(2, 2), 3.0)  # no gradient at all: nothing to do, no error
