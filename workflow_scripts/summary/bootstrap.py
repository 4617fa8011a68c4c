"""Compound bootstrap: confidence intervals of NSC, NSCB and mAP from an evaluation's per-query
outcomes (predictions.csv).

What is resampled: the compounds. Each metric is a mean over query treatments of a per-query
outcome computed once on the full table (hit or miss of the nearest neighbour for NSC / NSCB;
the query's average precision for mAP); the nearest neighbours and rankings are not recomputed.
A resample draws as many compounds as the metric's queries have, with replacement, and its
value is the sum of the drawn compounds' outcomes over the number of their queries (a compound
drawn twice counts twice). Treatments of one compound (its concentrations) share a biology and
tend to be right or wrong together, so they are resampled as one unit (a cluster bootstrap); the
interval therefore says how much the metric depends on which compounds happen to be the
benchmark's queries, given the reference set. Interval: the percentile interval of the
resampled values (numpy's linear quantile), the same as scipy.stats.bootstrap(method=
"percentile") fed the same resample indices (tests/test_summary_bootstrap.py).

The resample indices are `resamples` rows of `n` integers drawn by
numpy.random.default_rng(seed).integers(0, n, (resamples, n)), drawn anew for every interval, so
an interval does not depend on which other runs are summarised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# evaluate.bootstrap's keys and defaults (config.yaml)
DEFAULTS = {"resamples": 1000, "confidence": 0.95, "seed": 0}
HIT = "correct"  # NSC / NSCB's per-query outcome column
NEIGHBOUR = "neighbour"  # empty for a query without any candidate
# metric -> (predictions.csv protocol, per-query outcome column)
OUTCOMES = {
    "nsc": ("nsc", HIT),
    "nscb": ("nscb", HIT),
    "map_nsc": ("nsc", "average_precision"),
    "map_nscb": ("nscb", "average_precision"),
}


@dataclass(frozen=True)
class Settings:
    resamples: int = DEFAULTS["resamples"]
    confidence: float = DEFAULTS["confidence"]
    seed: int = DEFAULTS["seed"]


def resample_indices(n_units: int, settings: Settings) -> np.ndarray:
    """(resamples, n_units) unit indices drawn with replacement (the draw scipy.stats.bootstrap
    makes with the same generator)."""
    rng = np.random.default_rng(settings.seed)
    return rng.integers(0, n_units, (settings.resamples, n_units))


def query_outcomes(predictions: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric's queries: treatment, compound and outcome (float), queries without an
    outcome (mAP: no positive) left out, in predictions.csv's order. NSC / NSCB of a protocol
    none of whose queries has a candidate (no `neighbour` in any row) has no outcomes: the
    metric is n/a there (None in metrics.json), not 0; with some candidates, a query without
    one is a miss, as in the metric."""
    protocol, column = OUTCOMES[metric]
    rows = predictions[predictions["protocol"] == protocol]
    outcome = pd.to_numeric(rows[column].astype(float), errors="coerce")
    kept = outcome.notna()
    if column == HIT and NEIGHBOUR in rows and rows[NEIGHBOUR].isna().all():
        kept[:] = False
    return pd.DataFrame(
        {
            "treatment": rows["treatment"].astype(str)[kept].to_numpy(),
            "compound": rows["compound"].astype(str)[kept].to_numpy(),
            "outcome": outcome[kept].to_numpy(dtype=np.float64),
        }
    )


def compound_totals(values: np.ndarray, compounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per compound (sorted by name): the sum of its queries' values and their number."""
    names, unit = np.unique(np.asarray(compounds, dtype=str), return_inverse=True)
    sums = np.bincount(unit, weights=np.asarray(values, dtype=np.float64), minlength=len(names))
    counts = np.bincount(unit, minlength=len(names)).astype(np.float64)
    return sums, counts


def ratio_distribution(sums: np.ndarray, counts: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per resample: sum of the drawn units' sums over the sum of their counts."""
    return sums[indices].sum(axis=1) / counts[indices].sum(axis=1)


def percentile_interval(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return float(low), float(high)


def compound_interval(
    values: np.ndarray, compounds: np.ndarray, settings: Settings
) -> tuple[float, float]:
    """Percentile interval of the mean of `values` (one per query) under the compound
    bootstrap; (nan, nan) without queries."""
    if len(values) == 0:
        return np.nan, np.nan
    sums, counts = compound_totals(values, compounds)
    distribution = ratio_distribution(sums, counts, resample_indices(len(sums), settings))
    return percentile_interval(distribution, settings.confidence)


def metric_intervals(predictions: pd.DataFrame, settings: Settings) -> dict[str, float]:
    """{metric_ci_low, metric_ci_high} for every metric of OUTCOMES (nan where the run has no
    outcome for it, e.g. mAP disabled)."""
    intervals = {}
    for metric in OUTCOMES:
        queries = query_outcomes(predictions, metric)
        low, high = compound_interval(
            queries["outcome"].to_numpy(), queries["compound"].to_numpy(), settings
        )
        intervals[f"{metric}_ci_low"], intervals[f"{metric}_ci_high"] = low, high
    return intervals
