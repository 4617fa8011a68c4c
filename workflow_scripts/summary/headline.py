"""The report's headline table in numbers: per training series (arch x channel x seed) and
metric, epoch 0 and the last epoch with their bootstrap intervals, and the change with its
paired test; after the seeds of an (arch, channel), their mean and sd; then the baselines.

Columns: (metric name, field) with the fields of FIELDS; html.py turns each metric's fields into
three cells (epoch 0, last, last - epoch 0)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.summary.comparisons import LAST_VS_EPOCH0
from workflow_scripts.summary.runs import (
    BASELINE_CHANNEL,
    METRICS,
    WEAK_LABEL_UNKNOWN,
    pivot_frame,
    row_key,
)
from workflow_scripts.summary.seeds import headline_spread

FIELDS = (
    "epoch 0",
    "epoch 0 low",
    "epoch 0 high",
    "epoch 0 sd",
    "last",
    "last low",
    "last high",
    "last sd",
    "change",
    "change low",
    "change high",
    "change sd",
    "improved",
    "worsened",
    "p",
)
SEED_MEAN = "mean"  # the seed column of a row over several seeds: "mean (n)"


def headline_pivot(
    best: pd.DataFrame,
    baselines: pd.DataFrame | None = None,
    comparisons: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Rows arch x channel x seed (then each multi-seed pair's mean ± sd row, then the
    baselines), labelled as runs.row_key (with the weak label of the training); columns
    metric x FIELDS."""
    tests = {}
    if comparisons is not None and len(comparisons):
        own = comparisons[comparisons["comparison"] == LAST_VS_EPOCH0]
        tests = {(row.run_a, row.metric): row for row in own.itertuples()}
    rows: dict[tuple, dict] = {}
    spread = headline_spread(best) if len(best) else pd.DataFrame()
    for (arch, channel), group in best.groupby(["arch", "channel"], sort=True):
        for _, row in group.iterrows():
            values = rows.setdefault(row_key(row, int(row["last_epoch"])), empty_row())
            name = METRICS[row["metric"]]
            test = tests.get((row["last_label"], row["metric"]))
            values.update(
                {
                    (name, "epoch 0"): row["pretrained_value"],
                    (name, "epoch 0 low"): row["pretrained_ci_low"],
                    (name, "epoch 0 high"): row["pretrained_ci_high"],
                    (name, "last"): row["last_value"],
                    (name, "last low"): row["last_ci_low"],
                    (name, "last high"): row["last_ci_high"],
                    (name, "change"): row["last_minus_pretrained"],
                }
            )
            if test is not None:
                values.update(
                    {
                        (name, "change low"): test.difference_ci_low,
                        (name, "change high"): test.difference_ci_high,
                        (name, "improved"): test.improved,
                        (name, "worsened"): test.worsened,
                        (name, "p"): test.p_value,
                    }
                )
        if spread.empty:
            continue
        pair = spread[(spread["arch"] == arch) & (spread["channel"] == channel)]
        if pair.empty:
            continue
        first = group.iloc[0]
        key = (
            arch,
            channel,
            f"{SEED_MEAN} ({int(pair['n_seeds'].iloc[0])})",
            first.get("epoch0", "–"),
            first.get("weak_label", WEAK_LABEL_UNKNOWN),
            int(group["last_epoch"].max()),
        )
        values = rows.setdefault(key, empty_row())
        for _, stats in pair.iterrows():
            name = METRICS[stats["metric"]]
            for field, column in (
                ("epoch 0", "pretrained"),
                ("last", "last"),
                ("change", "change"),
            ):
                values[(name, field)] = stats[f"{column}_mean"]
                values[(name, f"{field} sd")] = stats[f"{column}_sd"]
    for _, row in (baselines if baselines is not None else pd.DataFrame()).iterrows():
        values = rows.setdefault((row["arch"], BASELINE_CHANNEL, "–", "–", "–", "–"), empty_row())
        for metric, name in METRICS.items():
            values[(name, "last")] = row[metric]
            values[(name, "last low")] = row.get(f"{metric}_ci_low", np.nan)
            values[(name, "last high")] = row.get(f"{metric}_ci_high", np.nan)
    return pivot_frame(rows)


def empty_row() -> dict:
    return {(name, field): np.nan for name in METRICS.values() for field in FIELDS}
