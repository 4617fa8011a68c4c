"""Feature hygiene (features the DMSO rows cannot calibrate are dropped and counted) and per-plate
normalisation against DMSO (pycytominer's standardize / mad_robustize), checked against sklearn's
StandardScaler and a brute-force median/MAD per plate."""

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler
from test_eval_pipeline import FAST, synthetic_features

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate.normalize import normalize_per_plate, plate_statistics
from workflow_scripts.evaluate.pipeline import evaluate_table

FEATURES = [f"feat_{i:04d}" for i in range(12)]


def with_plate_gains(df, seed=1):
    """Plates differ by a per-feature gain and offset: what per-plate normalisation removes."""
    rng = np.random.default_rng(seed)
    df = df.astype({f: np.float64 for f in FEATURES})
    for plate in df["plate"].unique():
        rows = df["plate"] == plate
        df.loc[rows, FEATURES] = df.loc[rows, FEATURES] * rng.uniform(0.5, 3, 12) + rng.normal(
            0, 2, 12
        )
    return df


def test_standardize_equals_sklearn_standard_scaler_fitted_on_each_plates_dmso():
    table = with_plate_gains(synthetic_features())
    expected = table.copy()
    for _plate, rows in table.groupby("plate").groups.items():
        dmso = table.loc[rows][table.loc[rows, "compound"] == "DMSO"]
        scaler = StandardScaler().fit(dmso[FEATURES].to_numpy())
        expected.loc[rows, FEATURES] = scaler.transform(table.loc[rows, FEATURES].to_numpy())
    values = table[FEATURES].to_numpy(dtype=float)
    is_control = (table["compound"] == "DMSO").to_numpy()
    plates = table["plate"].to_numpy()
    stats = plate_statistics(values, is_control, plates, "standardize")
    np.testing.assert_allclose(
        normalize_per_plate(values, plates, stats), expected[FEATURES], atol=1e-9
    )
    # end to end: the option equals evaluating the sklearn-standardised table without it
    ours = evaluate_table(table, {**FAST, "normalization": {"method": "standardize"}})
    reference = evaluate_table(expected, FAST)
    assert ours["nsc"] == reference["nsc"] and ours["map_nsc"] == pytest.approx(
        reference["map_nsc"]
    )
    assert ours["normalization"] == "standardize" and reference["normalization"] == "none"
    assert any("normalised per plate" in note for note in ours["notes"])


def test_mad_robustize_equals_a_brute_force_median_and_mad_per_plate():
    table = with_plate_gains(synthetic_features())
    values = table[FEATURES].to_numpy(dtype=float)
    is_control = (table["compound"] == "DMSO").to_numpy()
    plates = table["plate"].to_numpy()
    stats = plate_statistics(values, is_control, plates, "mad_robustize")
    normalised = normalize_per_plate(values, plates, stats)
    for i in range(len(values)):
        for j in range(12):
            dmso = [
                values[k, j] for k in range(len(values)) if is_control[k] and plates[k] == plates[i]
            ]
            centre = sorted(dmso)[len(dmso) // 2 - 1 : len(dmso) // 2 + 1]  # 4 DMSO: even count
            median = sum(centre) / 2
            deviations = sorted(abs(v - median) for v in dmso)
            mad = (deviations[1] + deviations[2]) / 2
            assert normalised[i, j] == pytest.approx(
                (values[i, j] - median) / (1.4826 * mad), rel=1e-4
            )


def test_per_plate_normalisation_removes_plate_gains():
    table = with_plate_gains(synthetic_features(), seed=2)
    plain = evaluate_table(table, {**FAST, "tvn": {"enabled": False}})
    normalised = evaluate_table(
        table, {**FAST, "tvn": {"enabled": False}, "normalization": {"method": "standardize"}}
    )
    assert normalised["nsc"] > plain["nsc"]


def test_features_the_dmso_rows_cannot_calibrate_are_dropped_and_counted():
    table = synthetic_features()
    dmso = np.flatnonzero(table["compound"] == "DMSO")
    broken = table.assign(
        feat_0002=table["feat_0002"].where(table.index != dmso[3]),  # NaN in one DMSO row
        feat_0005=np.where(table["compound"] == "DMSO", 7.0, table["feat_0005"]),  # constant DMSO
        feat_0007=table["feat_0007"].mask(table.index == dmso[0], np.inf),
    )
    result = evaluate_table(broken, FAST)
    assert result["feature_dim"] == 12 and result["features_used"] == 9
    assert result["features_dropped"]["non-finite in DMSO"] == ["feat_0002", "feat_0007"]
    assert result["features_dropped"]["constant in DMSO"] == ["feat_0005"]
    assert "dropped 2 of 12 features: non-finite in DMSO (feat_0002, feat_0007)" in result["notes"]
    reference = evaluate_table(table.drop(columns=["feat_0002", "feat_0005", "feat_0007"]), FAST)
    for key in ("nsc", "nscb", "map_nsc", "map_nscb", "tvn_components", "per_moa"):
        assert result[key] == reference[key]


def test_a_feature_constant_on_one_plates_dmso_is_dropped_only_when_normalising():
    table = synthetic_features()
    first_plate = (table["plate"] == table["plate"].iloc[0]) & (table["compound"] == "DMSO")
    table.loc[first_plate, "feat_0004"] = np.float32(1.5)
    assert evaluate_table(table, FAST)["features_used"] == 12
    result = evaluate_table(table, {**FAST, "normalization": {"method": "standardize"}})
    assert result["features_dropped"]["zero DMSO spread on a plate"] == ["feat_0004"]


def test_normalising_needs_two_dmso_rows_per_plate():
    table = synthetic_features()
    lonely = np.flatnonzero((table["plate"] == "W1_P0") & (table["compound"] == "DMSO"))[1:]
    with pytest.raises(
        InputError, match="plate 'W1_P0': .* at least 2 DMSO rows per plate, found 1"
    ):
        evaluate_table(
            table.drop(index=lonely).reset_index(drop=True),
            {**FAST, "normalization": {"method": "mad_robustize"}},
        )


def test_no_usable_feature_is_one_clear_error():
    table = synthetic_features().assign(image_id=lambda d: [f"i{k}" for k in range(len(d))])
    table.loc[table["compound"] == "DMSO", FEATURES] = np.float32(0.0)
    with pytest.raises(InputError, match="no usable feature column: 12 constant in DMSO"):
        evaluate_table(table, FAST)
