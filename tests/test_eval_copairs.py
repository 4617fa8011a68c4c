"""mAP against copairs (Kalinin et al. 2025, the field's implementation): per-query AP, per-MoA
mAP and the permutation p-values of the shared (copairs) null."""

import numpy as np
import pandas as pd
import pytest

copairs_ap = pytest.importorskip("copairs.map")

from workflow_scripts.evaluate.metrics import evaluate_profiles  # noqa: E402

PERMUTATIONS = 10000


def profile_table(seed=0, n_moas=8, compounds_per_moa=4, doses=2, signal=0.35):
    """Treatment profiles: a weak MoA direction + compound part + noise, so mAPs and p-values
    spread over (0, 1); compounds alternate between two batches (one batch per treatment)."""
    rng = np.random.default_rng(seed)
    moa_axis = rng.normal(size=(n_moas, 16))
    rows, values = [], []
    for m in range(n_moas):
        for c in range(compounds_per_moa):
            compound_axis = rng.normal(scale=0.5, size=16)
            for d in range(doses):
                rows.append(
                    (f"m{m}c{c}@{d + 1}", f"m{m}c{c}", float(d + 1), f"MoA{m}", (f"B{c % 2}",))
                )
                values.append(
                    signal * (d + 1) * (moa_axis[m] + compound_axis) + rng.normal(size=16)
                )
    table = pd.DataFrame(rows, columns=["treatment", "compound", "concentration", "moa", "batches"])
    order = np.argsort(table["treatment"].to_numpy(), kind="stable")  # the profile table's order
    return np.asarray(values)[order], table.iloc[order].reset_index(drop=True)


def copairs_scores(profiles, table, block_batches, cache_dir):
    meta = table[["compound", "moa"]].assign(batch=[b[0] for b in table["batches"]])
    diff = ["compound", "batch"] if block_batches else ["compound"]
    ap = copairs_ap.average_precision(
        meta,
        profiles,
        pos_sameby=["moa"],
        pos_diffby=diff,
        neg_sameby=[],
        neg_diffby=["moa", "batch"] if block_batches else ["moa"],
        progress_bar=False,
    )
    per_moa = copairs_ap.mean_average_precision(
        ap,
        sameby=["moa"],
        null_size=PERMUTATIONS,
        threshold=0.05,
        seed=0,
        progress_bar=False,
        cache_dir=cache_dir,
    ).set_index("moa")
    return ap, per_moa


@pytest.mark.parametrize("protocol", ["nsc", "nscb"])
def test_ap_map_and_shared_null_p_values_equal_copairs(protocol, tmp_path):
    profiles, table = profile_table()
    settings = {"enabled": True, "permutations": PERMUTATIONS, "seed": 3, "null_model": "shared"}
    metrics, predictions, _ = evaluate_profiles(profiles, table, settings)
    ap, per_moa = copairs_scores(profiles, table, protocol == "nscb", tmp_path)

    ours = predictions[predictions["protocol"] == protocol]["average_precision"].to_numpy()
    np.testing.assert_allclose(ours, ap["average_precision"].to_numpy(), rtol=0, atol=1e-12)
    p_gaps = []
    for moa, row in per_moa.iterrows():
        stats = metrics["per_moa"][moa]
        assert stats[f"map_{protocol}"] == pytest.approx(row["mean_average_precision"], abs=1e-12)
        p_gaps.append(abs(stats[f"map_{protocol}_p"] - row["p_value"]))
    # two Monte Carlo estimates of the same p (10,000 draws each): standard error <= 0.007
    assert max(p_gaps) < 0.03
    assert 0.05 < np.median(per_moa["p_value"]) < 0.95  # the p-values are informative here


def test_an_independent_null_per_query_gives_smaller_p_values_than_copairs(tmp_path):
    # why the default is the shared null: with independent draws per query the null of a MoA's
    # mean is too narrow (its queries are not independent), and p-values fall far below copairs'
    profiles, table = profile_table()
    settings = {"enabled": True, "permutations": PERMUTATIONS, "seed": 3, "null_model": "per_query"}
    metrics, _, _ = evaluate_profiles(profiles, table, settings)
    _, per_moa = copairs_scores(profiles, table, False, tmp_path)
    gaps = [per_moa.loc[m, "p_value"] - metrics["per_moa"][m]["map_nsc_p"] for m in per_moa.index]
    assert max(gaps) > 0.1 and min(gaps) > -0.03
