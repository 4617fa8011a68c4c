"""KoLeo regulariser (DINOv2/DINOv3, Sablayrolles et al. 2019) on the student's CLS embeddings.

Kozachenko-Leonenko differential-entropy estimate: for L2-normalised embeddings x_i of a batch,
loss = -mean_i log(||x_i - x_nn(i)|| + eps), x_nn(i) the nearest other row. Minimising it spreads
the embeddings uniformly over the sphere, which helps nearest-neighbour retrieval. DINOv2/v3 apply
it to the backbone's CLS output of each global-crop view separately (weight 0.1); here the weight
is the config key `train.loss.koleo_weight` (0 = off, the seed's recipe).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-8


def koleo_loss(embeddings: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """KoLeo loss of one (N, D) batch, N >= 2; differentiable."""
    x = F.normalize(embeddings.float(), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
        neighbour = similarity.argmax(dim=1)
    distances = F.pairwise_distance(x, x[neighbour], p=2, eps=eps)
    return -torch.log(distances + eps).mean()


class GlobalCropEmbeddings:
    """Keeps the student backbone's output of its first call in a forward pass: MultiCropModel
    runs the backbone on the global crops first (one call per crop size), so these are the
    global crops' CLS embeddings, crop-major, with their graph."""

    def __init__(self, backbone: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self._hook = backbone.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.output is None:
            self.output = output

    def take(self) -> torch.Tensor:
        """The captured embeddings; resets for the next forward pass."""
        if self.output is None:
            raise RuntimeError("the student backbone has not run since the last take()")
        output, self.output = self.output, None
        return output

    def close(self) -> None:
        self._hook.remove()


def koleo_term(embeddings: torch.Tensor, n_global_crops: int, batch_size: int) -> torch.Tensor:
    """Sum over the global-crop views of each view's KoLeo loss (DINOv2/v3). `embeddings`: the
    first backbone call's rows, crop-major (more rows when local crops share the global size)."""
    views = embeddings[: n_global_crops * batch_size].split(batch_size)
    return sum(koleo_loss(view) for view in views)
