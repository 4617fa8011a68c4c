"""The self-contained HTML report: the headline table first, then what the metrics mean, the
dataset, what each evaluation did, the oracle table, the figures (inlined) and every run."""

from __future__ import annotations

import base64
from html import escape

import pandas as pd

TITLE = "BBBC021 x DINOv3: MoA retrieval summary"
HEADLINE = "Last epoch (pre-declared) vs epoch 0 (before fine-tuning)"
ORACLE = "oracle: selected on the evaluation metric itself (optimistic)"

METRICS_EXPLAINED = """
<p>Each run embeds every image (median over fixed crops), whitens the embeddings with the
DMSO controls (TVN), averages them into one profile per treatment (compound + concentration) and
asks whether a treatment's most similar profile (cosine) has the same mechanism of action (MoA).</p>
<ul>
<li><b>NSC</b> (not-same-compound): 1-nearest-neighbour MoA accuracy when treatments of the query's
own compound are excluded.</li>
<li><b>NSCB</b> (not-same-compound-or-batch): also excludes treatments that share a batch with the
query, and drops MoAs found in a single batch. The stricter number: batch effects cannot help.</li>
<li><b>mAP</b>: mean average precision of ranking all candidates (same exclusions) by similarity,
positives = same MoA; uses the whole ranking, not only the nearest neighbour.</li>
</ul>
<p>Epoch 0 is the backbone before fine-tuning (marked &#9733; in the plots): pretrained weights,
or a <b>random init</b> where the architecture's <code>weights</code> is <code>none</code>.
Baselines (external profile tables scored the same way) are dashed lines and rows of their own.</p>
<p>BBBC021 has no held-out treatments on which to choose an epoch, so the headline compares the
<b>last epoch</b>, fixed in advance by <code>train.epochs</code>, with epoch 0. A &ldquo;best
epoch&rdquo; chosen by NSC or NSCB is chosen on the very treatments it is scored on: its value is
an optimistic upper bound, reported separately and marked <i>oracle</i>.</p>
"""


def image_html(name: str, image: bytes) -> str:
    """The figure (PNG, or JPEG by its name) inlined as a data URI: the report opens anywhere,
    fetching nothing."""
    data = base64.b64encode(image).decode("ascii")
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return f'<img alt="{escape(name)}" src="data:{mime};base64,{data}">'


def runs_table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0)


def evaluation_html(runs: pd.DataFrame) -> str:
    """Per run: DMSO rows, features used / dropped, normalisation, TVN components kept of those
    the DMSO set could support."""
    columns = [
        "arch",
        "channel",
        "epoch",
        "n_dmso",
        "feature_dim",
        "features_used",
        "features_dropped",
        "normalization",
        "tvn_components",
        "tvn_possible",
    ]
    shown = runs[[c for c in columns if c in runs.columns]]
    table = shown.to_html(index=False, na_rep="–", border=0)
    return (
        "<h2>What each evaluation did</h2><p>DMSO rows, features used and dropped (non-finite or "
        "constant in DMSO), per-plate normalisation, and TVN components kept of the number the "
        "DMSO set could support.</p>" + table
    )


def validation_html(report: dict) -> str:
    """Scalars (and lists of scalars) as one key/value table; each nested mapping as its own
    table, folded away (per-plate counts are long)."""
    scalars = {
        key: ", ".join(map(str, value)) if isinstance(value, list) else value
        for key, value in report.items()
        if not isinstance(value, dict)
    }
    parts = [key_value_table(scalars)]
    for key, value in report.items():
        if isinstance(value, dict):
            if all(isinstance(v, dict) for v in value.values()):
                table = pd.DataFrame.from_dict(value, orient="index").to_html(border=0)
            else:
                table = key_value_table(value)
            parts.append(f"<details><summary>{escape(key)}</summary>{table}</details>")
    return "\n".join(parts)


def key_value_table(mapping: dict) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in mapping.items()
    )
    return f"<table>{rows}</table>"


def pivot_html(frame: pd.DataFrame) -> str:
    def number(value: object) -> str:
        return "–" if pd.isna(value) else f"{value:.3f}"

    def epoch(value: object) -> str:
        return "–" if pd.isna(value) else f"{int(value)}"

    formatters = {c: epoch if c[1] == "best epoch" else number for c in frame.columns}
    return frame.to_html(formatters=formatters, border=0, na_rep="–")


def pixel_scales_html(scales: dict[str, str]) -> str:
    if not scales:
        return ""
    items = "".join(
        f"<li><b>{escape(arch)}</b>: {escape(text)}</li>" for arch, text in scales.items()
    )
    return (
        "<p>At what scale the model sees cells (raw-field pixels per model pixel; training and "
        "evaluation crops far apart means evaluated cells look larger or smaller than trained "
        f"ones):</p><ul>{items}</ul>"
    )


def training_health_html(health: pd.DataFrame, figure: str) -> str:
    """Report section: per (arch, channel) the last epoch's health and any collapsed epochs."""
    rows = []
    for (arch, channel), group in health.groupby(["arch", "channel"], sort=True):
        last = group.sort_values("epoch").iloc[-1]
        collapsed = group[group["collapse"].notna()]
        rows.append(
            {
                "arch": arch,
                "channel": channel,
                "last_epoch": int(last["epoch"]),
                "teacher_entropy": last["teacher_entropy"],
                "teacher_kl": last["teacher_kl"],
                "teacher_mutual_info": last["teacher_mutual_info"],
                "cls_relative_std": last["cls_relative_std"],
                "cls_effective_rank": last["cls_effective_rank"],
                "collapsed_epochs": ", ".join(
                    f"{e} ({k})" for e, k in zip(collapsed["epoch"], collapsed["collapse"])
                )
                or "none",
            }
        )
    table = pd.DataFrame(rows).to_html(
        index=False, na_rep="–", border=0, float_format=lambda v: f"{v:.3g}"
    )
    warning = ""
    if health["collapse"].notna().any():
        warning = (
            "<p><b>Warning: some runs look collapsed</b> (the teacher's distribution is "
            "the same for every crop); their later epochs cannot be expected to beat "
            "epoch 0.</p>"
        )
    return f"""<h2>Training health</h2>
<p>DINO can collapse silently: the teacher's output stops depending on the image (uniform or
one-hot), the loss settles at H(teacher) and KL(teacher&#8214;student) goes to 0. The mutual
information between crop and teacher prototype is 0 for a collapsed teacher; the CLS spread and
effective rank show whether the backbone's embedding still varies across images.</p>
{warning}{table}{figure}"""


def embedding_html(figures: dict[str, bytes], points: pd.DataFrame) -> str:
    """Report section: the t-SNE maps (embedding_maps.py), one figure per (arch, channel)."""
    if not figures:
        return ""
    perplexities = ", ".join(f"{p:g}" for p in sorted(points["perplexity"].unique()))
    images = "\n".join(image_html(name, png) for name, png in figures.items())
    return f"""<h2>Embedding maps (t-SNE of the treatment profiles)</h2>
<p>One point per treatment: the profiles NSC and NSCB score (after the evaluation's normalisation,
TVN and aggregation; the treatments of predictions.csv), L2-normalised, mapped to 2-D by
scikit-learn's t-SNE (perplexity {escape(perplexities)}, PCA initialisation, exact gradients,
seed 0) at epoch 0
and at the last epoch; each panel's title holds that epoch's NSC and NSCB. Colour: MoA. Marker:
the week holding most of the treatment's plates. t-SNE keeps neighbourhoods, not distances
between clusters. The coordinates are in <code>figures/embedding_map_*.csv</code>.</p>
{images}"""


def attention_html(figures: list[tuple[str, str, dict[str, bytes]]]) -> str:
    """Report section: per (arch, channel) the head-averaged maps, the per-head maps folded."""
    if not figures:
        return ""
    parts = []
    for arch, channel, drawn in figures:
        (mean_name, mean_png), *heads = drawn.items()
        folded = "\n".join(image_html(name, png) for name, png in heads)
        parts.append(
            f"<h3>{escape(arch)} / {escape(channel)}</h3>{image_html(mean_name, mean_png)}"
            f"<details><summary>per head</summary>{folded}</details>"
        )
    return f"""<h2>Attention maps (ViTs)</h2>
<p>Where the teacher's CLS token looks: the last block's attention from the CLS token to the
patch tokens (register tokens left out), on one treated field per MoA (its compound first by
name, at that compound's highest concentration, the first such field by batch, plate, well and
site) and the first DMSO field, each at the cache's resolution (the scale of the evaluation
windows). Each map is scaled between its own minimum and maximum; opacity grows with
attention; the white line encloses the patches that hold half of it (as WS-DINO's
<code>visualize_attention.py</code> thresholds at 50 %). Epoch 0 is the backbone before
fine-tuning.</p>
{"".join(parts)}"""


def circular_html(circular: list[str]) -> str:
    if not circular:
        return ""
    return (
        "<p><b>weak label = MoA (circular)</b>: "
        + ", ".join(f"<code>{escape(run)}</code>" for run in circular)
        + " trained with the MoA labels that NSC / NSCB retrieve (train.weak_label: moa); "
        "their scores are not an unsupervised measure and cannot be compared with the "
        "other runs'.</p>"
    )


def report_html(
    runs: pd.DataFrame,
    every_run: pd.DataFrame,
    headline: pd.DataFrame,
    oracle: pd.DataFrame,
    epoch_plots: dict[str, bytes],
    confusion: tuple[str, str, bytes] | None,
    validation: dict,
    pixel_scales: dict[str, str] | None = None,
    health_section: str = "",
    embedding_section: str = "",
    attention_section: str = "",
    circular: list[str] | None = None,
) -> str:
    """The page. `runs`: the model runs; `every_run`: them and the baselines (the last table);
    `headline` / `oracle`: the pivots of runs.headline_pivot / runs.oracle_pivot;
    `epoch_plots`: {file name: png}; `confusion`: (caption, file name, png) or None."""
    table = runs_table_html(every_run.drop(columns=["run_dir"]))
    scales = pixel_scales_html(pixel_scales or {})
    plots = "\n".join(image_html(name, png) for name, png in epoch_plots.items())
    confusion_section = ""
    if confusion is not None:
        caption, name, png = confusion
        confusion_section = (
            f"<h2>MoA confusion at the last epoch</h2><p>{escape(caption)}</p>"
            f"{image_html(name, png)}"
        )
    # the headline first: it is what a reader opens the report for; the rest explains it
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; margin: 0.5em 0; }}
</style></head><body>
<h1>{TITLE}</h1>
<h2>{HEADLINE}</h2>
<p>Rows: architecture &times; channel (and each baseline); a baseline has no epochs, its value
stands under <i>last</i>. <i>weak label</i>: the training's <code>train.weak_label</code> (WS-DINO's
weak-label multi-crop; none = plain DINO). The metrics are explained below.</p>
{circular_html(circular or [])}{pivot_html(headline)}{scales}
<h2>Metrics</h2>{METRICS_EXPLAINED}
<h2>Dataset</h2>{validation_html(validation)}
{evaluation_html(runs)}
<h2>Best epoch per architecture, channel and metric ({ORACLE})</h2>
<p>Each value below is the maximum over all evaluated epochs, chosen on the same treatments it
is scored on; it overstates what that epoch would score on new compounds.</p>{pivot_html(oracle)}
<h2>Metrics vs epoch</h2>{plots}
{confusion_section}
{embedding_section}
{attention_section}
{health_section}
<h2>All runs</h2>
<details><summary>{len(every_run)} runs (also in summary.csv)</summary>{table}</details>
</body></html>
"""
