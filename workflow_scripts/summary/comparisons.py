"""The paired comparisons of the summary (paired.py's tests), one row per comparison and metric:

- `last epoch vs epoch 0`: per training series (arch, channel, seed), its last epoch (fixed in
  advance by train.epochs) against its epoch 0 (the backbone before fine-tuning; with
  pretrained weights the one evaluation every seed shares);
- `last epoch vs baseline`: each series' last epoch against each external baseline, on the
  treatments both scored.

Run A is the last epoch, run B epoch 0 or the baseline: a positive difference is a gain of the
fine-tuned model. The p-values are per comparison, not adjusted for how many are made.
"""

from __future__ import annotations

import pandas as pd

from workflow_scripts.summary.bootstrap import Settings
from workflow_scripts.summary.paired import compare
from workflow_scripts.summary.runs import (
    METRICS,
    SERIES_KEYS,
    pretrained_run,
    run_label,
    training_series,
)

LAST_VS_EPOCH0 = "last epoch vs epoch 0"
LAST_VS_BASELINE = "last epoch vs baseline"
COLUMNS = [
    "comparison",
    *SERIES_KEYS,
    "epoch",
    "run_a",
    "run_b",
    "metric",
    "n_paired",
    "value_a",
    "value_b",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "improved",
    "worsened",
    "test",
    "p_value",
]


def comparisons_table(
    runs: pd.DataFrame,
    baselines: pd.DataFrame,
    predictions: dict[str, pd.DataFrame],
    settings: Settings,
) -> pd.DataFrame:
    """Every comparison (module docstring) for every metric both runs have."""
    rows = []
    for (arch, channel, seed), group in training_series(runs):
        last = group.iloc[-1]
        references = []
        pretrained = pretrained_run(runs, arch, channel, seed)
        if pretrained is not None and int(last["epoch"]) > 0:
            references.append((LAST_VS_EPOCH0, pretrained))
        references += [(LAST_VS_BASELINE, row) for _, row in baselines.iterrows()]
        for comparison, reference in references:
            for metric in METRICS:
                if pd.isna(last[metric]) or pd.isna(reference[metric]):
                    continue
                result = compare(
                    predictions[run_label(last)],
                    predictions[run_label(reference)],
                    metric,
                    settings,
                )
                rows.append(
                    {
                        "comparison": comparison,
                        "arch": arch,
                        "channel": channel,
                        "seed": seed,
                        "epoch": int(last["epoch"]),
                        "run_a": run_label(last),
                        "run_b": run_label(reference),
                        "metric": metric,
                        **result,
                    }
                )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["seed"] = table["seed"].astype("Int64")
    return table
