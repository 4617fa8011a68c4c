"""Opt-in fine-tuning levers, each against its formula: layer-wise lr decay, KoLeo, head warm-up;
and the recipe overlays in config/recipes/."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from test_train_run import (  # noqa: F401 (cache, one_torch_thread: fixtures)
    SINGLE_PROCESS,
    cache,
    make_job,
    one_torch_thread,
)

from workflow_scripts import config as cfg
from workflow_scripts.errors import InputError
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.train import koleo, loop, optim
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.optim import (
    build_optimizer,
    layer_lr_scale,
    param_groups,
    set_lr_and_weight_decay,
)

ARCH = "vit_small_patch16_dinov3.lvd1689m"
HEAD = {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8}


def test_layer_lr_scale_is_dinov3s_formula():
    # depth 3: tokens / patch embedding are layer 0, blocks.i layer i + 1, the rest layer 4
    expected = {
        "backbone.cls_token": 0.9**4,
        "backbone.reg_token": 0.9**4,
        "backbone.patch_embed.proj.weight": 0.9**4,
        "backbone.blocks.0.attn.qkv.weight": 0.9**3,
        "backbone.blocks.2.mlp.fc2.bias": 0.9,
        "backbone.norm.weight": 1.0,
        "head.mlp.0.weight": 1.0,
        "head.last_layer.weight": 1.0,
    }
    for name, scale in expected.items():
        assert layer_lr_scale(name, 0.9, 3) == pytest.approx(scale), name


def test_layer_decay_scales_each_parameters_adamw_step():
    """AdamW's first step moves each element by lr x scale (m / sqrt(v) = sign(g)), weight
    decay 0: the measured step of every parameter is its layer's scaled lr."""
    torch.manual_seed(0)
    backbone = build_backbone(ARCH, "none", {"depth": 2, "embed_dim": 32, "num_heads": 2})
    model = build_dino_model(backbone, HEAD)
    groups = param_groups(model, set(), layer_decay=0.5, num_layers=2)
    assert {g[optim.LR_SCALE] for g in groups} == {1.0, 0.5, 0.25, 0.125}
    optimizer = build_optimizer(groups, {"name": "adamw", "betas": [0.9, 0.999]}, "cpu")
    set_lr_and_weight_decay(optimizer, lr=1e-3, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model([torch.rand(2, 3, 32, 32)]).square().mean().backward()
    optimizer.step()
    for name, param in model.named_parameters():
        step = (param.detach() - before[name]).abs()
        moved = step[param.grad.abs() > 1e-6] if param.grad is not None else step[:0]
        if moved.numel():
            expected = 1e-3 * layer_lr_scale(name, 0.5, 2)
            assert moved.max().item() == pytest.approx(expected, rel=1e-2), name


def test_param_groups_without_layer_decay_are_the_two_decay_groups():
    backbone = build_backbone(ARCH, "none", {"depth": 1, "embed_dim": 32, "num_heads": 2})
    groups = param_groups(build_dino_model(backbone, HEAD), set())
    assert [(g[optim.DECAY_FLAG], g[optim.LR_SCALE]) for g in groups] == [(True, 1.0), (False, 1.0)]


def test_koleo_matches_brute_force_nearest_neighbours():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    x[3] = x[7] * 2.5 + rng.normal(scale=1e-3, size=5)  # a close pair: a large -log term
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    distances = cdist(unit, unit)
    np.fill_diagonal(distances, np.inf)
    expected = -np.log(distances.min(axis=1) + koleo.EPS).mean()
    got = koleo.koleo_loss(torch.from_numpy(x))
    assert float(got) == pytest.approx(expected, rel=1e-4)
    spread = torch.from_numpy(x).requires_grad_()
    koleo.koleo_loss(spread).backward()
    assert torch.isfinite(spread.grad).all() and spread.grad.abs().sum() > 0


def test_koleo_term_sums_the_global_views_only():
    torch.manual_seed(1)
    embeddings = torch.randn(5 * 4, 6)  # 2 global + 3 local views of 4 images, one call
    expected = koleo.koleo_loss(embeddings[:4]) + koleo.koleo_loss(embeddings[4:8])
    assert float(koleo.koleo_term(embeddings, 2, 4)) == pytest.approx(float(expected))


def test_koleo_weight_adds_the_term_on_the_students_global_cls(tmp_path, cache):
    job = make_job(
        tmp_path,
        cache,
        drop_path_rate=0.0,
        loss={"koleo_weight": 0.5},
        optimizer={"warmup_epochs": 0},
    )
    trainer = loop.Trainer(job, SINGLE_PROCESS)
    batch = next(iter(trainer.loader))
    n_global = trainer.n_global_crops
    with torch.no_grad():
        cls = trainer.student.backbone(torch.cat(batch[:n_global]))
        teacher_output = trainer.teacher(batch[:n_global])
        student_output = trainer.student(batch)
    expected_koleo = float(koleo.koleo_term(cls, n_global, len(batch[0])))
    centre = trainer.loss.center.clone()
    dino = float(trainer.loss(student_output, teacher_output, trainer.schedules.teacher_temp[0]))
    trainer.loss.center.copy_(centre)  # the step below must see the same centre
    total = trainer.train_step(batch, epoch=0, step=0)
    assert total == pytest.approx(dino + 0.5 * expected_koleo, rel=1e-4)
    stats = trainer.health.epoch_stats(trainer.loss.center)
    assert stats["koleo"] == pytest.approx(expected_koleo, rel=1e-4)


def test_head_warmup_freezes_the_backbone_for_its_epochs(tmp_path, cache):
    job = make_job(
        tmp_path,
        cache,
        optimizer={"warmup_epochs": 0, "head_warmup_epochs": 1, "freeze_last_layer_epochs": 0},
    )
    trainer = loop.Trainer(job, SINGLE_PROCESS)
    batch = next(iter(trainer.loader))

    def changed(before):
        return {n for n, p in trainer.student.named_parameters() if not torch.equal(before[n], p)}

    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    teacher_before = {n: p.clone() for n, p in trainer.teacher.backbone.state_dict().items()}
    trainer.train_step(batch, epoch=0, step=0)
    moved = changed(before)
    assert moved and all(n.startswith("head.") for n in moved)
    assert all(
        torch.equal(teacher_before[n], p) for n, p in trainer.teacher.backbone.state_dict().items()
    )
    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    trainer.train_step(batch, epoch=1, step=0)
    assert any(n.startswith("backbone.") for n in changed(before))


def test_layer_decay_needs_a_vit(tmp_path, cache):
    job = make_job(tmp_path, cache, optimizer={"layer_decay": 0.9})
    trainer = loop.Trainer(job, SINGLE_PROCESS)
    assert len({g[optim.LR_SCALE] for g in trainer.optimizer.param_groups}) == 4  # depth 2
    with pytest.raises(InputError, match="layer_decay"):
        loop._vit_depth(torch.nn.Linear(2, 2), 0.9)


RECIPES = sorted((cfg.REPO_DIR / "config" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_compose_with_the_config_and_the_demo(recipe):
    config = cfg.load([cfg.REPO_DIR / "config.yaml", recipe])
    assert config["train"]["epochs"] >= 1
    demo = [cfg.REPO_DIR / "config.yaml", cfg.REPO_DIR / "config" / "demo.yaml", recipe]
    try:
        config = cfg.load(demo)
    except InputError as err:
        # a recipe's warm-up longer than the demo's 4 epochs (the seed's 10) is refused by name
        assert "warm-up of" in str(err) and "is longer than the run" in str(err)
    else:
        assert config["train"]["epochs"] >= 1


def test_seed_recipe_restates_the_defaults():
    """config.yaml's train section is the seed's: the seed overlay changes only the precision."""
    plain = cfg.load([cfg.REPO_DIR / "config.yaml"])
    seed_recipe = cfg.REPO_DIR / "config" / "recipes" / "seed.yaml"
    seeded = cfg.load([cfg.REPO_DIR / "config.yaml", seed_recipe])
    assert seeded["train"].pop("precision") == "fp32" and plain["train"].pop("precision") == "auto"
    assert seeded == plain
    train = plain["train"]
    assert train["optimizer"]["clip_grad"] == 0 and train["images"] == "treated"
    assert train["global_crops"]["ratio"] == [1, 1] == train["local_crops"]["ratio"]
    assert math.isclose(train["optimizer"]["lr"], 4e-6) and train["loss"]["koleo_weight"] == 0
