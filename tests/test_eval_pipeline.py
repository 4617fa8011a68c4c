"""Aggregation levels, evaluate_table, and the evaluate CLI on our and external feature tables."""

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import evaluate as evaluate_cli
from workflow_scripts.evaluate.aggregate import treatment_profiles
from workflow_scripts.evaluate.pipeline import TABLE_KEYS, evaluate_table

FAST = {"map": {"permutations": 50}}


def synthetic_features(seed=0, dim=12):
    """2 batches x 2 plates; 4 MoAs x 2 compounds x 2 concentrations, each compound in one batch
    per MoA pair so NSCB has cross-batch matches; 4 DMSO images per plate. Features = MoA signal
    + plate offset + noise."""
    rng = np.random.default_rng(seed)
    moa_signal = rng.normal(size=(4, dim))
    rows, values = [], []
    for b, batch in enumerate(("W1", "W2")):
        for p in range(2):
            plate = f"{batch}_P{p}"
            offset = rng.normal(scale=0.5, size=dim)
            for moa in range(4):
                compound = f"cpd{moa}{'ab'[b]}"  # compound 'a' of each MoA in W1, 'b' in W2
                for concentration in (0.1, 1.0):
                    for _site in range(2):
                        rows.append((compound, concentration, f"moa{moa}", plate, batch))
                        values.append(moa_signal[moa] + offset + rng.normal(scale=0.3, size=dim))
            for _site in range(4):
                rows.append(("DMSO", 0.0, "DMSO", plate, batch))
                values.append(offset + rng.normal(scale=0.3, size=dim))
    table = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "plate", "batch"])
    features = pd.DataFrame(
        np.array(values, dtype=np.float32), columns=[f"feat_{i:04d}" for i in range(dim)]
    )
    return pd.concat([table, features], axis=1)


def metric_values(result):
    return {k: v for k, v in result.items() if k not in TABLE_KEYS}


def test_aggregation_levels_follow_the_settings():
    # One treatment on three plates. Image values: P1 = 1, 2, 6 (mean 3, median 2); P2 = 10;
    # P3 = 4, 4. Per treatment over plates:
    #   mean then median:   median(3, 10, 4) = 4
    #   median then mean:   mean(2, 10, 4)   = 16/3
    #   mean then mean:     mean(3, 10, 4)   = 17/3
    #   median then median: median(2, 10, 4) = 4 (the DMSO image on P1, value 100, is left out)
    meta = pd.DataFrame(
        {
            "treatment": ["t@1"] * 6 + ["DMSO@0"],
            "compound": ["t"] * 6 + ["DMSO"],
            "concentration": [1.0] * 6 + [0.0],
            "moa": ["M"] * 6 + ["DMSO"],
            "plate": ["P1", "P1", "P1", "P2", "P3", "P3", "P1"],
            "batch": ["W1", "W1", "W1", "W1", "W2", "W2", "W1"],
            "is_control": [False] * 6 + [True],
        }
    )
    values = np.array([1, 2, 6, 10, 4, 4, 100], dtype=float)[:, None]
    expected = {
        ("mean", "median"): 4,
        ("median", "mean"): 16 / 3,
        ("mean", "mean"): 17 / 3,
        ("median", "median"): 4,
    }
    for (plate, treatment), value in expected.items():
        profiles, table = treatment_profiles(values, meta, plate, treatment)
        assert profiles[:, 0] == pytest.approx([value])
    assert table.loc[0, "batches"] == ("W1", "W2")
    assert table.loc[0, "n_plates"] == 3 and table.loc[0, "n_images"] == 6
    # main_batch: the batch of most plates (W1: P1, P2; W2: P3), counted per plate, not image
    assert table.loc[0, "main_batch"] == "W1"
    more_images_in_w2 = meta.assign(plate=["P1", "P1", "P1", "P1", "P3", "P3", "P1"])
    assert treatment_profiles(values, more_images_in_w2)[1].loc[0, "main_batch"] == "W1"
    mostly_w2 = meta.assign(batch=["W2", "W2", "W2", "W1", "W2", "W2", "W1"])  # P2 alone in W1
    assert treatment_profiles(values, mostly_w2)[1].loc[0, "main_batch"] == "W2"
    tie = mostly_w2.assign(plate=["P1", "P1", "P1", "P2", "P1", "P1", "P1"])  # P1 W2, P2 W1
    assert treatment_profiles(values, tie)[1].loc[0, "main_batch"] == "W1"  # first by name


def test_a_treatment_with_two_moas_is_an_error():
    meta = pd.DataFrame(
        {
            "treatment": ["t@1", "t@1"],
            "compound": ["t", "t"],
            "concentration": [1.0, 1.0],
            "moa": ["A", "B"],
            "plate": ["P1", "P2"],
            "batch": ["W1", "W1"],
            "is_control": [False, False],
        }
    )
    with pytest.raises(
        InputError, match="treatment 't@1' has several values in column 'moa': A, B"
    ):
        treatment_profiles(np.zeros((2, 1)), meta)


def test_evaluate_table_scores_structured_features_and_counts():
    features = synthetic_features()
    result = evaluate_table(features, FAST)
    assert result["n_images"] == len(features)
    assert result["n_dmso"] == 16
    assert result["n_treatments_nsc"] == 16 and result["n_treatments_nscb"] == 16
    assert result["feature_dim"] == 12 and result["tvn_components"] == 12
    # MoA signal dominates: far above chance (2 of the 14 other-compound treatments share the MoA)
    assert result["nsc"] > 0.9 and result["nscb"] > 0.9 and result["map_nscb"] > 0.9
    assert set(result["predictions"]["protocol"]) == {"nsc", "nscb"}
    assert result["confusion"].to_numpy().sum() == 16


def test_label_like_columns_do_not_change_the_metrics():
    features = synthetic_features()
    reference = metric_values(evaluate_table(features, FAST))
    labelled = features.copy()
    labelled["moa_code"] = pd.factorize(labelled["moa"])[0]  # numeric: would leak if used
    labelled["Metadata_compound_index"] = pd.factorize(labelled["compound"])[0].astype(float)
    labelled["is_control"] = labelled["compound"] == "DMSO"
    assert metric_values(evaluate_table(labelled, FAST)) == reference


def test_settings_with_unknown_keys_are_rejected():
    with pytest.raises(InputError, match="settings key 'tvn.scopee' is unknown"):
        evaluate_table(synthetic_features(), {"tvn": {"scopee": "global"}})


def write_settings():
    return json.dumps(
        {
            "tvn": {"enabled": True, "scope": "global", "max_components": None, "eps": 1e-6},
            "aggregation": {"plate": "mean", "treatment": "median"},
            "map": {"enabled": True, "permutations": 50, "seed": 0},
        }
    )


def test_cli_writes_metrics_predictions_and_confusion(tmp_path):
    features = synthetic_features()
    features.to_parquet(tmp_path / "features.parquet")
    out_dir = tmp_path / "eval"
    assert (
        evaluate_cli.main(
            [
                "--features",
                str(tmp_path / "features.parquet"),
                "--settings",
                write_settings(),
                "--out-dir",
                str(out_dir),
                "--label",
                "vit_small/DAPI/0005",
            ]
        )
        == 0
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["label"] == "vit_small/DAPI/0005"
    assert metrics["settings"] == json.loads(write_settings())  # compared at start by the workflow
    expected = metric_values(evaluate_table(features, json.loads(write_settings())))
    assert metrics["nsc"] == expected["nsc"] and metrics["map_nscb"] == expected["map_nscb"]
    for key in (
        "nscb",
        "map_nsc",
        "n_treatments_nsc",
        "n_treatments_nscb",
        "n_images",
        "n_dmso",
        "feature_dim",
        "tvn_components",
        "per_moa",
    ):
        assert key in metrics
    predictions = pd.read_csv(out_dir / "predictions.csv")
    assert len(predictions) == 32  # 16 treatments x 2 protocols
    confusion = pd.read_csv(out_dir / "confusion.csv", index_col="moa")
    assert list(confusion.index) == list(confusion.columns) == ["moa0", "moa1", "moa2", "moa3"]
    profiles = pd.read_parquet(out_dir / "profiles.parquet")
    assert set(profiles["treatment"]) == set(predictions["treatment"]) and len(profiles) == 16


def test_profiles_are_the_ones_nsc_scored():
    """Brute force on the returned profiles (sklearn's cosine) finds predictions' neighbours."""
    from sklearn.metrics.pairwise import cosine_similarity

    result = evaluate_table(synthetic_features(dim=6), FAST)
    profiles = result["profiles"]
    values = profiles.filter(regex="^feat_").to_numpy()
    assert values.shape == (16, result["features_used"])
    similarity = cosine_similarity(values)
    compound = profiles["compound"].to_numpy()
    nsc = result["predictions"].query("protocol == 'nsc'").set_index("treatment")
    assert list(nsc.index) == list(profiles["treatment"])  # one row per treatment, same order
    for query, row in profiles.iterrows():
        candidates = np.flatnonzero(compound != compound[query])
        best = candidates[np.argmax(similarity[query, candidates])]
        assert nsc.loc[row["treatment"], "neighbour"] == profiles["treatment"][best]
        assert nsc.loc[row["treatment"], "similarity"] == pytest.approx(similarity[query, best])
    assert set(profiles["main_batch"]) == {"W1", "W2"}
    assert profiles["batches"].str.split(";").map(len).eq(1).all()


def test_cli_scores_an_external_per_well_csv_like_our_own_table(tmp_path):
    features = synthetic_features()
    # CellProfiler-like: well-level (means of the two sites), other column names, own feature
    # names, a numeric MoA code that must not be used
    wells = (
        features.assign(well=np.arange(len(features)) // 2)
        .groupby(["compound", "concentration", "moa", "plate", "batch", "well"], as_index=False)
        .mean()
    )
    external = wells.rename(
        columns={
            "compound": "Metadata_Compound",
            "concentration": "Metadata_Concentration",
            "moa": "Metadata_MoA",
            "plate": "Metadata_Plate",
            "batch": "Metadata_Batch",
            **{f"feat_{i:04d}": f"Cells_Feature{i}" for i in range(12)},
        }
    ).drop(columns="well")
    external["Metadata_MoA_code"] = pd.factorize(external["Metadata_MoA"])[0]
    external.to_csv(tmp_path / "cellprofiler.csv", index=False)
    out_dir = tmp_path / "eval"
    status = evaluate_cli.main(
        [
            "--features",
            str(tmp_path / "cellprofiler.csv"),
            "--settings",
            write_settings(),
            "--out-dir",
            str(out_dir),
            "--label",
            "cellprofiler/all/0000",
            "--feature-columns",
            "^Cells_",
            "--metadata-map",
            "compound=Metadata_Compound,concentration=Metadata_Concentration,"
            "moa=Metadata_MoA,plate=Metadata_Plate,batch=Metadata_Batch",
        ]
    )
    assert status == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    reference = evaluate_table(wells, json.loads(write_settings()))
    assert metrics["feature_dim"] == 12 and metrics["n_images"] == len(wells)
    assert metrics["nsc"] == reference["nsc"] and metrics["map_nsc"] == pytest.approx(
        reference["map_nsc"]
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.drop(columns="batch"), "missing column(s) batch"),
        (
            lambda df: df.assign(feat_0003=df["feat_0003"].where(df.index != 5)),
            "row 5, column 'feat_0003'",
        ),
        (
            lambda df: df.assign(moa=df["moa"].where(df.index != 2)),
            "row 2 (a treated image) has no moa",
        ),
    ],
)
def test_cli_bad_tables_give_one_error_and_no_output(tmp_path, capsys, mutate, message):
    mutate(synthetic_features()).to_parquet(tmp_path / "features.parquet")
    out_dir = tmp_path / "eval"
    status = evaluate_cli.main(
        [
            "--features",
            str(tmp_path / "features.parquet"),
            "--settings",
            "{}",
            "--out-dir",
            str(out_dir),
            "--label",
            "a/b/0001",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "features.parquet" in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("label", ["only-arch", "a/b/seed_x/0002", "a/b/seed_1/c/0002"])
def test_cli_rejects_a_label_the_summary_cannot_read(tmp_path, capsys, label):
    synthetic_features().to_parquet(tmp_path / "f.parquet")
    status = evaluate_cli.main(
        ["--features", str(tmp_path / "f.parquet"), "--out-dir", str(tmp_path / "e")]
        + ["--label", label]
    )
    assert status == 2 and "--label" in capsys.readouterr().err


def test_cli_takes_another_training_seeds_label(tmp_path):
    synthetic_features().to_parquet(tmp_path / "f.parquet")
    args = ["--features", str(tmp_path / "f.parquet"), "--out-dir", str(tmp_path / "e")]
    assert evaluate_cli.main([*args, "--label", "vit/DAPI/seed_2/0004"]) == 0
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["label"] == (
        "vit/DAPI/seed_2/0004"
    )


def run_cli_on_csv(table, tmp_path, settings="{}", extra=()):
    table.to_csv(tmp_path / "table.csv", index=False)
    out_dir = tmp_path / "eval"
    status = evaluate_cli.main(
        [
            "--features",
            str(tmp_path / "table.csv"),
            "--settings",
            settings,
            "--out-dir",
            str(out_dir),
            "--label",
            "a/b/0001",
            *extra,
        ]
    )
    return status, out_dir


def with_text_concentration(df):
    df = df.astype({"concentration": object})
    df.loc[3, "concentration"] = "ten"
    return df


def with_ids(df):
    return df.assign(image_id=[f"img{i}" for i in range(len(df))])


@pytest.mark.parametrize(
    "mutate, settings, message",
    [
        (with_text_concentration, "{}", "row 3, column 'concentration' is 'ten', not a number"),
        (
            None,
            '{"tvn": {"max_components": "all"}}',
            "settings key 'tvn.max_components': 'all' is not",
        ),
        (None, '{"map": {"permutations": -5}}', "settings key 'map.permutations': -5 is less than"),
        (None, '{"tvn": {"enabled": "yes"}}', "settings key 'tvn.enabled': 'yes' is not of type"),
        (None, '{"tvn": {"eps": 0}}', "settings key 'tvn.eps': 0 is less than or equal"),
        (None, '{"normalization": {"method": "zscore"}}', "settings key 'normalization.method'"),
        (
            lambda df: df.assign(moa=np.where(df["compound"] == "DMSO", "DMSO", "Only MoA")),
            "{}",
            "every treated row has moa 'Only MoA'; MoA retrieval needs at least 2 MoAs",
        ),
        (
            lambda df: pd.concat([df, df.iloc[[7]]], ignore_index=True),
            "{}",
            f"rows 7 and {len(synthetic_features())} are the same row",
        ),
        (
            lambda df: with_ids(df).replace({"image_id": {"img9": "img2"}}),
            "{}",
            "rows 2 and 9 are the same image (image_id='img2')",
        ),
        (
            lambda df: df.assign(plate="P", well=[f"W{i % 50}" for i in range(len(df))]),
            "{}",
            "rows 0 and 50 are the same well (a per-image table needs a site column)",
        ),
        (
            lambda df: df.assign(is_control=np.where(df["compound"] == "DMSO", "yes", "no")),
            "{}",
            "row 0, column 'is_control' is 'no'; expected a boolean",
        ),
        (lambda df: df.iloc[:0], "{}", "the table has no rows (header only)"),
    ],
)
def test_cli_refuses_bad_input_with_one_line(tmp_path, capsys, mutate, settings, message):
    table = synthetic_features()
    status, out_dir = run_cli_on_csv(mutate(table) if mutate else table, tmp_path, settings)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_control_flags_and_dmso_spelling_are_read_as_meant(tmp_path):
    features = synthetic_features()
    reference = metric_values(evaluate_table(features, FAST))
    lower = features.assign(compound=features["compound"].replace("DMSO", "dmso"))
    result = metric_values(evaluate_table(lower, FAST))
    assert result["n_dmso"] == 16 and result["nsc"] == reference["nsc"]
    for flags in (
        features["compound"] == "DMSO",
        (features["compound"] == "DMSO").map({True: "TRUE", False: "false"}),
        (features["compound"] == "DMSO").astype(int),
    ):
        flagged = metric_values(evaluate_table(features.assign(is_control=flags), FAST))
        assert flagged["n_dmso"] == 16 and flagged["map_nsc"] == reference["map_nsc"]


def test_few_dmso_rows_warn_with_the_numbers(tmp_path, capsys):
    # 16 DMSO images, 24 features: at most 15 whitened dimensions
    features = synthetic_features(dim=24)
    status, out_dir = run_cli_on_csv(features, tmp_path, write_settings())
    err = capsys.readouterr().err
    assert status == 0
    assert (
        "warning: TVN on all batches: 16 DMSO rows support at most 15 whitened dimensions of 24"
        in err
    )
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["tvn_components"] == 15 and metrics["tvn"]["possible"] == 15
    assert any(note.startswith("warning: TVN") for note in metrics["notes"])
