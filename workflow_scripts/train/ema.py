"""The DINO teacher: an exponential moving average of the student, never trained by gradients."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """An identical copy without gradients, in eval mode for good: no drop-path (DINO's teacher
    is built without it) and deterministic targets."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def update_teacher(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter.
    Buffers (BatchNorm statistics of an optional BN head) are copied from the student."""
    pairs = zip(teacher.parameters(), student.parameters(), strict=True)
    for teacher_param, student_param in pairs:
        teacher_param.lerp_(student_param.detach(), 1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        teacher_buffer.copy_(student_buffer)
