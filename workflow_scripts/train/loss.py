"""DINO self-distillation loss: every student crop predicts the teacher's centred, sharpened
distribution of the other global crops."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F


class DINOLoss(nn.Module):
    """Cross-entropy H(teacher(global crop i), student(crop v)) averaged over all pairs v != i.

    The centre (EMA of the mean teacher output, over all ranks) is a persistent buffer, so it
    travels with `state_dict()` into the resume state.
    """

    def __init__(
        self,
        out_dim: int,
        n_global_crops: int,
        n_local_crops: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.n_global_crops = n_global_crops
        self.n_crops = n_global_crops + n_local_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_output: torch.Tensor, teacher_output: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """student_output: (n_crops * B, K), teacher_output: (n_global_crops * B, K), both in
        crop-major order. Returns the loss (computed with the centre before this batch's
        update) and then updates the centre."""
        student_log_probs = F.log_softmax(student_output.float() / self.student_temp, dim=-1)
        teacher_probs = F.softmax((teacher_output.float() - self.center) / teacher_temp, dim=-1)
        student_chunks = student_log_probs.chunk(self.n_crops)
        total = student_output.new_zeros((), dtype=torch.float32)
        n_pairs = 0
        for teacher_view, target in enumerate(teacher_probs.chunk(self.n_global_crops)):
            for student_view, log_probs in enumerate(student_chunks):
                if student_view == teacher_view:  # same crop: nothing to predict
                    continue
                total = total + torch.sum(-target * log_probs, dim=-1).mean()
                n_pairs += 1
        self.update_center(teacher_output)
        return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_sum = teacher_output.float().sum(dim=0, keepdim=True)
        count = len(teacher_output)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            count *= dist.get_world_size()
        batch_center = batch_sum / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
