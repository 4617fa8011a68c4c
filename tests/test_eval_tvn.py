"""TVN: DMSO features come out white (zero mean, identity covariance) on the kept components."""

import numpy as np
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.tvn import apply_tvn, whiten


def correlated(rng, n, dim, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(dim, dim))
    return shift + scale * rng.normal(size=(n, dim)) @ mixing


def assert_white(x):
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.eye(x.shape[1]), atol=1e-8)


def test_global_tvn_whitens_dmso_and_is_applied_to_all_images():
    rng = np.random.default_rng(0)
    dmso = correlated(rng, 300, 8, shift=5.0)
    treated = correlated(rng, 50, 8, shift=9.0)
    features = np.vstack([dmso, treated])
    is_control = np.r_[np.ones(300, bool), np.zeros(50, bool)]
    whitened, components = apply_tvn(features, is_control, np.zeros(350))
    assert components == 8
    assert whitened.shape == (350, 8)
    assert_white(whitened[is_control])
    # treated images go through the same affine map: their offset from the DMSO mean survives
    assert np.linalg.norm(whitened[~is_control].mean(axis=0)) > 1


def test_components_are_capped_by_dmso_count_max_components_and_eps():
    rng = np.random.default_rng(1)
    few = correlated(rng, 5, 10)  # 5 DMSO images support at most 4 components
    whitened, components = apply_tvn(few, np.ones(5, bool), np.zeros(5))
    assert components == 4
    assert_white(whitened)

    many = correlated(rng, 200, 10)
    _, components = apply_tvn(many, np.ones(200, bool), np.zeros(200), max_components=3)
    assert components == 3

    # a constant feature and a copy of another feature: two directions without variance
    degenerate = np.column_stack([many[:, :8], np.full(200, 7.0), many[:, 0]])
    whitened, components = apply_tvn(degenerate, np.ones(200, bool), np.zeros(200), eps=1e-6)
    assert components == 8
    assert np.isfinite(whitened).all()
    assert_white(whitened)


def test_per_batch_tvn_whitens_each_batch_with_its_own_dmso():
    rng = np.random.default_rng(2)
    batches = np.repeat(["W1", "W2"], [100, 12])
    features = np.vstack(
        [correlated(rng, 100, 6, shift=0.0), correlated(rng, 12, 6, shift=30.0, scale=4.0)]
    )
    is_control = np.ones(112, bool)
    is_control[[0, 1, 100]] = False  # a few treated images in each batch
    whitened, components = apply_tvn(features, is_control, batches, scope="per_batch")
    # batch W2 has 11 DMSO images: both batches keep min(6, 11 - 1) = 6 components
    assert components == 6
    for batch in ("W1", "W2"):
        assert_white(whitened[is_control & (batches == batch)])
    # a global fit leaves the batches' DMSO means apart
    globally, _ = apply_tvn(features, is_control, batches)
    dmso_means = [globally[is_control & (batches == b)].mean(axis=0) for b in ("W1", "W2")]
    assert np.linalg.norm(dmso_means[1] - dmso_means[0]) > 1


def test_per_batch_tvn_uses_the_smallest_supported_component_count():
    rng = np.random.default_rng(3)
    batches = np.repeat(["W1", "W2"], [50, 4])
    features = rng.normal(size=(54, 6))
    whitened, components = apply_tvn(features, np.ones(54, bool), batches, scope="per_batch")
    assert components == 3  # W2: 4 DMSO images -> 3 components
    # ZCA keeps the feature axes; only 3 whitened directions survive in every batch
    assert whitened.shape == (54, 6)
    assert np.linalg.matrix_rank(whitened[batches == "W1"], tol=1e-8) == 3


def test_per_batch_tvn_makes_the_same_treatment_agree_across_batches():
    # Two batches with different per-feature gains (W1 brightens feature 0, W2 feature 1): their
    # DMSO principal axes are swapped. One treatment, imaged in both, must whiten to the same
    # profile; comparing whitened components by index instead would pair unrelated axes.
    rng = np.random.default_rng(5)
    base_dmso = rng.normal(size=(4000, 2))
    treatment = np.array([[1.0, 0.2]])
    gains = {"W1": np.array([2.0, 1.0]), "W2": np.array([1.0, 2.0])}
    features = np.vstack(
        [
            base_dmso[:2000] * gains["W1"],
            base_dmso[2000:] * gains["W2"],
            treatment * gains["W1"],
            treatment * gains["W2"],
        ]
    )
    batches = np.array(["W1"] * 2000 + ["W2"] * 2000 + ["W1", "W2"])
    is_control = np.r_[np.ones(4000, bool), [False, False]]
    whitened, _ = apply_tvn(features, is_control, batches, scope="per_batch")
    first, second = whitened[-2], whitened[-1]
    cosine = first @ second / np.linalg.norm(first) / np.linalg.norm(second)
    assert cosine > 0.99


def test_missing_dmso_is_a_clear_error():
    features = np.random.default_rng(4).normal(size=(10, 3))
    with pytest.raises(InputError, match="at least 2 DMSO images, found 0"):
        apply_tvn(features, np.zeros(10, bool), np.zeros(10))
    is_control = np.r_[np.ones(5, bool), [True], np.zeros(4, bool)]
    batches = np.array(["W1"] * 5 + ["W2"] * 5)
    with pytest.raises(InputError, match="batch 'W2'.*found 1"):
        apply_tvn(features, is_control, batches, scope="per_batch")


def test_default_rank_tolerance_drops_exactly_the_redundant_directions():
    rng = np.random.default_rng(6)
    many = correlated(rng, 200, 8)
    # features on scales 1e-3 .. 1e3 (variances over 12 orders of magnitude), plus a constant
    # feature and a copy: 8 real directions
    scaled = many * 10.0 ** np.linspace(-3, 3, 8)
    degenerate = np.column_stack([scaled, np.full(200, 7.0), scaled[:, 3]])
    whitened, report = whiten(degenerate, np.ones(200, bool), np.zeros(200))
    assert report == {
        "components": 8,
        "possible": 10,
        "below_tolerance": 2,
        "over_max_components": 0,
    }
    assert_white(whitened)
    # eps (opt-in) is a floor on the variance relative to the largest component
    _, floored = whiten(degenerate, np.ones(200, bool), np.zeros(200), eps=1e-6)
    assert floored["components"] < 8
