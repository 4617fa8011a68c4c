"""The report's figures: each metric against the fine-tuning epoch (with the bootstrap interval
of every evaluation as a band), the MoA confusion matrix and training health. Each function
returns a matplotlib Figure; png_bytes renders and closes it."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from workflow_scripts.summary.runs import (  # noqa: E402
    METRICS,
    epoch0_name,
    pretrained_run,
    seed_text,
    training_series,
)

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


def series_points(runs: pd.DataFrame, arch: str, channel: str, seed, group: pd.DataFrame):
    """A series' evaluations to draw, its shared epoch 0 (pretrained weights) put in front."""
    if not (group["epoch"] == 0).any():
        pretrained = pretrained_run(runs, arch, channel, seed)
        if pretrained is not None:
            group = pd.concat([pretrained.to_frame().T, group])
    return group


def metric_vs_epoch_figure(
    runs: pd.DataFrame, metric: str, baselines: pd.DataFrame | None = None
) -> plt.Figure:
    """One panel per (architecture, channel), one line per training seed with its bootstrap
    interval as a band; epoch 0 (pretrained or random init) drawn as a star; each baseline a
    dashed horizontal line (its interval a faint band) in every panel."""
    archs = sorted(runs["arch"].unique())
    channels = sorted(runs["channel"].unique())
    fig, axes = plt.subplots(
        len(archs),
        len(channels),
        figsize=(3.4 * len(channels) + 0.6, 2.9 * len(archs) + 0.8),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    for (arch, channel, seed), group in training_series(runs):
        ax = axes[archs.index(arch)][channels.index(channel)]
        points = series_points(runs, arch, channel, seed, group).dropna(subset=[metric])
        epochs = points["epoch"].astype(int).to_numpy()
        colour = f"C{int(seed) % 7 if not pd.isna(seed) else 0}"
        ax.plot(
            epochs,
            points[metric].astype(float),
            marker="o",
            markersize=3,
            color=colour,
            label=f"seed {seed_text(seed)}",
        )
        if low in points:
            ax.fill_between(
                epochs,
                points[low].astype(float),
                points[high].astype(float),
                color=colour,
                alpha=0.15,
                linewidth=0,
            )
        pretrained = points[points["epoch"] == 0]
        ax.plot(
            pretrained["epoch"].astype(int),
            pretrained[metric].astype(float),
            marker="*",
            markersize=13,
            color=colour,
            linestyle="none",
        )
    for i, arch in enumerate(archs):
        for j, channel in enumerate(channels):
            ax = axes[i][j]
            draw_baselines(ax, baselines, metric)
            title = f"{arch}\n{channel}" if j == 0 else channel
            ax.set_title(title + weak_label_note(runs, arch, channel), fontsize=8, loc="left")
            ax.set_xlabel(f"epoch (0 = {epoch0_name(runs, arch)})", fontsize=8)
            whole_epoch_ticks(ax)
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel(METRICS[metric])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{METRICS[metric]} vs fine-tuning epoch (bands: bootstrap intervals)")
    return fig


def weak_label_note(runs: pd.DataFrame, arch: str, channel: str) -> str:
    """A further title line naming the panel's weak label, when its training used one."""
    if "weak_label" not in runs:
        return ""
    shown = (runs["arch"] == arch) & (runs["channel"] == channel)
    labels = set(runs.loc[shown, "weak_label"]) - {"none", "–"}
    return "".join(f"\nweak label = {label}" for label in sorted(labels))


def draw_baselines(ax: plt.Axes, baselines: pd.DataFrame | None, metric: str) -> None:
    if baselines is None:
        return
    for i, (_, row) in enumerate(baselines.dropna(subset=[metric]).iterrows()):
        colour = f"C{7 + i % 3}"
        ax.axhline(
            row[metric],
            color=colour,
            linestyle="--",
            linewidth=1.2,
            label=f"{row['arch']} (baseline)",
        )
        low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
        if low is not None and not pd.isna(low):
            ax.axhspan(float(low), float(high), color=colour, alpha=0.07, linewidth=0)


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
        several_seeds = health["seed"].nunique() > 1
        for (arch, channel, seed), group in health.groupby(
            ["arch", "channel", "seed"], sort=True, dropna=False
        ):
            group = group.dropna(subset=[key])
            label = f"{arch.split('.')[0]}/{channel}"
            (line,) = ax.plot(
                group["epoch"],
                group[key],
                marker="o",
                markersize=3,
                label=f"{label} seed {seed_text(seed)}" if several_seeds else label,
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
