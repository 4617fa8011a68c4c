"""The report's figures: each metric against the fine-tuning epoch, the MoA confusion matrix and
training health. Each function returns a matplotlib Figure; png_bytes renders and closes it."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from workflow_scripts.summary.runs import METRICS, epoch0_name  # noqa: E402

CONFUSION_FIGURE = "confusion_last_epoch.png"
HEALTH_FIGURE = "training_health.png"
HEALTH_PANELS = {
    "loss": "DINO loss (nats)",
    "teacher_entropy": "teacher entropy (nats; max ln K)",
    "teacher_kl": "KL(teacher || student) (nats)",
    "teacher_mutual_info": "teacher mutual information (nats; 0 = collapsed)",
    "cls_relative_std": "CLS std across crops / RMS (log)",
    "cls_effective_rank": "CLS effective rank",
}


def metric_vs_epoch_file(metric: str) -> str:
    return f"{metric}_vs_epoch.png"


def png_bytes(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def whole_epoch_ticks(ax: plt.Axes) -> None:
    """Only whole epochs exist: no tick at 0.5 (min_n_ticks=1 keeps that true when a single
    epoch is drawn)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def metric_vs_epoch_figure(
    runs: pd.DataFrame, metric: str, baselines: pd.DataFrame | None = None
) -> plt.Figure:
    """One panel per architecture, one line per channel; epoch 0 (pretrained or random init)
    drawn as a star; each baseline a dashed horizontal line in every panel."""
    archs = sorted(runs["arch"].unique())
    fig, axes = plt.subplots(
        1, len(archs), figsize=(5 * len(archs), 3.8), sharey=True, squeeze=False
    )
    for ax, arch in zip(axes[0], archs):
        for channel, group in runs[runs["arch"] == arch].groupby("channel", sort=True):
            group = group.dropna(subset=[metric]).sort_values("epoch")
            (line,) = ax.plot(
                group["epoch"], group[metric], marker="o", markersize=3, label=channel
            )
            pretrained = group[group["epoch"] == 0]
            ax.plot(
                pretrained["epoch"],
                pretrained[metric],
                marker="*",
                markersize=13,
                color=line.get_color(),
                linestyle="none",
            )
        draw_baselines(ax, baselines, metric)
        ax.set_title(arch + weak_label_note(runs, arch), fontsize=9)
        ax.set_xlabel(f"epoch (0 = {epoch0_name(runs, arch)})")
        whole_epoch_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(METRICS[metric])
    fig.suptitle(f"{METRICS[metric]} vs fine-tuning epoch")
    return fig


def weak_label_note(runs: pd.DataFrame, arch: str) -> str:
    """The architecture's weak label for its panel title, when it trained with one (one line:
    a second would run into the figure's title)."""
    if "weak_label" not in runs:
        return ""
    labels = set(runs.loc[runs["arch"] == arch, "weak_label"]) - {"none", "–"}
    return "".join(f" (weak label = {label})" for label in sorted(labels))


def draw_baselines(ax: plt.Axes, baselines: pd.DataFrame | None, metric: str) -> None:
    if baselines is None:
        return
    for i, (_, row) in enumerate(baselines.dropna(subset=[metric]).iterrows()):
        ax.axhline(
            row[metric],
            color=f"C{7 + i % 3}",
            linestyle="--",
            linewidth=1.2,
            label=f"{row['arch']} (baseline)",
        )


def confusion_figure(confusion: pd.DataFrame, title: str) -> plt.Figure:
    counts = confusion.to_numpy()
    size = 2.5 + 0.55 * len(confusion)
    # constrained: the long rotated MoA names fit inside the figure itself (without it they
    # hang below its edge, and only a tight-cropped savefig keeps them)
    fig, ax = plt.subplots(figsize=(size + 1.5, size + 1.5), layout="constrained")
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(
        range(counts.shape[1]),
        confusion.columns,
        rotation=60,
        ha="right",
        rotation_mode="anchor",
        fontsize=8,
    )
    ax.set_yticks(range(counts.shape[0]), confusion.index, fontsize=8)
    for (i, j), value in np.ndenumerate(counts):
        if value:
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > counts.max() / 2 else "black",
            )
    ax.set_xlabel("MoA of the nearest neighbour")
    ax.set_ylabel("MoA of the query treatment")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def training_health_figure(health: pd.DataFrame) -> plt.Figure:
    """One panel per statistic; one line per (arch, channel); collapsed epochs marked x."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False, layout="constrained")
    for ax, (key, title) in zip(axes.flat, HEALTH_PANELS.items()):
        for (arch, channel), group in health.groupby(["arch", "channel"], sort=True):
            group = group.dropna(subset=[key])
            (line,) = ax.plot(
                group["epoch"],
                group[key],
                marker="o",
                markersize=3,
                label=f"{arch.split('.')[0]}/{channel}",
            )
            collapsed = group[group["collapse"].notna()]
            ax.plot(
                collapsed["epoch"],
                collapsed[key],
                marker="x",
                markersize=9,
                color=line.get_color(),
                linestyle="none",
            )
        if key == "cls_relative_std" and (health[key] > 0).any():
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        whole_epoch_ticks(ax)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Training health per epoch (x = collapsed teacher)")
    return fig
