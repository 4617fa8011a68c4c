"""Training health: do the teacher's output and the backbone's CLS embedding depend on the image?

DINO fails silently by collapse: the teacher's centred, sharpened distribution becomes the same for
every image, either uniform (entropy -> ln K; the loss then equals ln K and looks stable) or
one-hot on one prototype. The loss alone cannot show it: loss = H(teacher) + KL(teacher||student),
and a uniform collapse has a large H with a KL near 0. Per epoch (means over steps) the log gets:

- teacher_entropy: mean entropy of the teacher's per-crop distribution (nats; max ln K),
- teacher_batch_entropy: entropy of the teacher's distribution averaged over the batch's crops,
- teacher_mutual_info: their difference, what the teacher's prototype says about the image
  (0 = the same distribution for every crop: collapsed, uniform or one-hot),
- teacher_kl: KL(teacher||student) = loss - teacher_entropy (each teacher crop is in the same
  number of loss pairs, so the mean cross-entropy splits exactly),
- center_norm: L2 norm of the loss's centre at the end of the epoch,
- cls_std: mean over dimensions of the standard deviation across the teacher's global crops of
  the backbone's pooled (CLS) embedding; cls_relative_std: that over the embedding's RMS value,
- cls_effective_rank: exp of the entropy of the normalised singular values of the centred
  embedding matrix (Roy & Vetterli 2007): 1 = one direction of variation, up to min(rows, D),
- collapse: null, or, when the teacher's distribution is the same for every crop (mutual
  information below 0.01 nat), its kind: "uniform" (entropy > 0.95 ln K), "one-hot" (entropy
  < 0.05 ln K) or "constant" (any other distribution).

Statistics are of this process's batches (rank 0 logs them); they observe, never change, training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Collapse rule, on the epoch means: the teacher's distribution does not depend on the crop. The
# collapsed demo (layer-scale init 1e-5) logs 0.0000 nat from epoch 1 (entropy -> ln K); the
# demo with layer-scale init 1.0 logs 0.14 nat at epoch 1 and rises (of at most ln(2 x batch)).
MIN_MUTUAL_INFO_NATS = 0.01
UNIFORM_ENTROPY_FRACTION = 0.95  # the kind of a collapse, by its entropy
ONE_HOT_ENTROPY_FRACTION = 0.05


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a (N, K) probability matrix; 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


def teacher_probabilities(
    teacher_output: torch.Tensor, center: torch.Tensor, teacher_temp: float
) -> torch.Tensor:
    """The teacher's targets in DINOLoss: softmax((output - centre) / temperature)."""
    return torch.softmax((teacher_output.float() - center) / teacher_temp, dim=-1)


def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy of p), p = singular values / their sum, of the column-centred (N, D) matrix;
    0 for a matrix without variation."""
    centred = embeddings.double() - embeddings.double().mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    total = singular.sum()
    if not total > 0:
        return 0.0
    return float(torch.exp(entropy(singular / total)))


def embedding_spread(embeddings: torch.Tensor) -> tuple[float, float]:
    """(mean per-dimension std across rows, that / RMS of all values) of an (N, D) matrix."""
    values = embeddings.double()
    std = float(values.std(dim=0, unbiased=False).mean())
    rms = float(values.pow(2).mean().sqrt())
    return std, (std / rms if rms > 0 else 0.0)


def collapse_kind(stats: dict, out_dim: int) -> str | None:
    """None, or the kind of collapse ("uniform", "one-hot", "constant") when the teacher's
    distribution is the same for every crop."""
    if stats["teacher_mutual_info"] >= MIN_MUTUAL_INFO_NATS:
        return None
    ln_k = math.log(out_dim)
    if stats["teacher_entropy"] > UNIFORM_ENTROPY_FRACTION * ln_k:
        return "uniform"
    if stats["teacher_entropy"] < ONE_HOT_ENTROPY_FRACTION * ln_k:
        return "one-hot"
    return "constant"


class HealthMeter:
    """Accumulates the per-step health statistics of one epoch.

    The backbone embeddings come from a forward hook on the teacher's backbone (its output on the
    global crops, computed anyway), so the model and the loop need no extra forward pass.
    """

    def __init__(self, teacher_backbone: nn.Module, out_dim: int) -> None:
        self.out_dim = out_dim
        self._embeddings: torch.Tensor | None = None
        self._hook = teacher_backbone.register_forward_hook(self._capture)
        self._reset()

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._embeddings = output.detach()

    def _reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._pending_entropy: float | None = None

    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value

    @torch.no_grad()
    def observe_teacher(
        self, teacher_output: torch.Tensor, center: torch.Tensor, teacher_temp: float
    ) -> None:
        """Call after the teacher's forward and before the loss (which updates the centre)."""
        probs = teacher_probabilities(teacher_output, center, teacher_temp)
        row_entropy = float(entropy(probs).mean())
        batch_entropy = float(entropy(probs.mean(dim=0, keepdim=True)).squeeze())
        self._pending_entropy = row_entropy
        self._add("teacher_entropy", row_entropy)
        self._add("teacher_batch_entropy", batch_entropy)
        self._add("teacher_mutual_info", batch_entropy - row_entropy)
        if self._embeddings is not None:
            std, relative = embedding_spread(self._embeddings.float())
            self._add("cls_std", std)
            self._add("cls_relative_std", relative)
            self._add("cls_effective_rank", effective_rank(self._embeddings.float()))
            self._embeddings = None

    def add(self, key: str, value: float) -> None:
        """Another per-step quantity to average over the epoch (e.g. the KoLeo term)."""
        self._add(key, value)

    def observe_loss(self, loss: float) -> None:
        """Call with this process's DINO loss of the step observed by `observe_teacher`."""
        if self._pending_entropy is None:
            raise RuntimeError("observe_teacher must precede observe_loss")
        self._add("teacher_kl", loss - self._pending_entropy)
        self._pending_entropy = None
        self._steps += 1

    def epoch_stats(self, center: torch.Tensor) -> dict:
        """Means over the epoch's steps, the centre norm and the collapse verdict; resets."""
        steps = max(self._steps, 1)
        stats = {key: value / steps for key, value in self._sums.items()}
        stats["center_norm"] = float(center.float().norm())
        stats["collapse"] = collapse_kind(stats, self.out_dim) if self._steps else None
        self._reset()
        return stats

    def close(self) -> None:
        self._hook.remove()
