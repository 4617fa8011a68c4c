"""train.input_standardization: what the backbone sees after value / clip_max."""

import pytest
import timm
import torch

from workflow_scripts.errors import InputError
from workflow_scripts.model.backbone import input_standardization


@pytest.fixture(scope="module")
def tiny():
    return timm.create_model(
        "vit_small_patch16_dinov3",
        pretrained=False,
        num_classes=0,
        depth=1,
        embed_dim=32,
        num_heads=2,
    )


def test_none_passes_scaled_intensities_unchanged(tiny):
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(input_standardization(tiny, "none")(images), images)


def test_pretrained_uses_the_backbones_mean_and_std(tiny):
    config = timm.data.resolve_model_data_config(tiny)
    images = torch.rand(2, 3, 16, 16)
    out = input_standardization(tiny, "pretrained")(images)
    for c in range(3):
        expected = (images[:, c] - config["mean"][c]) / config["std"][c]
        torch.testing.assert_close(out[:, c], expected)


def test_unknown_mode_names_the_key(tiny):
    with pytest.raises(InputError, match="train.input_standardization"):
        input_standardization(tiny, "zscore")
