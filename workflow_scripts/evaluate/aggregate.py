"""Treatment profiles: image features -> one vector per (compound, concentration).

Two levels, each a mean or a median: the images of a treatment on one plate (the well replicates
and sites of that plate), then the plates of the treatment. The default (plate: mean,
treatment: median) is the seed's choice and the usual BBBC021 protocol (Ljosa et al. 2013).
DMSO images are left out: they are the reference of TVN, not a treatment to be retrieved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError

STATISTICS = ("mean", "median")
# Per-treatment labels that must be single-valued within a treatment.
TREATMENT_LABELS = ("compound", "concentration", "moa")


def treatment_profiles(
    features: np.ndarray,
    metadata: pd.DataFrame,
    plate_statistic: str = "mean",
    treatment_statistic: str = "median",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Aggregate the non-control rows of `features` (rows aligned with `metadata`).

    `metadata` needs columns treatment, compound, concentration, moa, plate, batch, is_control.
    Returns (profiles (T, D), profile table) with rows sorted by treatment name; the table has
    treatment, compound, concentration, moa, batches (sorted tuple of the batches the treatment
    occurs in), main_batch (the batch holding most of its plates; ties: the first by name),
    n_plates, n_images.
    """
    for key, value in (("plate", plate_statistic), ("treatment", treatment_statistic)):
        if value not in STATISTICS:
            raise InputError(
                f"settings key 'aggregation.{key}': '{value}' is not one of {', '.join(STATISTICS)}"
            )
    treated = ~metadata["is_control"].to_numpy(dtype=bool)
    meta = metadata.loc[treated].reset_index(drop=True)
    if meta.empty:
        raise InputError("no treated (non-DMSO) images to build treatment profiles from")
    check_single_labels(meta)

    values = pd.DataFrame(np.asarray(features, dtype=np.float64)[treated])
    values["treatment"] = meta["treatment"].to_numpy()
    values["plate"] = meta["plate"].to_numpy()
    per_plate = values.groupby(["treatment", "plate"], sort=True).agg(plate_statistic)
    per_treatment = per_plate.groupby(level="treatment", sort=True).agg(treatment_statistic)

    grouped = meta.groupby("treatment", sort=True)
    table = grouped[list(TREATMENT_LABELS)].first()
    table["batches"] = grouped["batch"].agg(lambda s: tuple(sorted(set(s))))
    plates_per_batch = meta.drop_duplicates(["treatment", "plate"]).groupby(
        ["treatment", "batch"], sort=True
    )
    table["main_batch"] = plates_per_batch.size().groupby(level="treatment").idxmax().str[1]
    table["n_plates"] = grouped["plate"].nunique()
    table["n_images"] = grouped.size()
    table = table.loc[per_treatment.index].reset_index()
    return per_treatment.to_numpy(), table


def check_single_labels(meta: pd.DataFrame) -> None:
    """A treatment with two MoAs (or compounds, concentrations) is a metadata error."""
    for column in TREATMENT_LABELS:
        counts = meta.groupby("treatment")[column].nunique(dropna=False)
        bad = counts[counts > 1]
        if not bad.empty:
            treatment = bad.index[0]
            found = sorted(map(str, meta.loc[meta["treatment"] == treatment, column].unique()))
            raise InputError(
                f"treatment '{treatment}' has several values in column '{column}': "
                f"{', '.join(found)}"
            )
