"""Spread across training seeds (`train.seeds`): per (arch, channel, epoch) and metric, the mean
and standard deviation (ddof 1) of the seeds' evaluations, for the series trained with more
than one seed.

Epoch 0 with pretrained weights is one evaluation shared by every seed (the same backbone): it
counts once (n_seeds 1, sd undefined); with random init (`weights: none`) each seed has its own.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.summary.runs import METRICS

COLUMNS = ["arch", "channel", "epoch", "metric", "n_seeds", "seeds", "mean", "sd", "min", "max"]


def several_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """The model runs of the (arch, channel) pairs trained with more than one seed."""
    counts = runs.groupby(["arch", "channel"])["seed"].transform("nunique")
    return runs[counts > 1]


def spread(values: pd.Series) -> dict:
    values = pd.to_numeric(values).dropna()
    return {
        "mean": float(values.mean()) if len(values) else np.nan,
        "sd": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
        "min": float(values.min()) if len(values) else np.nan,
        "max": float(values.max()) if len(values) else np.nan,
    }


def seed_statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (arch, channel, epoch, metric) of the multi-seed series (COLUMNS)."""
    rows = []
    for (arch, channel, epoch), group in several_seeds(runs).groupby(
        ["arch", "channel", "epoch"], sort=True
    ):
        for metric in METRICS:
            scored = group.dropna(subset=[metric])
            if scored.empty:
                continue
            rows.append(
                {
                    "arch": arch,
                    "channel": channel,
                    "epoch": epoch,
                    "metric": metric,
                    "n_seeds": len(scored),
                    "seeds": " ".join(str(int(s)) for s in scored["seed"].dropna()),
                    **spread(scored[metric]),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def headline_spread(best: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, channel, metric) with several seeds: n_seeds and the spread (mean, sd) of the
    epoch 0 value (over distinct evaluations), the last value and their difference, as
    {pretrained,last,change}_{mean,sd}."""
    rows = []
    for (arch, channel, metric), group in best.groupby(["arch", "channel", "metric"], sort=True):
        if group["seed"].nunique() < 2:
            continue
        pretrained = group.drop_duplicates("pretrained_label")["pretrained_value"]
        row = {"arch": arch, "channel": channel, "metric": metric, "n_seeds": len(group)}
        for name, values in (
            ("pretrained", pretrained),
            ("last", group["last_value"]),
            ("change", group["last_minus_pretrained"]),
        ):
            stats = spread(values)
            row[f"{name}_mean"], row[f"{name}_sd"] = stats["mean"], stats["sd"]
        rows.append(row)
    return pd.DataFrame(rows)
