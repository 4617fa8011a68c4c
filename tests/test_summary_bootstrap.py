"""Error bars of the summary: compound bootstrap intervals and paired tests, against scipy.stats
(bootstrap fed the same resample indices, binomtest) and brute-force loops."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from workflow_scripts.evaluate.metrics import evaluate_profiles
from workflow_scripts.summary import bootstrap, paired
from workflow_scripts.summary.bootstrap import Settings


def predictions(seed=0, n_compounds=30, skill=0.7, map_enabled=True):
    """A predictions.csv-like table: compounds with 1-4 concentrations whose hits are correlated
    within the compound (a compound-level skill plus noise), for both protocols; the NSCB
    protocol drops the first 4 compounds; a few queries have no AP (no positive)."""
    rng = np.random.default_rng(seed)
    rows = []
    for protocol in ("nsc", "nscb"):
        for c in range(4 if protocol == "nscb" else 0, n_compounds):
            compound_skill = np.clip(skill + rng.normal(scale=0.3), 0, 1)
            for conc in range(1 + c % 4):
                hit = rng.random() < compound_skill
                ap = np.clip(compound_skill + rng.normal(scale=0.1), 0, 1)
                rows.append(
                    {
                        "protocol": protocol,
                        "treatment": f"cpd{c:02d}@{conc}",
                        "compound": f"cpd{c:02d}",
                        "correct": hit,
                        "average_precision": ap if map_enabled and (c + conc) % 7 else np.nan,
                    }
                )
    return pd.DataFrame(rows)


def scipy_interval(values, compounds, settings):
    """scipy.stats.bootstrap of the ratio (sum of values / number of queries) over compounds,
    the compounds' totals as paired data, with the generator the summary uses."""
    frame = pd.DataFrame({"v": values, "c": compounds}).groupby("c")["v"].agg(["sum", "count"])
    result = stats.bootstrap(
        (frame["sum"].to_numpy(), frame["count"].to_numpy(float)),
        lambda s, n, axis=-1: s.sum(axis=axis) / n.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=settings.resamples,
        confidence_level=settings.confidence,
        method="percentile",
        rng=np.random.default_rng(settings.seed),
    )
    return result


@pytest.mark.parametrize("metric", list(bootstrap.OUTCOMES))
@pytest.mark.parametrize(
    "settings", [Settings(), Settings(resamples=500, confidence=0.9, seed=7)], ids=str
)
def test_intervals_equal_scipy_bootstrap_over_compounds(metric, settings):
    table = predictions()
    queries = bootstrap.query_outcomes(table, metric)
    ours = bootstrap.metric_intervals(table, settings)
    reference = scipy_interval(queries["outcome"], queries["compound"], settings)
    low, high = reference.confidence_interval
    assert ours[f"{metric}_ci_low"] == pytest.approx(low, abs=1e-12)
    assert ours[f"{metric}_ci_high"] == pytest.approx(high, abs=1e-12)
    # and the interval is around the metric, not degenerate
    assert low < queries["outcome"].mean() < high


def test_each_resample_is_the_mean_over_the_drawn_compounds_queries():
    # brute force: for a few resamples, rebuild the resampled query list by hand
    table = predictions(seed=1)
    queries = bootstrap.query_outcomes(table, "nsc")
    settings = Settings(resamples=5, seed=3)
    sums, counts = bootstrap.compound_totals(queries["outcome"], queries["compound"])
    indices = bootstrap.resample_indices(len(sums), settings)
    names = sorted(queries["compound"].unique())
    for row, value in zip(indices, bootstrap.ratio_distribution(sums, counts, indices)):
        drawn = [v for i in row for v in queries.loc[queries["compound"] == names[i], "outcome"]]
        assert value == pytest.approx(sum(drawn) / len(drawn), abs=1e-12)


def test_treatments_of_a_compound_move_together_so_the_interval_is_wider_than_per_treatment():
    # 40 compounds x 2 concentrations, both hit or both miss: resampling treatments as if they
    # were independent would give an interval about sqrt(2) too narrow
    rng = np.random.default_rng(0)
    hits = np.repeat(rng.random(40) < 0.6, 2).astype(float)
    compounds = np.repeat([f"c{i}" for i in range(40)], 2)
    settings = Settings(resamples=4000)
    low, high = bootstrap.compound_interval(hits, compounds, settings)
    per_treatment = bootstrap.compound_interval(hits, np.arange(80).astype(str), settings)
    assert (high - low) / (per_treatment[1] - per_treatment[0]) == pytest.approx(2**0.5, rel=0.15)


def test_queries_without_an_outcome_have_no_interval():
    table = predictions(map_enabled=False)
    intervals = bootstrap.metric_intervals(table, Settings(resamples=50))
    assert np.isnan(intervals["map_nsc_ci_low"]) and np.isnan(intervals["map_nscb_ci_high"])
    assert intervals["nsc_ci_low"] < intervals["nsc_ci_high"]


@pytest.mark.parametrize(
    "improved,worsened", [(0, 0), (0, 1), (1, 0), (3, 3), (0, 7), (9, 2), (12, 30), (50, 31)]
)
def test_mcnemar_equals_scipy_binomtest_on_the_discordant_counts(improved, worsened):
    n = improved + worsened
    expected = stats.binomtest(improved, n, 0.5).pvalue if n else 1.0
    assert paired.mcnemar_exact(improved, worsened) == pytest.approx(expected, abs=1e-12)


def test_hit_comparisons_count_the_discordant_treatments_by_name():
    a, b = predictions(seed=2), predictions(seed=3)
    # order and extra rows must not matter: B shuffled and missing one treatment
    b = b.sample(frac=1, random_state=0)
    b = b[b["treatment"] != "cpd10@0"]
    result = paired.compare(a, b, "nsc", Settings(resamples=200))
    nsc_a = a[a["protocol"] == "nsc"].set_index("treatment")["correct"]
    nsc_b = b[b["protocol"] == "nsc"].set_index("treatment")["correct"]
    common = sorted(set(nsc_a.index) & set(nsc_b.index))
    gained = sum(bool(nsc_a[t]) and not bool(nsc_b[t]) for t in common)
    lost = sum(bool(nsc_b[t]) and not bool(nsc_a[t]) for t in common)
    assert (result["n_paired"], result["improved"], result["worsened"]) == (
        len(common),
        gained,
        lost,
    )
    assert gained + lost > 0 and result["n_paired"] == len(nsc_a) - 1
    assert result["test"] == "exact McNemar"
    assert result["p_value"] == pytest.approx(stats.binomtest(gained, gained + lost).pvalue)
    assert result["difference"] == pytest.approx((gained - lost) / len(common))
    assert result["value_a"] == pytest.approx(nsc_a[common].mean())


@pytest.mark.parametrize("metric", ["map_nsc", "nscb"])
def test_the_paired_interval_equals_scipy_bootstrap_of_per_compound_differences(metric):
    a, b = predictions(seed=4), predictions(seed=5, skill=0.5)
    settings = Settings(resamples=800, confidence=0.9, seed=11)
    result = paired.compare(a, b, metric, settings)
    pairs = paired.paired_outcomes(a, b, metric)
    reference = scipy_interval(pairs["outcome_a"] - pairs["outcome_b"], pairs["compound"], settings)
    assert result["difference_ci_low"] == pytest.approx(reference.confidence_interval.low)
    assert result["difference_ci_high"] == pytest.approx(reference.confidence_interval.high)
    if metric == "map_nsc":
        assert result["test"] == "paired compound bootstrap"
        d = result["difference"]
        centred = np.abs(reference.bootstrap_distribution - d) >= abs(d)
        assert result["p_value"] == pytest.approx((1 + centred.sum()) / (1 + 800))
        ap_a = pairs["outcome_a"].to_numpy()
        ap_b = pairs["outcome_b"].to_numpy()
        assert (result["improved"], result["worsened"]) == (
            int((ap_a > ap_b).sum()),
            int((ap_a < ap_b).sum()),
        )


def test_a_run_against_itself_differs_by_nothing_and_a_clear_gain_is_significant():
    a = predictions(seed=6)
    for metric in bootstrap.OUTCOMES:
        same = paired.compare(a, a, metric, Settings(resamples=200))
        assert same["difference"] == 0 and same["p_value"] == 1.0
        assert same["improved"] == same["worsened"] == 0
    perfect = a.assign(
        correct=True,
        average_precision=a["average_precision"].where(a["average_precision"].isna(), 1.0),
    )
    for metric in bootstrap.OUTCOMES:
        better = paired.compare(perfect, a, metric, Settings(resamples=200))
        assert better["difference"] > 0 and better["worsened"] == 0
        assert better["p_value"] < 0.01
        assert 0 < better["difference_ci_low"] <= better["difference"]


def test_runs_without_common_treatments_are_not_compared():
    a = predictions()
    b = a.assign(treatment="other_" + a["treatment"])
    result = paired.compare(a, b, "nsc", Settings(resamples=50))
    assert result["n_paired"] == 0 and np.isnan(result["p_value"])


@pytest.mark.parametrize("n_batches, everywhere", [(2, True), (2, False), (3, False)])
def test_per_query_outcomes_give_the_evaluations_metrics_with_queries_without_candidates(
    tmp_path, n_batches, everywhere
):
    """What the summary resamples agrees with metrics.json (evaluate's metrics, checked against
    brute force in test_eval_metrics.py) when queries lack candidates: with some candidates
    they are misses; with none (every treatment in every batch) the metric has no outcome (n/a)
    and no interval, never 0. Read back from predictions.csv, as the summary reads it."""
    rng = np.random.default_rng(n_batches)
    n = 24
    compound = [f"c{i // 2}" for i in range(n)]
    names = [f"B{k}" for k in range(n_batches)]
    table = pd.DataFrame(
        {
            "treatment": [f"{c}@{i % 2}" for i, c in enumerate(compound)],
            "compound": compound,
            "concentration": [float(i % 2) for i in range(n)],
            "moa": [f"m{(i // 2) % 3}" for i in range(n)],
            "batches": [
                tuple(names)
                if everywhere
                else tuple(sorted(rng.choice(names, rng.integers(1, n_batches + 1), False)))
                for _ in range(n)
            ],
        }
    )
    map_settings = {"enabled": True, "permutations": 5, "seed": 0, "null_model": "shared"}
    metrics, rows, _ = evaluate_profiles(rng.normal(size=(n, 5)), table, map_settings)
    rows.to_csv(tmp_path / "predictions.csv", index=False)
    read_back = pd.read_csv(tmp_path / "predictions.csv")
    assert (metrics["nscb"] is None) == everywhere
    assert metrics["n_queries_without_candidates_nscb"] > 0
    intervals = bootstrap.metric_intervals(read_back, Settings(resamples=50))
    for metric in bootstrap.OUTCOMES:
        outcomes = bootstrap.query_outcomes(read_back, metric)["outcome"]
        if metrics[metric] is None:
            assert outcomes.empty and np.isnan(intervals[f"{metric}_ci_low"])
        else:
            assert outcomes.mean() == pytest.approx(metrics[metric], abs=1e-12)
            assert intervals[f"{metric}_ci_low"] <= intervals[f"{metric}_ci_high"]
