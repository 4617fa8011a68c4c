"""Attention maps (workflow_scripts/evaluate/attention.py): timm's extracted weights against the
attention module's own output, the patch grid without register tokens, the example fields and
the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from workflow_scripts.data.cache import write_arrays
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import attention
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.model.checkpoint import save_backbone_checkpoint
from workflow_scripts.model.rng import seed_everything

ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def tiny_model(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return build_backbone(ARCH, "none", TINY).eval()


def test_weights_are_row_stochastic_and_reproduce_the_attention_output():
    model = tiny_model()
    block = model.blocks[-1].attn
    captured = {}
    block.register_forward_pre_hook(lambda m, args: captured.update(x=args[0]))
    model.blocks[-1].attn.proj.register_forward_pre_hook(
        lambda m, args: captured.update(out=args[0])
    )
    images = torch.randn(2, 3, 48, 80)
    weights = attention.last_block_attention(model, images)

    tokens = model.num_prefix_tokens + (48 // 16) * (80 // 16)
    assert weights.shape == (2, 4, tokens, tokens)
    assert (weights >= 0).all()
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, tokens), atol=1e-6)
    # values from the block's input and its qkv weights (v takes no RoPE), then weights @ v is
    # what the module projects (its norm is an identity and it has no gate in DINOv3)
    x = captured["x"]
    bias = block.qkv.bias
    if block.q_bias is not None:
        bias = torch.cat((block.q_bias, block.k_bias, block.v_bias))
    with torch.no_grad():
        qkv = F.linear(x, block.qkv.weight, bias).reshape(2, tokens, 3, 4, -1)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    mixed = (weights @ qkv[2]).transpose(1, 2).reshape(2, tokens, -1)
    assert isinstance(block.norm, torch.nn.Identity) and block.gate is None
    assert torch.allclose(mixed, captured["out"], atol=1e-5)
    assert not torch.allclose(weights[0, 0], weights[0, 1])  # heads differ


def test_cls_row_over_patches_excludes_registers_and_has_the_crop_grid():
    model = tiny_model()
    assert model.num_prefix_tokens == 5  # CLS + 4 register tokens
    images = torch.randn(1, 3, 48, 80)
    full = attention.last_block_attention(model, images)
    maps = attention.cls_patch_attention(full, model, 48, 80)
    assert maps.shape == (1, 4, 3, 5)  # 48 / 16 x 80 / 16
    # row-major patch order: map[i, j] is patch token 5 + i * 5 + j
    assert maps[0, 2, 1, 3] == full[0, 2, 0, 5 + 1 * 5 + 3]
    registers = full[0, :, 0, 1:5].sum(-1)
    assert torch.allclose(maps[0].sum((-1, -2)) + registers + full[0, :, 0, 0], torch.ones(4))
    with pytest.raises(ValueError, match="expected 5"):
        attention.cls_patch_attention(full, model, 64, 80)


def test_a_convnext_has_no_attention_maps():
    with torch.device("meta"):
        model = build_backbone("convnext_tiny.dinov3_lvd1689m", "none", {})
    with pytest.raises(InputError, match="need a ViT"):
        attention.attention_module_name(model)


def cache_table(n_fields: int = 10) -> pd.DataFrame:
    rows = [
        # (plate, well, compound, concentration, moa)
        ("P2", "A01", "zeta", 1.0, "M1"),
        ("P1", "A02", "zeta", 3.0, "M1"),
        ("P1", "A03", "alpha", 0.5, "M1"),
        ("P2", "A04", "alpha", 2.0, "M1"),  # M1: alpha (first by name), 2.0 (highest)
        ("P1", "A05", "alpha", 2.0, "M1"),  # ... and of that treatment the first: P1 before P2
        ("P1", "A06", "beta", 1.0, "M0"),
        ("P2", "A07", "DMSO", 0.0, None),
        ("P1", "A08", "DMSO", 0.0, None),  # the first DMSO field: P1
        ("P1", "A09", "gamma", 1.0, "M2"),
        ("P1", "A10", "gamma", 1.0, "M2"),
    ][:n_fields]
    table = pd.DataFrame(rows, columns=["plate", "well", "compound", "concentration", "moa"])
    return table.assign(
        image_id=table["plate"] + "/" + table["well"] + "/s1",
        site=1,
        replicate=1,
        batch="Week1",
        treatment=table["compound"] + "@" + table["concentration"].astype(str),
        is_control=table["compound"] == "DMSO",
        path_DAPI="/x.tif",
    )


def test_example_fields_follow_the_documented_rule():
    picked = attention.example_fields(cache_table())
    assert picked["moa"].tolist()[:3] == ["M0", "M1", "M2"]
    assert picked["is_control"].tolist() == [False, False, False, True]
    assert picked["image_id"].tolist() == ["P1/A06/s1", "P1/A05/s1", "P1/A09/s1", "P1/A08/s1"]
    assert picked["row"].tolist() == [5, 4, 8, 7]
    # the cache's row order does not matter
    shuffled = cache_table().sample(frac=1, random_state=1).reset_index(drop=True)
    assert attention.example_fields(shuffled)["image_id"].tolist() == picked["image_id"].tolist()


def test_cli_writes_both_epochs_on_the_trimmed_fields(tmp_path):
    table = cache_table()
    rng = np.random.default_rng(0)
    field = rng.integers(0, 10000, (len(table), 40, 70), dtype=np.uint16)
    cache = write_arrays(
        tmp_path / "cache", table, {"DAPI": field}, clip_max=10000, settings_digest="t"
    )
    trained = tiny_model(seed=3)
    meta = {"arch": ARCH, "channel": "DAPI", "epoch": 4, "model_kwargs": TINY}
    checkpoint = save_backbone_checkpoint(tmp_path / "train", trained, meta)
    out = tmp_path / "maps.npz"
    status = attention.main(
        [
            "--arch", ARCH, "--channel", "DAPI", "--cache-dir", str(cache), "--weights", "none",
            "--init-seed", "0", "--checkpoint", str(checkpoint), "--model-kwargs",
            json.dumps(TINY), "--out", str(out),
        ]
    )  # fmt: skip
    assert status == 0
    saved = np.load(out)
    info = json.loads(str(saved["info"]))
    assert saved["epochs"].tolist() == [0, 4]
    assert saved["fields"].shape == (4, 1, 32, 64)  # 40 x 70 trimmed to 16-pixel patches
    assert np.array_equal(saved["fields"][1, 0], field[4, :32, :64])
    assert saved["attention"].shape == (2, 4, 4, 2, 4)  # epochs, fields, heads, grid
    assert info["grid"] == [2, 4] and info["heads"] == 4 and info["patch"] == [16, 16]
    assert [f["image_id"] for f in info["fields"]] == [
        "P1/A06/s1",
        "P1/A05/s1",
        "P1/A09/s1",
        "P1/A08/s1",
    ]
    assert info["fields"][3]["is_control"] is True
    # epoch 0 is the random init of train.seed 0, the last epoch the checkpoint's weights
    for epoch, model in ((0, tiny_model(seed=0)), (1, trained)):
        images = torch.from_numpy(saved["fields"][:1].astype(np.float32) / 10000).expand(
            1, 3, -1, -1
        )
        expected = attention.cls_patch_attention(
            attention.last_block_attention(model, images), model, 32, 64
        )
        assert np.allclose(saved["attention"][epoch, 0], expected[0].numpy(), atol=1e-6)
