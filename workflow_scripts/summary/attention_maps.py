"""Attention maps in the report: the teacher's last-block CLS-to-patch attention (written by
`workflow_scripts.evaluate.attention`) overlaid on the example fields, at epoch 0 and the last
epoch, as WS-DINO's `visualize_attention.py` shows them.

Each map is drawn at the field's pixel grid (one patch = one block of patch x patch pixels),
scaled between its own minimum and maximum (as WS-DINO's per-head images), as a heat map whose
opacity grows with the attention, so that the field shows through where the CLS token does not
look; the white line encloses the patches that
hold half of the map's attention (WS-DINO's `--threshold 50`). The field itself: the cached
intensities stretched between their 0.5 and 99.5 % quantiles (rgb: the cache's channels as red,
green, blue, the order the model sees them in). The figures are JPEG: fluorescence fields
compress badly as PNG (a report of 8 architecture-channel pairs would weigh tens of MB).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workflow_scripts.errors import InputError  # noqa: E402

HEAT = plt.get_cmap("inferno")
MAX_OPACITY = 0.65
MASS_SHOWN = 0.5  # WS-DINO's --threshold 50: the patches that hold half of the attention
PANEL_INCHES = 2.8
JPEG_QUALITY = 80
DPI = 90


def mean_file(arch: str, channel: str) -> str:
    return f"attention_{arch}_{channel}.jpg"


def heads_file(arch: str, channel: str, epoch: int) -> str:
    return f"attention_heads_{arch}_{channel}_epoch_{epoch:04d}.jpg"


def jpeg_bytes(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(
        buffer,
        format="jpeg",
        dpi=DPI,
        bbox_inches="tight",
        pil_kwargs={"quality": JPEG_QUALITY},
    )
    plt.close(fig)
    return buffer.getvalue()


def read_attention(path: Path) -> dict:
    """The .npz of evaluate/attention.py as {fields, attention, epochs, info}."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            maps = {key: saved[key] for key in ("fields", "attention", "epochs", "info")}
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: not an attention-map file ({err})") from err
    maps["info"] = json.loads(str(maps["info"]))
    return maps


def display_field(field: np.ndarray) -> np.ndarray:
    """(C, H, W) uint16 -> (H, W) grey or (H, W, 3) RGB in [0, 1], each channel stretched
    between its 0.5 and 99.5 % quantiles."""
    stretched = []
    for channel in field.astype(np.float32):
        low, high = np.quantile(channel, [0.005, 0.995])
        stretched.append(np.clip((channel - low) / max(high - low, 1e-6), 0, 1))
    return stretched[0] if len(stretched) == 1 else np.stack(stretched, axis=-1)


def half_mass_mask(attention: np.ndarray) -> np.ndarray:
    """Boolean (grid) mask of the largest patches that together hold MASS_SHOWN of the map."""
    flat = attention.ravel()
    order = np.argsort(flat)[::-1]
    cumulative = np.cumsum(flat[order]) / max(flat.sum(), 1e-12)
    keep = np.zeros(flat.shape, dtype=bool)
    keep[order[: int(np.searchsorted(cumulative, MASS_SHOWN)) + 1]] = True
    return keep.reshape(attention.shape)


def overlay(ax: plt.Axes, field: np.ndarray, attention: np.ndarray | None) -> None:
    """The field, and the (grid) attention map over it at the field's pixel extent."""
    height, width = field.shape[-2:]
    extent = (0, width, height, 0)
    shown = display_field(field)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, extent=extent, vmin=0, vmax=1)
    if attention is not None:
        low, high = float(attention.min()), float(attention.max())
        scaled = (attention - low) / max(high - low, 1e-12)
        rgba = HEAT(scaled)
        rgba[..., 3] = MAX_OPACITY * scaled
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        mask = half_mass_mask(attention).astype(float)
        grid_h, grid_w = attention.shape
        # contour on patch edges: upsample the mask to pixels, a level between 0 and 1
        pixels = np.kron(mask, np.ones((height // grid_h, width // grid_w)))
        ax.contour(pixels, levels=[0.5], colors="white", linewidths=0.7, extent=extent)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def field_label(field: dict) -> str:
    if field.get("is_control"):
        return f"DMSO\n{field['image_id']}"
    return f"{field['moa']}\n{field['compound']} @ {field['concentration']:g}\n{field['image_id']}"


def epoch_title(epoch: int, epoch0_name: str) -> str:
    return f"epoch 0 ({epoch0_name})" if epoch == 0 else f"epoch {epoch}"


def mean_figure(maps: dict, epoch0_name: str) -> plt.Figure:
    """Rows = fields; columns = the field, then each epoch's head-averaged map over it."""
    fields, attention, epochs, info = (maps[k] for k in ("fields", "attention", "epochs", "info"))
    ratio = fields.shape[-2] / fields.shape[-1]
    columns = 1 + len(epochs)
    fig, axes = plt.subplots(
        len(fields),
        columns,
        figsize=(PANEL_INCHES * columns + 1.6, PANEL_INCHES * ratio * len(fields) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for row, field in enumerate(fields):
        overlay(axes[row][0], field, None)
        axes[row][0].set_ylabel(
            field_label(info["fields"][row]), fontsize=8, rotation=0, ha="right", va="center"
        )
        for column in range(1, len(epochs) + 1):
            overlay(axes[row][column], field, attention[column - 1, row].mean(axis=0))
    axes[0][0].set_title("field", fontsize=9)
    for column, epoch in enumerate(epochs, start=1):
        axes[0][column].set_title(
            f"{epoch_title(int(epoch), epoch0_name)}\nmean of {attention.shape[2]} heads",
            fontsize=9,
        )
    fig.suptitle(
        f"{info['arch']} / {info['channel']}: last-block CLS attention (teacher)", fontsize=10
    )
    return fig


def heads_figure(maps: dict, epoch_index: int, epoch0_name: str) -> plt.Figure:
    """Rows = fields; columns = the heads of one epoch."""
    fields, attention, epochs, info = (maps[k] for k in ("fields", "attention", "epochs", "info"))
    heads = attention.shape[2]
    ratio = fields.shape[-2] / fields.shape[-1]
    size = max(1.0, min(PANEL_INCHES, 16 / heads))
    fig, axes = plt.subplots(
        len(fields),
        heads,
        figsize=(size * heads + 1.6, size * ratio * len(fields) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for row, field in enumerate(fields):
        for head in range(heads):
            overlay(axes[row][head], field, attention[epoch_index, row, head])
        axes[row][0].set_ylabel(
            field_label(info["fields"][row]), fontsize=6, rotation=0, ha="right", va="center"
        )
    for head in range(heads):
        axes[0][head].set_title(f"head {head}", fontsize=8)
    epoch = int(epochs[epoch_index])
    fig.suptitle(
        f"{info['arch']} / {info['channel']}, {epoch_title(epoch, epoch0_name)}: "
        "CLS attention per head",
        fontsize=10,
    )
    return fig
