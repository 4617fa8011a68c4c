"""TVN on badly scaled profiles: every component the DMSO set supports, whitened to the identity,
and the same nearest neighbours as sklearn's PCA(whiten=True) + a brute-force NSC / NSCB."""

import numpy as np
import pandas as pd
import pytest
from profile_tables import cellprofiler_like_table, vit_like_table
from sklearn.decomposition import PCA

from workflow_scripts.evaluate.pipeline import evaluate_table
from workflow_scripts.evaluate.tvn import whiten

NO_MAP = {"map": {"enabled": False}}


def feature_cols(table):
    return [c for c in table.columns if c.startswith(("Cells_", "feat_"))]


@pytest.fixture(scope="module")
def cellprofiler():
    return cellprofiler_like_table()


@pytest.fixture(scope="module")
def vit():
    return vit_like_table()


def brute_force_neighbours(whitened, table, block_batches):
    """Per treatment: mean per plate, median per treatment (pandas), then the other-compound
    (and, for NSCB, no-shared-batch, multi-batch-MoA) treatment of highest cosine, by loops."""
    treated = table.loc[~table["is_control"]].copy()
    treated["treatment"] = treated["compound"] + "@" + treated["concentration"].map("{:g}".format)
    values = pd.DataFrame(whitened[~table["is_control"].to_numpy()], index=treated.index)
    values[["treatment", "plate"]] = treated[["treatment", "plate"]]
    profiles = values.groupby(["treatment", "plate"]).mean().groupby(level="treatment").median()
    info = treated.groupby("treatment").agg(
        compound=("compound", "first"), moa=("moa", "first"), batches=("batch", lambda s: set(s))
    )
    moa_batches = treated.groupby("moa")["batch"].agg(lambda s: set(s))
    names = sorted(profiles.index)
    neighbours = {}
    for query in names:
        if block_batches and len(moa_batches[info.loc[query, "moa"]]) < 2:
            continue
        best, best_similarity = None, -np.inf
        q = profiles.loc[query].to_numpy()
        for candidate in names:
            if info.loc[candidate, "compound"] == info.loc[query, "compound"]:
                continue
            if block_batches and (
                info.loc[candidate, "batches"] & info.loc[query, "batches"]
                or len(moa_batches[info.loc[candidate, "moa"]]) < 2
            ):
                continue
            c = profiles.loc[candidate].to_numpy()
            similarity = q @ c / np.linalg.norm(q) / np.linalg.norm(c)
            if similarity > best_similarity:
                best, best_similarity = candidate, similarity
        neighbours[query] = best
    return neighbours


def sklearn_whitening(table, n_components):
    values = table[feature_cols(table)].to_numpy(dtype=np.float64)
    dmso = values[table["is_control"].to_numpy()]
    pca = PCA(n_components=n_components, whiten=True, svd_solver="full").fit(dmso)
    return pca.transform(values)


def dmso_variance_span(table):
    variances = table.loc[table["is_control"], feature_cols(table)].var()
    return np.log10(variances.max() / variances.min())


@pytest.mark.parametrize("make", ["cellprofiler", "vit"])
def test_whitened_dmso_covariance_is_the_identity_on_every_supported_component(make, request):
    table = request.getfixturevalue(make)
    values = table[feature_cols(table)].to_numpy()
    is_control = table["is_control"].to_numpy()
    whitened, report = whiten(values, is_control, table["batch"].to_numpy())
    # cellprofiler: 330 DMSO wells, 516 features -> 329; vit: 480 DMSO images, 384 features
    assert report["components"] == report["possible"] == min(is_control.sum() - 1, values.shape[1])
    assert report["below_tolerance"] == report["over_max_components"] == 0
    covariance = np.cov(whitened[is_control], rowvar=False)
    assert np.abs(covariance - np.eye(len(covariance))).max() <= 1e-6


def test_the_tables_are_as_badly_scaled_as_the_issue_says(cellprofiler, vit):
    assert dmso_variance_span(cellprofiler) >= 12
    stds = vit.loc[vit["is_control"], feature_cols(vit)].std().to_numpy()
    assert np.median(stds[:4]) >= 1e4 * np.median(stds[4:]) * 0.5


@pytest.mark.parametrize("make", ["cellprofiler", "vit"])
def test_nsc_and_nscb_neighbours_equal_sklearn_whitening_treatment_by_treatment(make, request):
    table = request.getfixturevalue(make)
    result = evaluate_table(table, NO_MAP, feature_cols(table))
    reference = sklearn_whitening(table, result["tvn_components"])
    predictions = result["predictions"]
    for protocol, block in (("nsc", False), ("nscb", True)):
        ours = predictions[predictions["protocol"] == protocol].set_index("treatment")["neighbour"]
        expected = brute_force_neighbours(reference, table, block)
        assert len(ours) == len(expected) > 80
        assert ours.to_dict() == expected
    assert result["nsc"] > 0.3  # the MoA signal survives (chance: 1/12)


def test_a_relative_eigenvalue_floor_would_drop_most_components(vit):
    # the seed's rule (keep eigenvalues > 1e-6 x the largest) keeps only the 4 massive dimensions;
    # it is now opt-in (eps) and every dropped component is counted
    values = vit[feature_cols(vit)].to_numpy()
    is_control = vit["is_control"].to_numpy()
    _, report = whiten(values, is_control, vit["batch"].to_numpy(), eps=1e-6)
    assert report["components"] == 4 and report["below_tolerance"] == 380
    _, capped = whiten(values, is_control, vit["batch"].to_numpy(), max_components=50)
    assert capped["components"] == 50 and capped["over_max_components"] == 334


def test_per_batch_tvn_equals_sklearn_zca_per_batch_on_badly_scaled_features(vit):
    values = vit[feature_cols(vit)].to_numpy()
    is_control = vit["is_control"].to_numpy()
    batches = vit["batch"].to_numpy()
    whitened, report = whiten(values, is_control, batches, scope="per_batch")
    # every week has 48 DMSO images: 47 components each
    assert report["components"] == 47 and set(report["per_batch"].values()) == {47}
    for batch in np.unique(batches):
        rows = batches == batch
        pca = PCA(n_components=47, whiten=True, svd_solver="full").fit(values[rows & is_control])
        zca = pca.transform(values[rows]) @ pca.components_  # rotated back onto the feature axes
        scale = np.abs(zca).max()
        assert np.abs(whitened[rows] - zca).max() <= 1e-6 * scale


def test_readme_external_table_command_agrees_with_sklearn_whitening(cellprofiler, tmp_path):
    # the README's "Scoring other profiles" command, default settings, on a CellProfiler-like CSV
    import json

    from workflow_scripts.evaluate import evaluate as evaluate_cli

    names = {
        "compound": "Metadata_Compound",
        "concentration": "Metadata_Concentration",
        "moa": "Metadata_MoA",
        "plate": "Metadata_Plate",
        "batch": "Metadata_Batch",
    }
    cellprofiler.drop(columns=["is_control", "well", "site"]).rename(columns=names).to_csv(
        tmp_path / "cellprofiler_wells.csv", index=False
    )
    out_dir = tmp_path / "eval"
    assert (
        evaluate_cli.main(
            [
                "--features",
                str(tmp_path / "cellprofiler_wells.csv"),
                "--feature-columns",
                "^(Cells|Cytoplasm|Nuclei)_",
                "--metadata-map",
                ",".join(f"{ours}={theirs}" for ours, theirs in names.items()),
                "--settings",
                '{"tvn": {"enabled": true}}',
                "--out-dir",
                str(out_dir),
                "--label",
                "cellprofiler/all/0000",
            ]
        )
        == 0
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["tvn_components"] == 329 and metrics["n_dmso"] == 330
    reference = sklearn_whitening(cellprofiler, 329)
    for protocol, block in (("nsc", False), ("nscb", True)):
        expected = brute_force_neighbours(reference, cellprofiler, block)
        moa = (
            cellprofiler.assign(
                treatment=cellprofiler["compound"]
                + "@"
                + cellprofiler["concentration"].map("{:g}".format)
            )
            .groupby("treatment")["moa"]
            .first()
        )
        correct = sum(n is not None and moa[n] == moa[q] for q, n in expected.items())
        assert abs(metrics[protocol] * len(expected) - correct) <= 1
        assert metrics[f"n_treatments_{protocol}"] == len(expected)
