"""Paired comparisons of two evaluations on the same query treatments (predictions.csv of each):
is run A's NSC / NSCB / mAP different from run B's by more than chance?

The queries are paired by treatment (a treatment's outcome in A against its outcome in B);
treatments scored in only one of the two are left out, and the number paired is reported.

- NSC, NSCB: the exact McNemar test on the discordant queries: `improved` = hits in A that are
  misses in B, `worsened` = the reverse; two-sided p = min(1, 2 P(X <= min(improved,
  worsened))), X ~ Binomial(improved + worsened, 1/2) (the exact binomial test of the
  discordant counts, as scipy.stats.binomtest; p = 1 without discordant queries).
  It treats the queries as independent; treatments of one compound are not quite (bootstrap.py),
  so the compound bootstrap interval of the difference is reported beside it.
- mAP: a paired compound bootstrap (bootstrap.py: the compounds are resampled and each
  resample's difference is the mean of A's minus B's AP over the drawn compounds' queries);
  two-sided p = (1 + #{|d* - d| >= |d|}) / (1 + resamples), d the observed difference and d*
  the resampled ones (the resampled differences centred on d stand for the null distribution).
  `improved` / `worsened`: queries whose AP rose / fell.

Every comparison also gives the compound bootstrap percentile interval of the difference (A - B).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import binom

from workflow_scripts.summary.bootstrap import (
    Settings,
    compound_totals,
    percentile_interval,
    query_outcomes,
    ratio_distribution,
    resample_indices,
)

HIT_METRICS = ("nsc", "nscb")
MCNEMAR = "exact McNemar"
PAIRED_BOOTSTRAP = "paired compound bootstrap"


def mcnemar_exact(improved: int, worsened: int) -> float:
    """Two-sided exact McNemar p-value of the discordant counts."""
    n = improved + worsened
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(improved, worsened), n, 0.5)))


def paired_outcomes(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The metric's queries scored in both predictions tables: treatment, compound, outcome_a,
    outcome_b (sorted by treatment)."""
    merged = query_outcomes(a, metric).merge(
        query_outcomes(b, metric), on=["treatment", "compound"], suffixes=("_a", "_b")
    )
    return merged.sort_values("treatment", kind="stable").reset_index(drop=True)


def bootstrap_p_value(distribution: np.ndarray, observed: float) -> float:
    """Two-sided p of `observed` from the resampled differences centred on it."""
    extreme = np.count_nonzero(np.abs(distribution - observed) >= abs(observed) - 1e-12)
    return float((1 + extreme) / (1 + len(distribution)))


def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str, settings: Settings) -> dict:
    """Run A against run B on `metric`: n_paired, value_a, value_b, difference (A - B),
    difference_ci_low / _high, improved, worsened, test, p_value (nan without paired queries)."""
    pairs = paired_outcomes(a, b, metric)
    result = {
        "n_paired": len(pairs),
        "value_a": np.nan,
        "value_b": np.nan,
        "difference": np.nan,
        "difference_ci_low": np.nan,
        "difference_ci_high": np.nan,
        "improved": 0,
        "worsened": 0,
        "test": MCNEMAR if metric in HIT_METRICS else PAIRED_BOOTSTRAP,
        "p_value": np.nan,
    }
    if pairs.empty:
        return result
    outcome_a, outcome_b = pairs["outcome_a"].to_numpy(), pairs["outcome_b"].to_numpy()
    difference = outcome_a - outcome_b
    sums, counts = compound_totals(difference, pairs["compound"].to_numpy())
    distribution = ratio_distribution(sums, counts, resample_indices(len(sums), settings))
    low, high = percentile_interval(distribution, settings.confidence)
    observed = float(difference.mean())
    improved, worsened = int((difference > 0).sum()), int((difference < 0).sum())
    result.update(
        value_a=float(outcome_a.mean()),
        value_b=float(outcome_b.mean()),
        difference=observed,
        difference_ci_low=low,
        difference_ci_high=high,
        improved=improved,
        worsened=worsened,
        p_value=mcnemar_exact(improved, worsened)
        if metric in HIT_METRICS
        else bootstrap_p_value(distribution, observed),
    )
    return result
