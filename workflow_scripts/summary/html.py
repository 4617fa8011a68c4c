"""The self-contained HTML report: the headline table first (with intervals and paired tests),
the runs against the baselines, what the metrics and their error bars mean, the dataset, what
each evaluation did, the oracle table, the figures (inlined) and every run."""

from __future__ import annotations

import base64
from html import escape

import pandas as pd

from workflow_scripts.summary.bootstrap import Settings
from workflow_scripts.summary.comparisons import LAST_VS_BASELINE
from workflow_scripts.summary.headline import SEED_MEAN
from workflow_scripts.summary.runs import INDEX_NAMES, METRICS, seed_text

TITLE = "BBBC021 x DINOv3: MoA retrieval summary"
HEADLINE = "Last epoch (pre-declared) vs epoch 0 (before fine-tuning)"
ORACLE = "oracle: selected on the evaluation metric itself (optimistic)"
SEED_LEVEL = INDEX_NAMES.index("seed")  # of a headline row's label
# a metric without a value (a baseline has no epoch 0; NSCB without a cross-batch candidate;
# mAP off)
NOT_AVAILABLE = "n/a"

METRICS_EXPLAINED = """
<p>Each run embeds every image (median over fixed crops), whitens the embeddings with the
DMSO controls (TVN), averages them into one profile per treatment (compound + concentration) and
asks whether a treatment's most similar profile (cosine) has the same mechanism of action (MoA).</p>
<ul>
<li><b>NSC</b> (not-same-compound): 1-nearest-neighbour MoA accuracy when treatments of the query's
own compound are excluded.</li>
<li><b>NSCB</b> (not-same-compound-or-batch): also excludes treatments that share a batch with the
query, and drops MoAs found in a single batch. The stricter number: batch effects cannot help.
It is n/a when no treatment has a candidate in another batch (every treatment in every batch).</li>
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


def error_bars_explained(settings: Settings) -> str:
    level = f"{settings.confidence:.0%}"
    return f"""
<h2>Error bars and tests</h2>
<p>With about 100 query treatments one treatment moves NSC by about 1 point, and treatments of one
compound tend to be right or wrong together. <b>[low, high]</b> is a {level} compound-bootstrap
interval: the compounds among the queries are resampled with replacement
({settings.resamples} resamples, seed {settings.seed}), each resample's metric is the mean of the
per-query outcomes (nearest-neighbour hit, or average precision) of the drawn compounds'
treatments, computed once on the full table (neighbours are not searched again), and the interval
is the {level} percentile range of the resampled values. It says how much the number depends on
which compounds happen to be the benchmark's queries.</p>
<p><b>last &minus; epoch 0</b> and the comparisons with the baselines are paired on the same
treatments: <b>+a &minus;b</b> counts the treatments whose outcome improved / worsened (NSC, NSCB:
gained / lost a correct nearest neighbour; mAP: higher / lower AP). p is the exact McNemar test of
those counts for NSC and NSCB, and a paired compound bootstrap for mAP (the bootstrap
distribution of the difference, centred on it); the interval under a difference is its paired
compound bootstrap interval. p-values are per comparison, not adjusted for the number of
comparisons, and none of this covers the variation between training runs: that is what
<code>train.seeds</code> measures (rows &ldquo;mean&rdquo; of the headline).</p>
"""


def image_html(name: str, image: bytes) -> str:
    """The figure (PNG, or JPEG by its name) inlined as a data URI: the report opens anywhere,
    fetching nothing."""
    data = base64.b64encode(image).decode("ascii")
    mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
    return f'<img alt="{escape(name)}" src="data:{mime};base64,{data}">'


def runs_table_html(df: pd.DataFrame) -> str:
    return df.to_html(
        index=False, float_format=lambda v: f"{v:.3f}", na_rep=NOT_AVAILABLE, border=0
    )


def evaluation_html(runs: pd.DataFrame) -> str:
    """Per run: DMSO rows, features used / dropped, normalisation, TVN components kept of those
    the DMSO set could support."""
    columns = [
        "arch",
        "channel",
        "seed",
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
        "constant in DMSO), normalisation against DMSO, and TVN components kept of the number "
        "the DMSO set could support.</p>" + table
    )


def validation_html(report: dict) -> str:
    """Scalars (and lists of scalars; `none` for an empty list) as one key/value table; each
    nested mapping and each list of records (the rows prepare left out) as its own table,
    folded away (per-plate counts are long)."""

    def records(value: object) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    scalars = {
        key: (", ".join(map(str, value)) or "none") if isinstance(value, list) else value
        for key, value in report.items()
        if not isinstance(value, dict) and not records(value)
    }
    parts = [key_value_table(scalars)]
    for key, value in report.items():
        if records(value):
            table = pd.DataFrame(value).to_html(index=False, border=0)
            summary = f"{key} ({sum(int(v.get('rows', 1)) for v in value)} rows)"
            parts.append(f"<details><summary>{escape(summary)}</summary>{table}</details>")
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


def number(value: object) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:.3f}"


def signed(value: object) -> str:
    return NOT_AVAILABLE if pd.isna(value) else f"{value:+.3f}".replace("-", "&minus;")


def interval(low: object, high: object) -> str:
    """[low, high] on a line of its own, two decimals (at ~100 queries the third is noise)."""
    if pd.isna(low) or pd.isna(high):
        return ""
    text = f"[{low:.2f}, {high:.2f}]".replace("-", "&minus;")
    return f'<br><span class="ci">{text}</span>'


def safe_index(frame: pd.DataFrame) -> pd.DataFrame:
    """Index labels escaped (to_html(escape=False) writes them as they are); long model names
    may break after _ and . (<wbr>), so the table fits the page."""
    frame = frame.copy()
    levels = [
        [
            escape(str(v)).replace("_", "_<wbr>").replace(".", ".<wbr>")
            if i == 0
            else escape(str(v))
            for v in frame.index.get_level_values(i)
        ]
        for i in range(frame.index.nlevels)
    ]
    frame.index = pd.MultiIndex.from_arrays(levels, names=frame.index.names)
    return frame


def p_text(p: object) -> str:
    if pd.isna(p):
        return ""
    return "p &lt; 0.001" if p < 0.001 else f"p = {p:.2g}" if p < 0.1 else f"p = {p:.2f}"


def test_text(improved: object, worsened: object, p: object) -> str:
    """+a −b, p (bold below 0.05)."""
    if pd.isna(p):
        return ""
    text = f"+{int(improved)} &minus;{int(worsened)}, {p_text(p)}"
    return f'<br><span class="test{" significant" if p < 0.05 else ""}">{text}</span>'


def value_cell(cells: pd.Series, field: str, change: bool = False) -> str:
    """One headline cell: value [interval] (a training series or a baseline) or mean ± sd (over
    seeds); a change adds the paired test."""
    show = signed if change else number
    value = cells[field]
    if pd.isna(value):
        return NOT_AVAILABLE
    if not pd.isna(cells[f"{field} sd"]):  # a row over seeds: mean, then ± sd
        return (
            f'<i>{show(value)}</i><br><span class="ci">&plusmn; {cells[f"{field} sd"]:.3f}</span>'
        )
    if str(cells.name[SEED_LEVEL]).startswith(SEED_MEAN):  # over seeds, one evaluation: no sd
        return f"<i>{show(value)}</i>"
    text = show(value) + interval(cells[f"{field} low"], cells[f"{field} high"])
    if change:
        text += test_text(cells["improved"], cells["worsened"], cells["p"])
    return text


def headline_html(frame: pd.DataFrame) -> str:
    """The numbers of headline.headline_pivot as three cells per metric."""
    if frame.empty:
        return "<p>No runs.</p>"
    columns = {}
    for name in METRICS.values():
        if name not in frame.columns.get_level_values(0):
            continue
        block = frame[name]
        columns[(name, "epoch 0")] = [value_cell(r, "epoch 0") for _, r in block.iterrows()]
        columns[(name, "last")] = [value_cell(r, "last") for _, r in block.iterrows()]
        columns[(name, "last − epoch 0")] = [
            value_cell(r, "change", change=True) for _, r in block.iterrows()
        ]
    shown = pd.DataFrame(columns, index=frame.index)
    shown.columns = pd.MultiIndex.from_tuples(shown.columns)
    return safe_index(shown).to_html(escape=False, border=0, classes="headline")


def baseline_comparisons_html(comparisons: pd.DataFrame) -> str:
    """Each training series' last epoch against each baseline: per metric the difference (run
    minus baseline) with its interval and paired test."""
    own = comparisons[comparisons["comparison"] == LAST_VS_BASELINE]
    if own.empty:
        return ""
    rows: dict[tuple, dict] = {}
    for _, row in own.iterrows():
        key = (
            row["arch"],
            row["channel"],
            seed_text(row["seed"]),
            int(row["epoch"]),
            row["run_b"].split("/")[0],
        )
        cells = rows.setdefault(key, {name: NOT_AVAILABLE for name in METRICS.values()})
        if not row["n_paired"]:
            cells[METRICS[row["metric"]]] = "no common treatment"
            continue
        cells[METRICS[row["metric"]]] = (
            signed(row["difference"])
            + interval(row["difference_ci_low"], row["difference_ci_high"])
            + test_text(row["improved"], row["worsened"], row["p_value"])
            + f'<br><span class="ci">{int(row["n_paired"])} paired</span>'
        )
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(
        frame.index, names=["model", "channel", "seed", "epoch", "baseline"]
    )
    return (
        "<h2>Last epoch vs the baselines (paired)</h2><p>Run minus baseline on the treatments "
        "both scored, with the paired interval, the treatments that improved / worsened and p "
        "(explained below).</p>" + safe_index(frame).to_html(escape=False, border=0)
    )


def pivot_html(frame: pd.DataFrame) -> str:
    def epoch(value: object) -> str:
        return NOT_AVAILABLE if pd.isna(value) else f"{int(value)}"

    formatters = {c: epoch if c[1] == "best epoch" else number for c in frame.columns}
    return frame.to_html(formatters=formatters, border=0, na_rep=NOT_AVAILABLE)


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
    for (arch, channel, seed), group in health.groupby(
        ["arch", "channel", "seed"], sort=True, dropna=False
    ):
        last = group.sort_values("epoch").iloc[-1]
        collapsed = group[group["collapse"].notna()]
        rows.append(
            {
                "arch": arch,
                "channel": channel,
                "seed": seed_text(seed),
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
and at the last epoch of the first training seed (<code>train.seed</code>); each panel's title
holds that epoch's NSC and NSCB. Colour: MoA. Marker:
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
fine-tuning; the last epoch is that of the first training seed (<code>train.seed</code>).</p>
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
    comparisons: pd.DataFrame | None = None,
    settings: Settings | None = None,
    embedding_section: str = "",
    attention_section: str = "",
    circular: list[str] | None = None,
) -> str:
    """The page. `runs`: the model runs; `every_run`: them and the baselines (the last table);
    `headline` / `oracle`: the pivots of headline.headline_pivot / runs.oracle_pivot;
    `epoch_plots`: {file name: png}; `confusion`: (caption, file name, png) or None;
    `comparisons`: comparisons.comparisons_table; `settings`: the bootstrap's."""
    settings = settings or Settings()
    table = runs_table_html(
        every_run.drop(columns=["run_dir", "label", "first_seed"], errors="ignore")
    )
    scales = pixel_scales_html(pixel_scales or {})
    plots = "\n".join(image_html(name, png) for name, png in epoch_plots.items())
    several_seeds = runs["seed"].nunique() > 1 if "seed" in runs else False
    confusion_section = ""
    if confusion is not None:
        caption, name, png = confusion
        confusion_section = (
            f"<h2>MoA confusion at the last epoch</h2><p>{escape(caption)}</p>"
            f"{image_html(name, png)}"
        )
    versus = baseline_comparisons_html(comparisons) if comparisons is not None else ""
    seeds_note = (
        " Rows <i>mean (n)</i> summarise the n training seeds above them: the mean, and under it "
        "&plusmn; the sd over seeds (ddof 1; none where every seed shares one evaluation, as "
        "epoch 0 with pretrained weights)."
        if several_seeds
        else ""
    )
    level = f"{settings.confidence:.0%}"
    # the headline first: it is what a reader opens the report for; the rest explains it
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: right; }}
th {{ background: #f4f4f4; }}
tbody th {{ white-space: nowrap; }}
td {{ vertical-align: top; }}
.ci, .test {{ color: #555; font-size: 0.85em; white-space: nowrap; }}
.significant {{ color: #000; font-weight: bold; }}
table.headline {{ font-size: 0.8em; }}
table.headline th, table.headline td {{ padding: 3px 4px; }}
img {{ max-width: 100%; margin: 0.5em 0; }}
</style></head><body>
<h1>{TITLE}</h1>
<h2>{HEADLINE}</h2>
<p>Rows: architecture &times; channel &times; training seed (and each baseline); a baseline has
no epochs, its value stands under <i>last</i>. <i>weak label</i>: the training's
<code>train.weak_label</code> (WS-DINO's weak-label multi-crop; none = plain DINO). Under each
value its {level} compound-bootstrap interval; under each change the paired interval, the
treatments that improved / worsened and the p-value of the paired test (bold below
0.05).{seeds_note} How these are computed: <a href="#error-bars">error bars and tests</a>.</p>
{circular_html(circular or [])}{headline_html(headline)}{scales}
{versus}
<h2>Metrics</h2>{METRICS_EXPLAINED}
<div id="error-bars">{error_bars_explained(settings)}</div>
<h2>Dataset</h2>{validation_html(validation)}
{evaluation_html(runs)}
<h2>Best epoch per architecture, channel and metric ({ORACLE})</h2>
<p>Each value below is the maximum over all evaluated epochs, chosen on the same treatments it
is scored on; it overstates what that epoch would score on new compounds.</p>{pivot_html(oracle)}
<h2>Metrics vs epoch</h2>
<p>One panel per architecture and channel, one line per training seed; bands: the {level}
compound-bootstrap interval of each evaluation; &#9733; epoch 0; dashed: baselines.</p>{plots}
{confusion_section}
{embedding_section}
{attention_section}
{health_section}
<h2>All runs</h2>
<details><summary>{len(every_run)} runs (also in summary.csv)</summary>{table}</details>
</body></html>
"""
