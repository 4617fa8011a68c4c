"""Embedding maps: a 2-D t-SNE of the treatment profiles that NSC / NSCB score, per (architecture,
channel) at epoch 0 and at the last epoch, coloured by MoA and marked by week (WS-DINO's
`TSNE.py`).

The points are the rows of the evaluation's `profiles.parquet` (one per treatment, the same
treatments as predictions.csv; after the evaluation's feature hygiene, normalisation, TVN and
aggregation), L2-normalised as WS-DINO does, so that the Euclidean neighbourhoods t-SNE keeps are
NSC's cosine neighbourhoods. scikit-learn's `TSNE(n_components=2, perplexity, init="pca",
method="exact", random_state=0)`: exact gradients, since there are only ~100 treatments
(scikit-learn's default Barnes-Hut approximation, which WS-DINO ran, is there for large sets and
took 10-20x longer here); perplexity 30 (scikit-learn's default, which WS-DINO used) or, with
fewer than 91 treatments, (treatments - 1) // 3, so that 3 x perplexity < treatments. A
treatment's marker is its `main_batch`: the week holding most of its plates (ties: the first by
name); on BBBC021 nearly every treatment lies in one week.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.preprocessing import normalize  # noqa: E402

from workflow_scripts.tables import read_table  # noqa: E402

PERPLEXITY = 30.0
TSNE_SEED = 0
LABEL_COLUMNS = ("treatment", "compound", "concentration", "moa", "main_batch")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
# 12 well-separated colours (BBBC021 has 12 MoAs): tab10, then black and gold
MOA_COLOURS = (*plt.get_cmap("tab10").colors, (0.0, 0.0, 0.0), (0.9, 0.75, 0.0))


def map_file(arch: str, channel: str, suffix: str = "png") -> str:
    return f"embedding_map_{arch}_{channel}.{suffix}"


def perplexity_for(n_treatments: int) -> float:
    """30, or (n - 1) // 3 for fewer than 91 treatments (at least 1)."""
    return float(min(PERPLEXITY, max(1, (n_treatments - 1) // 3)))


def read_profiles(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(labels, profiles) of an evaluation's profiles.parquet."""
    table = read_table(path, required=list(LABEL_COLUMNS))
    features = [c for c in table.columns if c.startswith("feat_")]
    return table[list(LABEL_COLUMNS)].reset_index(drop=True), table[features].to_numpy(float)


def tsne_coordinates(profiles: np.ndarray) -> tuple[np.ndarray, float]:
    """(n, 2) t-SNE of the L2-normalised profiles and the perplexity used."""
    perplexity = perplexity_for(len(profiles))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", method="exact", random_state=TSNE_SEED
    )
    return tsne.fit_transform(normalize(profiles)), perplexity


def embedding_table(runs: pd.DataFrame, profiles: dict[Path, Path]) -> pd.DataFrame:
    """One row per (arch, channel, epoch, treatment) with its t-SNE coordinates, for the runs
    of `runs` (rows with run_dir) whose profiles file is given ({resolved run_dir:
    profiles.parquet})."""
    frames = []
    for _, run in runs.iterrows():
        path = profiles.get(Path(run["run_dir"]).resolve())
        if path is None:
            continue
        labels, values = read_profiles(path)
        if len(values) < 3:
            continue  # t-SNE needs a neighbourhood
        coordinates, perplexity = tsne_coordinates(values)
        frames.append(
            labels.assign(
                arch=run["arch"],
                channel=run["channel"],
                epoch=int(run["epoch"]),
                x=coordinates[:, 0],
                y=coordinates[:, 1],
                perplexity=perplexity,
            )
        )
    columns = ["arch", "channel", "epoch", *LABEL_COLUMNS, "x", "y", "perplexity"]
    return (
        pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    )


def style_keys(points: pd.DataFrame) -> tuple[dict[str, tuple], dict[str, str]]:
    """MoA -> colour and week -> marker, the same in every map of the report."""
    moas = sorted(points["moa"].astype(str).unique())
    weeks = sorted(points["main_batch"].astype(str).unique())
    colours = {m: MOA_COLOURS[i % len(MOA_COLOURS)] for i, m in enumerate(moas)}
    markers = {w: MARKERS[i % len(MARKERS)] for i, w in enumerate(weeks)}
    return colours, markers


def embedding_figure(
    points: pd.DataFrame,
    runs: pd.DataFrame,
    arch: str,
    channel: str,
    styles: tuple[dict[str, tuple], dict[str, str]],
    epoch0_name: str,
) -> plt.Figure:
    """One panel per epoch of (arch, channel); title: that epoch's NSC / NSCB."""
    colours, markers = styles
    shown = points[(points["arch"] == arch) & (points["channel"] == channel)]
    epochs = sorted(shown["epoch"].unique())
    fig, axes = plt.subplots(
        1, len(epochs), figsize=(5.2 * len(epochs) + 2.6, 5.0), squeeze=False, layout="constrained"
    )
    for ax, epoch in zip(axes[0], epochs):
        panel = shown[shown["epoch"] == epoch]
        for (moa, week), group in panel.groupby(["moa", "main_batch"], sort=True):
            ax.scatter(
                group["x"],
                group["y"],
                color=colours[str(moa)],
                marker=markers[str(week)],
                s=42,
                edgecolors="white",
                linewidths=0.5,
            )
        run = runs[(runs["arch"] == arch) & (runs["channel"] == channel) & (runs["epoch"] == epoch)]
        scores = "  ".join(
            f"{name} {run[key].iloc[0]:.3f}"
            for key, name in (("nsc", "NSC"), ("nscb", "NSCB"))
            if len(run) and pd.notna(run[key].iloc[0])
        )
        which = f"epoch 0 ({epoch0_name})" if epoch == 0 else f"epoch {epoch}"
        ax.set_title(f"{which}\n{scores}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE 1", fontsize=8)
        ax.set_ylabel("t-SNE 2", fontsize=8)
    moa_handles = [
        Line2D([], [], marker="o", linestyle="none", color=colours[m], markersize=7, label=m)
        for m in sorted(shown["moa"].astype(str).unique())
    ]
    week_handles = [
        Line2D([], [], marker=markers[w], linestyle="none", color="0.35", markersize=7, label=w)
        for w in sorted(shown["main_batch"].astype(str).unique())
    ]
    # figure legends "outside": the constrained layout makes room for them
    for handles, title, where in (
        (moa_handles, "MoA (colour)", "outside right upper"),
        (week_handles, "week (marker)", "outside right lower"),
    ):
        fig.legend(
            handles=handles, title=title, loc=where, fontsize=8, title_fontsize=8, frameon=False
        )
    perplexity = shown["perplexity"].iloc[0]
    fig.suptitle(
        f"{arch} / {channel}: t-SNE of {len(shown) // len(epochs)} treatment profiles "
        f"(perplexity {perplexity:g})",
        fontsize=10,
    )
    return fig
