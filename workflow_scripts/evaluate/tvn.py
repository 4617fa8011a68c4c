"""Typical Variation Normalization (TVN, Ando et al. 2017): whiten every image's features with
the principal components of the negative-control (DMSO) images.

Directions along which untreated cells vary (staining, focus, plate and batch drift) are shrunk
and the rest rescaled, so that the cosine similarity of treatment profiles measures deviations
from the typical control rather than nuisance variation. All images are centred on the DMSO mean.

Fitted by a singular value decomposition of the centred DMSO matrix (float64), the same
whitening as sklearn's PCA(whiten=True) fitted on the DMSO rows. Working on the data matrix
rather than its covariance matters: the covariance squares the condition number, so features
whose variances span many orders of magnitude (CellProfiler tables; ViT embeddings with a few
"massive activation" dimensions) lose their small components to rounding.

Components kept: every direction the DMSO set supports numerically. A singular value counts when
it exceeds `max(n, D) * machine epsilon * largest` (the numerical-rank rule of
numpy.linalg.matrix_rank), so the rank is limited by n_dmso - 1, the feature dimension and exact
redundancy (constant or duplicated features), never by how the features are scaled. Optional:
`eps`, a relative floor on the component variance (component kept only if its variance exceeds
eps x the largest), and `max_components`, an explicit cap. Every drop is counted in the report.
Accuracy: the whitened DMSO covariance is the identity to about machine epsilon x (largest /
smallest kept singular value): ~1e-11 for DMSO variances spanning 15 orders of magnitude
(tests/test_eval_tvn_conditioning.py), where the covariance route was off by up to 2.

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
    """x -> (x - mean) @ projection; projection columns = principal axes / sqrt(variances)."""

    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (D, K), K sorted by decreasing variance
    possible: int  # min(n_dmso - 1, D): components a DMSO set of this size could support
    rank: int  # components above the rank tolerance (and the eps floor, when set)

    @property
    def n_components(self) -> int:
        return self.projection.shape[1]

    def truncated(self, n_components: int) -> Whitening:
        return Whitening(self.mean, self.projection[:, :n_components], self.possible, self.rank)

    def transform(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) @ self.projection

    def transform_in_feature_axes(self, features: np.ndarray) -> np.ndarray:
        """ZCA: whitened, then rotated back onto the input's axes (comparable across fits)."""
        axes = self.projection / np.linalg.norm(self.projection, axis=0)  # unit principal axes
        return self.transform(features) @ axes.T


def fit_whitening(
    dmso: np.ndarray, max_components: int | None, eps: float | None, where: str
) -> Whitening:
    """PCA whitening of the control features `dmso` (n, D); `where` names the set in errors."""
    n, dim = dmso.shape
    if n < 2:
        raise InputError(
            f"{where}: TVN needs at least 2 DMSO images, found {n} "
            "(set evaluate.tvn.enabled: false or evaluate.tvn.scope: global)"
        )
    dmso = np.asarray(dmso, dtype=np.float64)
    mean = dmso.mean(axis=0)
    _, singular, axes = np.linalg.svd(dmso - mean, full_matrices=False)  # descending
    if singular[0] <= 0:
        raise InputError(f"{where}: the DMSO features do not vary; TVN cannot whiten them")
    tolerance = singular[0] * max(n, dim) * np.finfo(np.float64).eps
    supported = singular > tolerance
    if eps is not None:
        supported &= singular**2 > eps * singular[0] ** 2
    possible = min(n - 1, dim)
    rank = min(int(np.count_nonzero(supported)), possible)
    keep = min(rank, max_components or rank)
    std = singular[:keep] / np.sqrt(n - 1)
    return Whitening(mean, axes[:keep].T / std, possible, rank)


def whiten(
    features: np.ndarray,
    is_control: np.ndarray,
    batches: np.ndarray,
    scope: str = "global",
    max_components: int | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Whiten all images (rows of `features`) with the DMSO PCA.

    Returns (whitened, report); report: components (kept), possible (min(n_dmso - 1, D), per
    batch the smallest), below_tolerance (possible components dropped as numerically absent or
    under the eps floor), over_max_components (dropped by the cap or, per batch, to match the
    batch with the fewest), and per_batch (components each batch supports; per_batch scope only).
    """
    if scope not in SCOPES:
        raise InputError(f"settings key 'tvn.scope': '{scope}' is not one of {', '.join(SCOPES)}")
    is_control = np.asarray(is_control, dtype=bool)
    if scope == "global":
        whitening = fit_whitening(features[is_control], max_components, eps, "all batches")
        report = {
            "components": whitening.n_components,
            "possible": whitening.possible,
            "below_tolerance": whitening.possible - whitening.rank,
            "over_max_components": whitening.rank - whitening.n_components,
        }
        return whitening.transform(features), report
    batches = np.asarray(batches)
    fitted = {
        str(batch): fit_whitening(
            features[is_control & (batches == batch)], max_components, eps, f"batch '{batch}'"
        )
        for batch in np.unique(batches)
    }
    common = min(w.n_components for w in fitted.values())
    whitened = np.empty(features.shape, dtype=np.float64)
    for batch, whitening in fitted.items():
        rows = batches == batch
        whitened[rows] = whitening.truncated(common).transform_in_feature_axes(features[rows])
    smallest = min(fitted.values(), key=lambda w: w.possible)
    report = {
        "components": common,
        "possible": smallest.possible,
        "below_tolerance": max(w.possible - w.rank for w in fitted.values()),
        "over_max_components": max(w.rank for w in fitted.values()) - common,
        "per_batch": {batch: w.rank for batch, w in fitted.items()},
    }
    return whitened, report


def apply_tvn(
    features: np.ndarray,
    is_control: np.ndarray,
    batches: np.ndarray,
    scope: str = "global",
    max_components: int | None = None,
    eps: float | None = None,
) -> tuple[np.ndarray, int]:
    """Whiten all images (rows of `features`) with the DMSO PCA; returns (whitened,
    n_components)."""
    whitened, report = whiten(features, is_control, batches, scope, max_components, eps)
    return whitened, report["components"]
