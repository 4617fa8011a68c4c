"""Feature hygiene (features the DMSO rows cannot calibrate are dropped and counted) and
normalisation against DMSO (pycytominer's standardize / mad_robustize) per plate, batch or table,
checked against sklearn's StandardScaler and brute-force loops over the rows of each group."""

from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler
from test_eval_pipeline import FAST, synthetic_features

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import normalize
from workflow_scripts.evaluate.normalize import control_statistics, normalize_per_group
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
    stats = control_statistics(values, is_control, plates, "standardize")
    np.testing.assert_allclose(
        normalize_per_group(values, plates, stats), expected[FEATURES], atol=1e-9
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
    stats = control_statistics(values, is_control, plates, "mad_robustize")
    normalised = normalize_per_group(values, plates, stats)
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


def brute_force_normalised(table, method, scope):
    """Each row's features against the DMSO rows of its plate, its batch or the whole table:
    a loop over rows, every statistic computed from a Python list."""
    out = table.copy()
    for i in range(len(table)):
        row = table.iloc[i]
        same = {
            "plate": table["plate"] == row["plate"],
            "batch": table["batch"] == row["batch"],
            "all": pd.Series(True, index=table.index),
        }[scope]
        dmso = table[same & (table["compound"] == "DMSO")]
        for feature in FEATURES:
            controls = [float(v) for v in dmso[feature]]
            if method == "standardize":
                centre = sum(controls) / len(controls)
                scale = (sum((v - centre) ** 2 for v in controls) / len(controls)) ** 0.5
            else:
                centre = float(pd.Series(controls).median())
                # 1.4826...: the MAD of a normal distribution is 1 / that of its std
                consistency = 1 / NormalDist().inv_cdf(0.75)
                scale = consistency * float(pd.Series([abs(v - centre) for v in controls]).median())
            out.loc[table.index[i], feature] = (float(row[feature]) - centre) / scale
    return out


@pytest.mark.parametrize("method", ["standardize", "mad_robustize"])
@pytest.mark.parametrize("scope", ["plate", "batch", "all"])
def test_each_scope_equals_a_brute_force_loop_over_its_groups(method, scope):
    # plates differ by gains, and the batches' plates differ from each other: each scope gives
    # other statistics, so a row normalised against the wrong group's DMSO would show
    table = with_plate_gains(synthetic_features(), seed=3)
    expected = brute_force_normalised(table, method, scope)
    values = table[FEATURES].to_numpy(dtype=float)
    is_control = (table["compound"] == "DMSO").to_numpy()
    groups = normalize.control_groups(table["plate"].to_numpy(), table["batch"].to_numpy(), scope)
    stats = control_statistics(values, is_control, groups, method, scope)
    assert len(stats) == {"plate": 4, "batch": 2, "all": 1}[scope]
    normalised = normalize_per_group(values, groups, stats)
    np.testing.assert_allclose(normalised, expected[FEATURES].to_numpy(float), rtol=1e-6)
    # end to end: the option equals scoring the brute-force normalised table without it
    ours = evaluate_table(table, {**FAST, "normalization": {"method": method, "scope": scope}})
    reference = evaluate_table(expected, FAST)
    for key in ("nsc", "nscb", "map_nsc", "map_nscb", "tvn_components"):
        assert ours[key] == pytest.approx(reference[key]), key
    assert ours["predictions"]["neighbour"].equals(reference["predictions"]["neighbour"])


def test_the_scopes_differ_on_this_table():
    # the brute-force test above is only a check if the scopes normalise differently here
    table = with_plate_gains(synthetic_features(), seed=3)
    by_scope = [brute_force_normalised(table, "standardize", s)[FEATURES] for s in normalize.SCOPES]
    for i, a in enumerate(by_scope):
        for b in by_scope[i + 1 :]:
            assert np.abs(a.to_numpy(float) - b.to_numpy(float)).max() > 0.1


def test_the_default_scope_is_per_plate_and_metrics_json_keeps_its_keys():
    table = with_plate_gains(synthetic_features(), seed=3)
    plain = evaluate_table(table, {**FAST, "normalization": {"method": "standardize"}})
    per_plate = evaluate_table(
        table, {**FAST, "normalization": {"method": "standardize", "scope": "plate"}}
    )
    tables = ("predictions", "confusion", "profiles")
    assert {k: v for k, v in plain.items() if k not in tables} == {
        k: v for k, v in per_plate.items() if k not in tables
    }
    for name in tables:
        pd.testing.assert_frame_equal(plain[name], per_plate[name])
    assert "normalization_scope" not in plain
    assert list(plain["features_dropped"])[2] == "zero DMSO spread on a plate"
    per_batch = evaluate_table(
        table, {**FAST, "normalization": {"method": "standardize", "scope": "batch"}}
    )
    assert per_batch["normalization_scope"] == "batch"
    assert "normalised per batch against its DMSO rows: standardize" in per_batch["notes"]
    assert list(per_batch["features_dropped"])[2] == "zero DMSO spread in a batch"


def test_few_control_rows_per_group_are_warned_about_with_the_counts(monkeypatch):
    table = synthetic_features()  # 4 DMSO rows per plate, 8 per batch, 16 in all
    warnings = {}
    for scope in normalize.SCOPES:
        result = evaluate_table(
            table, {**FAST, "normalization": {"method": "standardize", "scope": scope}}
        )
        warnings[scope] = [n for n in result["notes"] if n.startswith("warning: normalising")]
    assert warnings["plate"] == [
        "warning: normalising per plate from few control rows: 4 of 4 plates have fewer than "
        f"{normalize.MIN_CONTROL_ROWS} DMSO rows (min 4, median 4, max 4)"
        + warnings["plate"][0].split("max 4)")[1]
    ]
    assert (
        "2 of 2 batches have fewer than 20 DMSO rows (min 8, median 8, max 8)"
        in (warnings["batch"][0])
    )
    assert "the whole table has fewer than 20 DMSO rows (min 16" in warnings["all"][0]
    # no warning without normalisation, nor at the threshold itself
    assert not any("normalising" in n for n in evaluate_table(table, FAST)["notes"])
    monkeypatch.setattr(normalize, "MIN_CONTROL_ROWS", 4)
    result = evaluate_table(table, {**FAST, "normalization": {"method": "standardize"}})
    assert not any(n.startswith("warning: normalising") for n in result["notes"])
    monkeypatch.setattr(normalize, "MIN_CONTROL_ROWS", 5)
    result = evaluate_table(table, {**FAST, "normalization": {"method": "standardize"}})
    assert any("4 of 4 plates have fewer than 5" in n for n in result["notes"])


def test_a_scope_needs_two_dmso_rows_in_each_group():
    table = synthetic_features()
    lonely = np.flatnonzero((table["batch"] == "W2") & (table["compound"] == "DMSO"))[1:]
    with pytest.raises(InputError, match="batch 'W2': .* at least 2 DMSO rows per batch, found 1"):
        evaluate_table(
            table.drop(index=lonely).reset_index(drop=True),
            {**FAST, "normalization": {"method": "standardize", "scope": "batch"}},
        )
    with pytest.raises(InputError, match="settings key 'normalization.scope'"):
        evaluate_table(table, {"normalization": {"scope": "well"}})
