"""Typical Variation Normalization (TVN, Ando et al. 2017): whiten every image's features with
the principal components of the negative-control (DMSO) images.

Directions along which untreated cells vary (staining, focus, plate and batch drift) are shrunk
and the rest rescaled, so that the cosine similarity of treatment profiles measures deviations
from the typical control rather than nuisance variation. All images are centred on the DMSO mean.

Fitted by an explicit eigendecomposition (of the DMSO covariance matrix, float64) rather than
sklearn's PCA(whiten=True): the number of kept components is capped explicitly at what the DMSO
set supports (n_dmso - 1, feature dimension, `max_components`), and components whose eigenvalue is
at most `eps` x the largest one are dropped instead of being divided by ~0.

`scope="per_batch"` fits one whitening per batch on that batch's DMSO images and applies it to that
batch. Each batch's principal axes differ, so its whitened coordinates are rotated back onto the
original feature axes (ZCA: x -> (x - mean) V diag(1/sqrt(lambda)) V^T); otherwise component k of
one batch would be compared with an unrelated component k of another. Every batch keeps the same
number of components (the smallest any batch supports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workflow_scripts.errors import InputError

SCOPES = ("global", "per_batch")


@dataclass(frozen=True)
class Whitening:
    """x -> (x - mean) @ projection; projection columns = eigenvectors / sqrt(eigenvalues)."""

    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (D, K), K sorted by decreasing eigenvalue

    @property
    def n_components(self) -> int:
        return self.projection.shape[1]

    def truncated(self, n_components: int) -> "Whitening":
        return Whitening(self.mean, self.projection[:, :n_components])

    def transform(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) @ self.projection

    def transform_in_feature_axes(self, features: np.ndarray) -> np.ndarray:
        """ZCA: whitened, then rotated back onto the input's axes (comparable across fits)."""
        axes = self.projection / np.linalg.norm(self.projection, axis=0)  # unit eigenvectors
        return self.transform(features) @ axes.T


def fit_whitening(dmso: np.ndarray, max_components: int | None, eps: float, where: str) -> Whitening:
    """PCA whitening of the control features `dmso` (n, D); `where` names the set in errors."""
    n, dim = dmso.shape
    if n < 2:
        raise InputError(
            f"{where}: TVN needs at least 2 DMSO images, found {n} "
            "(set evaluate.tvn.enabled: false or evaluate.tvn.scope: global)"
        )
    dmso = np.asarray(dmso, dtype=np.float64)
    mean = dmso.mean(axis=0)
    centred = dmso - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (n - 1))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]  # largest first
    if eigenvalues[0] <= 0:
        raise InputError(f"{where}: the DMSO features do not vary; TVN cannot whiten them")
    supported = int(np.count_nonzero(eigenvalues > eps * eigenvalues[0]))
    keep = min(supported, n - 1, dim, max_components or dim)
    projection = eigenvectors[:, :keep] / np.sqrt(eigenvalues[:keep])
    return Whitening(mean, projection)


def apply_tvn(
    features: np.ndarray,
    is_control: np.ndarray,
    batches: np.ndarray,
    scope: str = "global",
    max_components: int | None = None,
    eps: float = 1e-6,
) -> tuple[np.ndarray, int]:
    """Whiten all images (rows of `features`) with the DMSO PCA; returns (whitened, n_components)."""
    if scope not in SCOPES:
        raise InputError(f"settings key 'tvn.scope': '{scope}' is not one of {', '.join(SCOPES)}")
    is_control = np.asarray(is_control, dtype=bool)
    if scope == "global":
        whitening = fit_whitening(features[is_control], max_components, eps, "all batches")
        return whitening.transform(features), whitening.n_components
    batches = np.asarray(batches)
    fitted = {
        batch: fit_whitening(
            features[is_control & (batches == batch)], max_components, eps, f"batch '{batch}'"
        )
        for batch in np.unique(batches)
    }
    common = min(w.n_components for w in fitted.values())
    whitened = np.empty(features.shape, dtype=np.float64)
    for batch, whitening in fitted.items():
        rows = batches == batch
        whitened[rows] = whitening.truncated(common).transform_in_feature_axes(features[rows])
    return whitened, common
