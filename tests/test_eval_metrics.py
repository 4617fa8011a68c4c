"""NSC / NSCB / mAP on small profile tables whose answers are worked out by hand."""

import json
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.evaluate.metrics import (
    evaluate_profiles,
    nscb_protocol,
    null_average_precision,
    single_batch_moas,
)
from workflow_scripts.evaluate.pipeline import evaluate_table

NO_MAP = {"enabled": False}
EXACT_MAP = {"enabled": True, "permutations": 0, "seed": 0}


def profile_table(rows):
    """rows: (treatment, moa, batches, angle in degrees); compound = treatment name before '@'."""
    table = pd.DataFrame(
        {
            "treatment": [r[0] for r in rows],
            "compound": [r[0].split("@")[0] for r in rows],
            "concentration": [float(r[0].split("@")[1]) for r in rows],
            "moa": [r[1] for r in rows],
            "batches": [tuple(r[2]) for r in rows],
        }
    )
    angles = np.deg2rad([r[3] for r in rows])
    return np.column_stack([np.cos(angles), np.sin(angles)]), table


# Unit vectors at these angles: cosine similarity falls with the angle between two profiles,
# so every nearest neighbour below is the smallest angular distance among the candidates.
# MoA X occurs in B1 and B2, Y in B2 and B3, Z only in B3.
EXAMPLE = [
    ("a@1", "X", ["B1"], 0),
    ("a@2", "X", ["B1"], 5),
    ("b@1", "X", ["B1"], 15),
    ("c@1", "X", ["B2"], 40),
    ("d@1", "Y", ["B2"], 32),
    ("e@1", "Y", ["B3"], 100),
    ("f@1", "Z", ["B3"], 200),
    ("g@1", "Z", ["B3"], 210),
]


def test_nsc_nscb_and_map_match_hand_computation():
    profiles, table = profile_table(EXAMPLE)
    metrics, predictions, confusion = evaluate_profiles(profiles, table, EXACT_MAP)

    # NSC (other compounds only). Angular distances from each query, nearest first:
    #   a@1 (0):   b 15 ✓, d 32, c 40, e 100, g 150, f 160
    #   a@2 (5):   b 10 ✓ (a@1 at 5 is the same compound)
    #   b@1 (15):  a@2 10 ✓, a@1 15, d 17, c 25, e 85, g 165, f 175
    #   c@1 (40):  d 8 ✗ (Y), b 25, a@2 35, a@1 40, e 60
    #   d@1 (32):  c 8 ✗ (X), b 17, ...
    #   e@1 (100): c 60 ✗, d 68, ...
    #   f@1 (200): g 10 ✓;  g@1 (210): f 10 ✓
    assert metrics["nsc"] == pytest.approx(5 / 8)
    assert metrics["n_treatments_nsc"] == 8
    nsc = predictions[predictions["protocol"] == "nsc"].set_index("treatment")
    assert nsc["neighbour"].to_dict() == {
        "a@1": "b@1",
        "a@2": "b@1",
        "b@1": "a@2",
        "c@1": "d@1",
        "d@1": "c@1",
        "e@1": "c@1",
        "f@1": "g@1",
        "g@1": "f@1",
    }
    # AP (positives: same MoA, other compound), from the rankings above:
    #   a@1: positives b, c at ranks 1, 3 -> (1/1 + 2/3) / 2 = 5/6;  a@2: same order -> 5/6
    #   b@1: a@2, a@1, c at ranks 1, 2, 4 -> (1 + 1 + 3/4) / 3 = 11/12
    #   c@1: b, a@2, a@1 at ranks 2, 3, 4 -> (1/2 + 2/3 + 3/4) / 3 = 23/36
    #   d@1: e at rank 5 (c 8, b 17, a@2 27, a@1 32, e 68) -> 1/5
    #   e@1: d at rank 2 (c 60, d 68) -> 1/2;   f@1, g@1: rank 1 -> 1
    expected_ap = [5 / 6, 5 / 6, 11 / 12, 23 / 36, 1 / 5, 1 / 2, 1, 1]
    np.testing.assert_allclose(nsc["average_precision"], expected_ap)
    assert metrics["map_nsc"] == pytest.approx(np.mean(expected_ap))
    assert metrics["per_moa"]["Y"]["map_nsc"] == pytest.approx((1 / 5 + 1 / 2) / 2)

    # NSCB: Z lies in B3 only -> f, g dropped (as queries and candidates). Candidates also
    # share no batch with the query:
    #   a@1, a@2, b@1 (B1): c (B2), d (B2), e (B3) -> d nearest ✗; positive c at rank 2 -> AP 1/2
    #   c@1 (B2): a@1, a@2, b@1, e -> b@1 25 ✓; positives b, a@2, a@1 at ranks 1-3 -> AP 1
    #   d@1 (B2): b 17 ✗; positive e at rank 4 (b 17, a@2 27, a@1 32, e 68) -> AP 1/4
    #   e@1 (B3): c 60 ✗; positive d at rank 2 -> AP 1/2
    assert metrics["nscb_excluded_moas"] == ["Z"]
    assert metrics["n_treatments_nscb"] == 6
    assert metrics["nscb"] == pytest.approx(1 / 6)
    nscb = predictions[predictions["protocol"] == "nscb"].set_index("treatment")
    assert list(nscb.index) == ["a@1", "a@2", "b@1", "c@1", "d@1", "e@1"]
    np.testing.assert_allclose(nscb["average_precision"], [1 / 2, 1 / 2, 1 / 2, 1, 1 / 4, 1 / 2])
    assert metrics["map_nscb"] == pytest.approx(3.25 / 6)
    assert metrics["per_moa"]["Z"]["nscb"] is None

    # NSC confusion: X queries a@1, a@2, b@1 -> X; c@1 -> Y. Y: d@1, e@1 -> X. Z -> Z.
    assert confusion.loc["X", "X"] == 3 and confusion.loc["X", "Y"] == 1
    assert confusion.loc["Y", "X"] == 2 and confusion.loc["Z", "Z"] == 2
    assert confusion.to_numpy().sum() == 8


def test_ties_go_to_the_lowest_treatment_name_whatever_the_row_order():
    # Query q at 0 deg; k@1 (MoA K) at +30 and m@1 (MoA M) at -30: exactly equal cosines.
    # Sorted by name, k@1 comes first and wins; shuffling the input rows must not change that.
    rows = [("q@1", "M", ["B1"], 0), ("m@1", "M", ["B2"], -30), ("k@1", "K", ["B2"], 30)]
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1]):
        shuffled = [rows[i] for i in order]
        features = pd.DataFrame(
            {
                "compound": [r[0].split("@")[0] for r in shuffled],
                "concentration": 1.0,
                "moa": [r[1] for r in shuffled],
                "plate": [r[2][0] + "_p" for r in shuffled],
                "batch": [r[2][0] for r in shuffled],
                "feat_0": np.cos(np.deg2rad([r[3] for r in shuffled])),
                "feat_1": np.sin(np.deg2rad([r[3] for r in shuffled])),
            }
        )
        result = evaluate_table(features, {"tvn": {"enabled": False}, "map": NO_MAP})
        row = result["predictions"].query("protocol == 'nsc' and treatment == 'q@1'").iloc[0]
        assert row["neighbour"] == "k@1"
        assert not row["correct"]


def test_nscb_excludes_candidates_sharing_any_batch():
    rows = [
        ("q@1", "X", ["B1"], 0),
        ("overlap@1", "X", ["B1", "B3"], 0),  # shares B1 with q: excluded
        ("elsewhere@1", "X", ["B2"], 0),  # no shared batch: a candidate
        ("everywhere@1", "X", ["B1", "B2", "B3"], 0),  # shares every batch: never a candidate
    ]
    _, table = profile_table(rows)
    protocol = nscb_protocol(table)
    assert protocol.candidates[0].tolist() == [False, False, True, False]
    assert not protocol.candidates[:, 3].any() and not protocol.candidates[3].any()
    # A query without any candidate stays in the denominator as a miss.
    metrics, predictions, _ = evaluate_profiles(np.eye(4), table, NO_MAP)
    assert metrics["n_treatments_nscb"] == 4
    assert metrics["nscb_queries_without_candidates"] == ["everywhere@1"]
    missing = predictions.query("protocol == 'nscb' and treatment == 'everywhere@1'").iloc[0]
    assert pd.isna(missing["neighbour"]) and not missing["correct"]


def test_single_batch_moas_are_derived_from_the_data():
    _, table = profile_table(
        [
            ("a@1", "X", ["B1"], 0),
            ("b@1", "X", ["B1"], 0),
            ("c@1", "Y", ["B1"], 0),
            ("d@1", "Y", ["B2"], 0),
        ]
    )
    assert single_batch_moas(table) == ["X"]


def two_concentration_table(compound, moa, batches):
    """Treatments `{compound}@{0|1}` (row i at concentration i % 2) with their MoAs and batches."""
    return pd.DataFrame(
        {
            "treatment": [f"{c}@{i % 2}" for i, c in enumerate(compound)],
            "compound": compound,
            "concentration": [float(i % 2) for i in range(len(compound))],
            "moa": moa,
            "batches": batches,
        }
    )


def cosine_similarity(profiles):
    unit = profiles / np.linalg.norm(profiles, axis=1, keepdims=True)
    return unit @ unit.T


def brute_force_average_precision(similarity, compound, moa, batches, query, block_batches):
    """AP by the definition, one candidate at a time."""
    candidates = [
        j
        for j in range(len(compound))
        if compound[j] != compound[query]
        and not (block_batches and set(batches[j]) & set(batches[query]))
    ]
    ranked = sorted(candidates, key=lambda j: (-similarity[query, j], j))
    hits, precisions = 0, []
    for rank, j in enumerate(ranked, start=1):
        if moa[j] == moa[query]:
            hits += 1
            precisions.append(hits / rank)
    return np.mean(precisions) if precisions else np.nan


def test_map_matches_brute_force_on_random_profiles():
    rng = np.random.default_rng(3)
    n = 30
    compound = [f"c{i // 2}" for i in range(n)]  # two concentrations per compound
    moa = [f"m{(i // 2) % 4}" for i in range(n)]
    batches = [tuple(sorted({f"B{rng.integers(3)}", f"B{rng.integers(3)}"})) for _ in range(n)]
    table = two_concentration_table(compound, moa, batches)
    profiles = rng.normal(size=(n, 6))
    metrics, predictions, _ = evaluate_profiles(profiles, table, EXACT_MAP)
    similarity = cosine_similarity(profiles)
    for protocol, block in (("nsc", False), ("nscb", True)):
        rows = predictions[predictions["protocol"] == protocol]
        queries = [int(np.flatnonzero(table["treatment"] == t)[0]) for t in rows["treatment"]]
        expected = [
            brute_force_average_precision(similarity, compound, moa, batches, q, block)
            for q in queries
        ]
        np.testing.assert_allclose(rows["average_precision"], expected)
        assert metrics[f"map_{protocol}"] == pytest.approx(np.nanmean(expected))


def test_null_average_precision_is_the_exact_random_ranking_distribution():
    # n = 5 ranked items, k = 2 positives: each of the C(5, 2) = 10 position pairs is equally
    # likely under a random ranking; AP of positions (r1, r2) = (1/r1 + 2/r2) / 2.
    exact = np.round([(1 / r1 + 2 / r2) / 2 for r1, r2 in combinations(range(1, 6), 2)], 12)
    null = null_average_precision(
        np.array([5, 5]), np.array([2, 2]), 20000, np.random.default_rng(0)
    )
    assert null.shape == (2, 20000)
    values, counts = np.unique(np.round(null[0], 12), return_counts=True)
    exact_values, exact_counts = np.unique(exact, return_counts=True)
    np.testing.assert_allclose(values, exact_values)
    np.testing.assert_allclose(counts, 20000 * exact_counts / 10, rtol=0.08)
    # the two queries draw independently
    assert abs(np.corrcoef(null[0], null[1])[0, 1]) < 0.05


@pytest.mark.parametrize(
    "null, expected", [("per_query", 1 / comb(5, 2) ** 3), ("shared", 1 / comb(5, 2))]
)
def test_permutation_p_value_of_a_perfect_ranking(null, expected):
    # MoA P: three treatments of different compounds, close together; each ranks its 2
    # positives first among its 5 candidates: AP = 1. A random ranking gives AP = 1 with
    # probability 1 / C(5, 2) = 0.1. per_query: the null mean of three independent queries reaches
    # the observed mAP 1 with probability 0.1 ** 3 = 0.001. shared: the three queries have the same
    # configuration (5 candidates, 2 positives), hence one shared random AP: probability 0.1.
    rows = [
        ("q@1", "P", ["B1"], 0),
        ("p1@1", "P", ["B1"], 1),
        ("p2@1", "P", ["B1"], 2),
        ("x1@1", "Q", ["B1"], 90),
        ("x2@1", "R", ["B1"], 100),
        ("x3@1", "S", ["B1"], 110),
    ]
    profiles, table = profile_table(rows)
    settings = {"enabled": True, "permutations": 4000, "seed": 1, "null_model": null}
    metrics, _, _ = evaluate_profiles(profiles, table, settings)
    per_moa = metrics["per_moa"]
    assert per_moa["P"]["map_nsc"] == pytest.approx(1.0)
    # binomial standard error of the tail count over 4000 draws: <= 0.005
    tolerance = 0.003 if expected < 0.01 else 0.02
    assert per_moa["P"]["map_nsc_p"] == pytest.approx(expected, abs=tolerance)
    assert per_moa["P"]["map_nsc_p"] >= 1 / 4001
    for moa in "QRS":  # no positive (single-compound MoAs): no AP, no p-value
        assert per_moa[moa]["map_nsc"] is None and per_moa[moa]["map_nsc_p"] is None
    assert metrics["n_queries_map_nsc"] == 3


def test_permutation_p_values_are_reproducible_from_the_seed():
    rng = np.random.default_rng(5)
    rows = [(f"c{i}@1", f"m{i % 3}", [f"B{i % 2}"], float(rng.uniform(0, 360))) for i in range(12)]
    profiles, table = profile_table(rows)
    settings = {"enabled": True, "permutations": 200, "seed": 7}
    first, _, _ = evaluate_profiles(profiles, table, settings)
    second, _, _ = evaluate_profiles(profiles, table, settings)
    other, _, _ = evaluate_profiles(profiles, table, {**settings, "seed": 8})
    p_values = [first["per_moa"][m]["map_nsc_p"] for m in ("m0", "m1", "m2")]
    assert p_values == [second["per_moa"][m]["map_nsc_p"] for m in ("m0", "m1", "m2")]
    assert p_values != [other["per_moa"][m]["map_nsc_p"] for m in ("m0", "m1", "m2")]
    assert all(0 < p <= 1 for p in p_values)


OFFICIAL = Path(__file__).resolve().parents[1] / "data" / "bbbc021"  # the shipped tables


def test_official_bbbc021_gives_103_nsc_and_92_nscb_treatments():
    images = pd.read_csv(OFFICIAL / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(OFFICIAL / "BBBC021_v1_moa.csv")
    table = images.merge(
        moa,
        left_on=["Image_Metadata_Compound", "Image_Metadata_Concentration"],
        right_on=["compound", "concentration"],
    )
    table["batch"] = table["Image_PathName_DAPI"].str.split("/").str[0]
    table["plate"] = table["Image_Metadata_Plate_DAPI"]
    rng = np.random.default_rng(0)
    features = pd.DataFrame(
        rng.normal(size=(len(table), 4)), columns=[f"feat_{i}" for i in range(4)]
    )
    data = pd.concat(
        [table[["compound", "concentration", "moa", "plate", "batch"]], features], axis=1
    )
    result = evaluate_table(data, {"map": NO_MAP})
    assert result["n_dmso"] == 1320
    assert result["n_treatments_nsc"] == 103
    assert result["n_treatments_nscb"] == 92
    assert result["nscb_excluded_moas"] == ["Cholesterol-lowering", "Kinase inhibitors"]
    assert 0 <= result["nscb"] <= 1


def brute_force_accuracy(similarity, compound, moa, batches, queries, block_batches):
    """(1-NN accuracy with queries lacking a candidate as misses, or None when none has one;
    the number without a candidate), by the definition, one query at a time."""
    correct, without = [], 0
    for q in queries:
        candidates = [
            j
            for j in range(len(compound))
            if compound[j] != compound[q]
            and not (block_batches and set(batches[j]) & set(batches[q]))
        ]
        if not candidates:
            without += 1
            correct.append(False)
            continue
        nearest = max(candidates, key=lambda j: (similarity[q, j], -j))
        correct.append(moa[nearest] == moa[q])
    if without == len(queries):
        return None, without
    return float(np.mean(correct)), without


@pytest.mark.parametrize("n_batches, everywhere", [(2, True), (2, False), (3, False), (4, False)])
def test_queries_without_a_candidate_match_brute_force(n_batches, everywhere):
    """Issue 23, case 5: each treatment in a random set of batches, or in every batch (JUMP-like:
    no NSCB query has a candidate, so NSCB is n/a, never 0)."""
    rng = np.random.default_rng(n_batches)
    n = 24
    compound = [f"c{i // 2}" for i in range(n)]
    moa = [f"m{(i // 2) % 3}" for i in range(n)]
    names = [f"B{k}" for k in range(n_batches)]
    batches = [
        tuple(names)
        if everywhere
        else tuple(sorted(rng.choice(names, size=rng.integers(1, n_batches + 1), replace=False)))
        for _ in range(n)
    ]
    table = two_concentration_table(compound, moa, batches)
    profiles = rng.normal(size=(n, 5))
    metrics, _, _ = evaluate_profiles(profiles, table, NO_MAP)
    similarity = cosine_similarity(profiles)
    kept = [q for q in range(n) if moa[q] not in single_batch_moas(table)]
    for protocol, queries, block in (("nsc", range(n), False), ("nscb", kept, True)):
        value, without = brute_force_accuracy(similarity, compound, moa, batches, queries, block)
        assert metrics[f"n_queries_without_candidates_{protocol}"] == without
        assert metrics[protocol] == (None if value is None else pytest.approx(value))
    without = metrics["n_queries_without_candidates_nscb"]
    assert (metrics["nscb"] is None) == everywhere and 0 < without <= metrics["n_treatments_nscb"]


def test_every_treatment_in_every_batch_makes_nscb_not_applicable(tmp_path, capsys):
    from workflow_scripts.evaluate import evaluate as evaluate_cli

    rng = np.random.default_rng(0)
    rows = []
    for batch in ("W1", "W2"):
        for compound, moa in (("a", "X"), ("b", "X"), ("c", "Y"), ("d", "Y"), ("DMSO", "DMSO")):
            for _ in range(3):
                rows.append(
                    (compound, 0.0 if compound == "DMSO" else 1.0, moa, f"{batch}_P", batch)
                )
    table = pd.DataFrame(rows, columns=["compound", "concentration", "moa", "plate", "batch"])
    features = pd.DataFrame(
        rng.normal(size=(len(table), 4)), columns=[f"feat_{i}" for i in range(4)]
    )
    pd.concat([table, features], axis=1).to_csv(tmp_path / "jump_like.csv", index=False)
    argv = ["--features", str(tmp_path / "jump_like.csv"), "--out-dir", str(tmp_path / "eval")]
    argv += ["--label", "x/all/0000", "--settings", '{"map": {"permutations": 10}}']
    assert evaluate_cli.main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["nscb"] is None and metrics["n_queries_without_candidates_nscb"] == 4
    assert metrics["nsc"] is not None and metrics["n_queries_without_candidates_nsc"] == 0
    assert all(metrics["per_moa"][m]["nscb"] is None for m in ("X", "Y"))
    assert any(note.startswith("NSCB not applicable") for note in metrics["notes"])
    err = capsys.readouterr().err
    assert "NSCB n/a (4 treatments, none with a candidate)" in err
    assert "NSCB 0.000" not in err
