"""Per-iteration schedules (lr, weight decay, teacher momentum); per-epoch teacher temperature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(
    base: float, final: float, total_iters: int, warmup_iters: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up warmup_start -> base over `warmup_iters` (exclusive), then a half cosine
    from base (at iteration `warmup_iters`) to final (at the last iteration)."""
    warmup_iters = min(warmup_iters, total_iters)
    warmup = warmup_start + (base - warmup_start) * np.arange(warmup_iters) / max(warmup_iters, 1)
    n_cosine = total_iters - warmup_iters
    progress = np.arange(n_cosine) / max(n_cosine - 1, 1)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * progress))
    return np.concatenate([warmup, cosine])


def teacher_temp_schedule(
    warmup_temp: float, temp: float, warmup_epochs: int, epochs: int
) -> np.ndarray:
    """Per epoch: linear warmup_temp -> temp over `warmup_epochs`, then constant."""
    warmup = np.linspace(warmup_temp, temp, warmup_epochs)
    return np.concatenate([warmup, np.full(max(epochs - warmup_epochs, 0), temp)])[:epochs]


def scaled_lr(
    optimizer_settings: dict, batch_size_per_gpu: int, world_size: int
) -> tuple[float, float]:
    """(peak lr, min lr); lr_scaling 'linear' multiplies both by total batch / 256 (DINO rule)."""
    factor = 1.0
    if optimizer_settings["lr_scaling"] == "linear":
        factor = batch_size_per_gpu * world_size / 256
    return optimizer_settings["lr"] * factor, optimizer_settings["min_lr"] * factor


@dataclass(frozen=True)
class Schedules:
    lr: np.ndarray  # per iteration
    weight_decay: np.ndarray  # per iteration
    teacher_momentum: np.ndarray  # per iteration
    teacher_temp: np.ndarray  # per epoch


def build_schedules(settings: dict, steps_per_epoch: int, world_size: int) -> Schedules:
    epochs = settings["epochs"]
    total = epochs * steps_per_epoch
    opt = settings["optimizer"]
    peak, final = scaled_lr(opt, settings["batch_size_per_gpu"], world_size)
    loss = settings["loss"]
    momentum = settings["teacher_momentum"]
    return Schedules(
        lr=cosine_schedule(peak, final, total, opt["warmup_epochs"] * steps_per_epoch),
        weight_decay=cosine_schedule(opt["weight_decay"], opt["weight_decay_end"], total),
        teacher_momentum=cosine_schedule(momentum["start"], momentum["end"], total),
        teacher_temp=teacher_temp_schedule(
            loss["warmup_teacher_temp"],
            loss["teacher_temp"],
            loss["warmup_teacher_temp_epochs"],
            epochs,
        ),
    )
