"""DINO training components against independent formulas: loss, centre, schedules, EMA, head,
parameter groups."""

import math
import subprocess

import numpy as np
import pytest
import timm
import torch

from workflow_scripts.model.precision import Precision
from workflow_scripts.train import distributed
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.ema import make_teacher, update_teacher
from workflow_scripts.train.head import DINOHead
from workflow_scripts.train.loss import DINOLoss
from workflow_scripts.train.optim import (
    DECAY_FLAG,
    build_optimizer,
    param_groups,
    set_lr_and_weight_decay,
)
from workflow_scripts.train.schedules import (
    build_schedules,
    cosine_schedule,
    scaled_lr,
    teacher_temp_schedule,
)

TINY = dict(depth=2, embed_dim=64, num_heads=2)
SMALL_HEAD = dict(out_dim=32, hidden_dim=16, bottleneck_dim=8)


def tiny_backbone(**kwargs):
    return timm.create_model(
        "vit_small_patch16_dinov3", pretrained=False, num_classes=0, **TINY, **kwargs
    )


def explicit_dino_loss(student, teacher, center, n_global, n_crops, batch, t_student, t_teacher):
    """Plain-Python DINO loss: rows are crop-major (crop c, sample b) -> row c * batch + b."""

    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]

    total, pairs = 0.0, 0
    for iq in range(n_global):
        for v in range(n_crops):
            if v == iq:
                continue
            pair = 0.0
            for b in range(batch):
                t_row = teacher[iq * batch + b]
                q = softmax([(t_row[k] - center[k]) / t_teacher for k in range(len(t_row))])
                p = softmax([s / t_student for s in student[v * batch + b]])
                pair += -sum(q[k] * math.log(p[k]) for k in range(len(q)))
            total += pair / batch
            pairs += 1
    return total / pairs


def test_dino_loss_matches_explicit_formula_and_updates_centre():
    torch.manual_seed(0)
    batch, n_global, n_local, dim = 3, 2, 2, 5
    student = torch.randn((n_global + n_local) * batch, dim, dtype=torch.float64)
    teacher = torch.randn(n_global * batch, dim, dtype=torch.float64)
    loss_fn = DINOLoss(dim, n_global, n_local, student_temp=0.1, center_momentum=0.8)
    center = [0.3, -0.2, 0.1, 0.0, 0.5]
    loss_fn.center.copy_(torch.tensor([center]))

    loss = loss_fn(student.float(), teacher.float(), teacher_temp=0.04)

    expected = explicit_dino_loss(
        student.tolist(), teacher.tolist(), center, n_global, n_global + n_local, batch, 0.1, 0.04
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the loss used the old centre; afterwards centre = 0.8 old + 0.2 mean(teacher rows)
    column_means = [sum(row[k] for row in teacher.tolist()) / len(teacher) for k in range(dim)]
    expected_center = [0.8 * c + 0.2 * m for c, m in zip(center, column_means)]
    assert loss_fn.center[0].tolist() == pytest.approx(expected_center, rel=1e-5)
    assert "center" in loss_fn.state_dict()  # travels with the resume state


def test_dino_loss_gradient_reaches_student_only():
    student = torch.randn(8, 16, requires_grad=True)
    teacher = torch.randn(4, 16)
    DINOLoss(16, 2, 2)(student, teacher, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_teacher_temperature_warms_up_linearly_then_stays():
    temps = teacher_temp_schedule(0.04, 0.07, warmup_epochs=4, epochs=10)
    assert len(temps) == 10
    assert temps[0] == pytest.approx(0.04)
    assert temps[1] == pytest.approx(0.05)
    assert temps[3] == pytest.approx(0.07)
    assert np.allclose(temps[3:], 0.07)
    assert len(teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, epochs=10)) == 10


def test_cosine_schedule_with_warmup_values():
    lr = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10)
    assert len(lr) == 100
    assert lr[0] == 0.0
    assert lr[5] == pytest.approx(0.5)  # linear warm-up
    assert lr[10] == pytest.approx(1.0)  # peak at the end of warm-up
    assert lr[-1] == pytest.approx(0.1)  # min at the last iteration
    midpoint = 10 + (100 - 10 - 1) / 2
    assert np.interp(midpoint, np.arange(100), lr) == pytest.approx(0.55, abs=1e-3)
    assert np.all(np.diff(lr[10:]) <= 0)


def test_build_schedules_per_iteration_and_linear_lr_scaling():
    settings = {
        "epochs": 4,
        "batch_size_per_gpu": 32,
        "optimizer": {
            "lr": 1e-3,
            "min_lr": 1e-5,
            "lr_scaling": "linear",
            "warmup_epochs": 1,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
        },
        "teacher_momentum": {"start": 0.99, "end": 1.0},
        "loss": {
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "warmup_teacher_temp_epochs": 2,
        },
    }
    schedules = build_schedules(settings, steps_per_epoch=5, world_size=4)
    peak = 1e-3 * 32 * 4 / 256
    assert len(schedules.lr) == len(schedules.weight_decay) == len(schedules.teacher_momentum) == 20
    assert schedules.lr[5] == pytest.approx(peak)
    assert schedules.lr[-1] == pytest.approx(1e-5 * 32 * 4 / 256)
    assert (schedules.weight_decay[0], schedules.weight_decay[-1]) == pytest.approx((0.04, 0.4))
    momentum = schedules.teacher_momentum
    assert (momentum[0], momentum[-1]) == pytest.approx((0.99, 1.0))
    assert schedules.teacher_temp.tolist() == pytest.approx([0.04, 0.07, 0.07, 0.07])
    assert scaled_lr({"lr": 2e-4, "min_lr": 1e-6, "lr_scaling": "none"}, 64, 8) == (2e-4, 1e-6)


def test_ema_update_formula_and_teacher_is_frozen_copy():
    torch.manual_seed(0)
    student = build_dino_model(tiny_backbone(drop_path_rate=0.2), SMALL_HEAD)
    teacher = make_teacher(student)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for s, t in zip(student.parameters(), teacher.parameters()):
        assert torch.equal(s, t)

    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    update_teacher(student, teacher, momentum=0.9)
    for old, s, t in zip(before, student.parameters(), teacher.parameters()):
        assert torch.allclose(t, 0.9 * old + 0.1 * s, atol=1e-6)
    # eval mode: drop-path off, so the teacher's targets are deterministic
    crops = [torch.rand(2, 3, 32, 32)]
    assert torch.equal(teacher(crops), teacher(crops))


def test_head_shapes_and_weight_normalised_last_layer():
    head = DINOHead(64, 100, hidden_dim=32, bottleneck_dim=16, nlayers=3, norm_last_layer=True)
    magnitude = head.last_layer.parametrizations.weight.original0
    assert torch.all(magnitude == 1) and not magnitude.requires_grad
    prototypes = head.last_layer.weight
    assert torch.allclose(prototypes.norm(dim=1), torch.ones(100), atol=1e-5)
    assert head(torch.randn(5, 64)).shape == (5, 100)
    free = DINOHead(64, 100, hidden_dim=32, bottleneck_dim=16, use_bn=True, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in free.modules())
    assert isinstance(DINOHead(64, 100, 32, 16, nlayers=1).mlp, torch.nn.Linear)


def test_param_groups_exclude_biases_norms_and_tokens_from_weight_decay():
    backbone = tiny_backbone()
    model = build_dino_model(backbone, SMALL_HEAD)
    no_decay_names = {f"backbone.{n}" for n in backbone.no_weight_decay()}
    decay, no_decay = param_groups(model, no_decay_names)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    for token in ("backbone.cls_token", "backbone.reg_token"):
        assert token in not_decayed
    assert "backbone.blocks.0.attn.qkv.weight" in decayed
    assert "backbone.blocks.0.norm1.weight" in not_decayed
    assert "backbone.blocks.0.attn.proj.bias" in not_decayed
    assert "head.mlp.0.weight" in decayed
    # the fixed weight-norm magnitude (norm_last_layer) is not optimised at all
    assert "head.last_layer.parametrizations.weight.original0" not in decayed | not_decayed

    optimizer = build_optimizer([decay, no_decay], {"name": "adamw", "betas": [0.9, 0.999]}, "cpu")
    set_lr_and_weight_decay(optimizer, lr=0.5, weight_decay=0.04)
    by_flag = {g[DECAY_FLAG]: g for g in optimizer.param_groups}
    assert by_flag[True]["weight_decay"] == 0.04 and by_flag[False]["weight_decay"] == 0.0
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups)
    sgd = build_optimizer([decay, no_decay], {"name": "sgd", "momentum": 0.9}, "cpu")
    assert sgd.param_groups[0]["momentum"] == 0.9


def test_precision_resolution():
    assert Precision.resolve("auto", "cpu").autocast_dtype is None
    assert Precision.resolve("auto", "cuda").autocast_dtype == torch.bfloat16
    assert Precision.resolve("fp16", "cpu").grad_scaler() is not None
    assert Precision.resolve("bf16", "cpu").grad_scaler() is None


def test_launcher_ranks_from_torchrun_or_srun():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert distributed.launcher_ranks(torchrun) == (3, 4, 1)
    assert distributed.launcher_ranks(srun) == (5, 8, 1)
    # torchrun inside a one-task SLURM allocation (what rules/train.smk does) wins
    assert distributed.launcher_ranks({**srun, **torchrun}) == (3, 4, 1)
    assert distributed.launcher_ranks({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1, 0)
    assert distributed.launcher_ranks({}) == (0, 1, 0)


def test_slurm_rendezvous_resolves_the_first_node(monkeypatch):
    calls = []

    def fake_scontrol(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="gpu-017\ngpu-018\n")

    monkeypatch.setattr(distributed.subprocess, "run", fake_scontrol)
    env = {"SLURM_JOB_NODELIST": "gpu-[017-018]", "SLURM_JOB_ID": "123456"}
    assert distributed.slurm_rendezvous(env) == {"MASTER_ADDR": "gpu-017", "MASTER_PORT": "23456"}
    assert calls == [["scontrol", "show", "hostnames", "gpu-[017-018]"]]
    given = {**env, "MASTER_ADDR": "head", "MASTER_PORT": "29500"}
    assert distributed.slurm_rendezvous(given) == {"MASTER_ADDR": "head", "MASTER_PORT": "29500"}
    assert len(calls) == 1
