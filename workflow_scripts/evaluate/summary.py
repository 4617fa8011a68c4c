r"""Summary of all evaluated runs: tables, metric-vs-epoch plots and a self-contained HTML report.

Reads the `metrics.json` of every (arch, channel, epoch) run (label `arch/channel/NNNN`), the
`confusion.csv` of one run (below), and the data validation report. Writes into `--out-dir`:
summary.csv (one row per run), best_epochs.csv (per arch, channel and metric: the epoch 0 and
last-epoch values, their difference, and the oracle best epoch and its value),
figures/ (`{metric}_vs_epoch.png`, confusion_last_epoch.png) and report.html (figures inlined;
open it in any browser).

External baselines (`--baseline-metrics`: metrics.json of other profile tables, e.g.
CellProfiler wells, scored by the same evaluation CLI and settings, label `name/baseline/0000`)
are rows of kind `baseline` in summary.csv, a dashed line in every plot and a row of the report's
tables. `--weights arch=none,...` (config `architectures[].weights`) names epoch 0 "random init"
where the weights are none, "pretrained" otherwise. `--pixel-scales` (JSON {arch: sentence})
states, per architecture, at what scale training and evaluation crops see cells.

BBBC021 has no held-out treatments to choose an epoch on: any epoch picked by its NSC/NSCB is
picked on the very treatments it is scored on, so its value is optimistic. The headline is
therefore the last epoch (fixed in advance by train.epochs) against epoch 0 (the backbone before
fine-tuning). The best epoch of a metric (its earliest maximum) is reported only as an oracle,
named so in column names and in the report. The confusion matrix is that of the last epoch of the
(arch, channel) whose last-epoch NSCB is highest (ties: first in summary order; NSC when no run
has an NSCB).

With `--train-logs` (the `train/{arch}/{channel}/log.jsonl` files) it also writes
training_health.csv (the per-epoch health statistics of workflow_scripts.train.health),
training_health.png, a `training_collapse` column in summary.csv (the collapse verdict of that
epoch; for `combined`, every collapsed channel) and a training-health section in the report.

    python -m workflow_scripts.evaluate.summary --metrics results/eval/*/*/*/metrics.json \
        --validation-report results/data/validation_report.json --out-dir results/summary \
        --train-logs results/train/*/*/log.jsonl
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.atomic import atomic_path, write_text  # noqa: E402
from workflow_scripts.errors import InputError, cli, json_object_option  # noqa: E402
from workflow_scripts.tables import read_json, read_table, write_table  # noqa: E402

METRICS = {"nsc": "NSC", "nscb": "NSCB", "map_nsc": "mAP (NSC)", "map_nscb": "mAP (NSCB)"}
CONFUSION_METRIC = "nscb"  # picks the (arch, channel) whose last epoch's confusion is drawn
CONFUSION_FIGURE = "confusion_last_epoch.png"
FIGURES_DIR = "figures"  # one folder, so that `snakemake --report` can collect whatever is drawn
ORACLE = "oracle: selected on the evaluation metric itself (optimistic)"
RUN_KEYS = ("arch", "channel", "epoch")
COUNT_KEYS = ("n_treatments_nsc", "n_treatments_nscb", "n_images", "feature_dim", "tvn_components")
# What the evaluation of each table did (absent from older metrics.json files: left empty).
EVALUATION_COLUMNS = (
    "n_dmso",
    "features_used",
    "features_dropped",
    "normalization",
    "tvn_possible",
)

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


def parse_label(label: object, path: Path) -> tuple[str, str, int]:
    parts = str(label).split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise InputError(f"{path}: key 'label' is {label!r}, expected 'arch/channel/NNNN'")
    return parts[0], parts[1], int(parts[2])


def read_runs(paths: list[Path]) -> pd.DataFrame:
    """One row per metrics.json: arch, channel, epoch, the metrics, counts, and its folder."""
    rows = []
    for path in paths:
        metrics = read_json(path, required=("label", *METRICS))
        arch, channel, epoch = parse_label(metrics["label"], path)
        rows.append(
            {
                "arch": arch,
                "channel": channel,
                "epoch": epoch,
                **{key: metrics[key] for key in METRICS},
                **{key: metrics.get(key) for key in COUNT_KEYS},
                **evaluation_columns(metrics),
                "run_dir": path.parent,
            }
        )
    runs = pd.DataFrame(rows)
    duplicated = runs.duplicated(list(RUN_KEYS))
    if duplicated.any():
        row = runs[duplicated].iloc[0]
        label = f"{row['arch']}/{row['channel']}/{row['epoch']:04d}"
        raise InputError(f"{row['run_dir']}: run {label} given twice")
    for key in METRICS:
        runs[key] = pd.to_numeric(runs[key]).astype(float)
    return runs.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def evaluation_columns(metrics: dict) -> dict:
    """n_dmso, features used and dropped (count), normalisation, TVN components possible."""
    dropped = metrics.get("features_dropped")
    tvn = metrics.get("tvn") or {}
    return {
        "n_dmso": metrics.get("n_dmso"),
        "features_used": metrics.get("features_used"),
        "features_dropped": None if dropped is None else sum(map(len, dropped.values())),
        "normalization": metrics.get("normalization"),
        "tvn_possible": tvn.get("possible"),
    }


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


def best_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, channel, metric): epoch 0 and last-epoch values and their difference (the
    headline), then the oracle best epoch (earliest maximum) and its value."""
    rows = []
    for (arch, channel), group in runs.groupby(["arch", "channel"], sort=True):
        group = group.sort_values("epoch")
        last = group.iloc[-1]
        pretrained = group[group["epoch"] == 0]
        for metric in METRICS:
            scored = group.dropna(subset=[metric])
            if scored.empty:
                continue
            best = scored.loc[scored[metric].idxmax()]
            pretrained_value = pretrained[metric].iloc[0] if len(pretrained) else np.nan
            rows.append(
                {
                    "arch": arch,
                    "channel": channel,
                    "metric": metric,
                    "pretrained_value": pretrained_value,
                    "last_epoch": int(last["epoch"]),
                    "last_value": last[metric],
                    "last_minus_pretrained": last[metric] - pretrained_value,
                    "oracle_best_epoch": int(best["epoch"]),
                    "oracle_best_value": best[metric],
                }
            )
    return pd.DataFrame(rows)


def confusion_run(runs: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """The last epoch of the (arch, channel) with the highest last-epoch NSCB (NSC when no
    last epoch has an NSCB), and the metric it was picked by; ties: first in summary order."""
    last_epochs = runs.groupby(["arch", "channel"], sort=False).tail(1)  # runs sorted by epoch
    for metric in (CONFUSION_METRIC, "nsc"):
        scored = last_epochs.dropna(subset=[metric])
        if not scored.empty:
            return scored.loc[scored[metric].idxmax()], metric
    return None


# ------------------------------------------------------------------ training health (issue 10)
HEALTH_FIGURE = "training_health.png"
HEALTH_PANELS = {
    "loss": "DINO loss (nats)",
    "teacher_entropy": "teacher entropy (nats; max ln K)",
    "teacher_kl": "KL(teacher || student) (nats)",
    "teacher_mutual_info": "teacher mutual information (nats; 0 = collapsed)",
    "cls_relative_std": "CLS std across crops / RMS (log)",
    "cls_effective_rank": "CLS effective rank",
}
HEALTH_COLUMNS = (
    "loss",
    "teacher_entropy",
    "teacher_batch_entropy",
    "teacher_mutual_info",
    "teacher_kl",
    "center_norm",
    "cls_std",
    "cls_relative_std",
    "cls_effective_rank",
    "collapse",
)


def read_training_logs(paths: list[Path]) -> pd.DataFrame:
    """One row per epoch line of each `train/{arch}/{channel}/log.jsonl`: arch, channel, epoch
    and the health columns (NaN / None where a log predates them)."""
    rows = []
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise InputError(f"{path}: cannot read training log ({err.strerror})") from err
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                epoch = int(entry["epoch"])
            except (ValueError, KeyError, TypeError) as err:
                raise InputError(
                    f"{path}: line {number} is not a training-log entry ({err})"
                ) from err
            rows.append(
                {
                    "arch": path.parent.parent.name,
                    "channel": path.parent.name,
                    "epoch": epoch,
                    **{key: entry.get(key) for key in HEALTH_COLUMNS},
                }
            )
    health = pd.DataFrame(rows, columns=["arch", "channel", "epoch", *HEALTH_COLUMNS])
    for key in HEALTH_COLUMNS:
        if key != "collapse":
            health[key] = pd.to_numeric(health[key]).astype(float)
    return health.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def add_collapse_flags(runs: pd.DataFrame, health: pd.DataFrame) -> pd.DataFrame:
    """summary.csv's `training_collapse`: the run's epoch verdict from the training log
    (epoch 0 and runs without a log: empty); `combined`: `channel:kind` of each collapsed one."""
    verdicts = {
        (row.arch, row.channel, row.epoch): row.collapse
        for row in health.itertuples()
        if isinstance(row.collapse, str)
    }
    channels_of = health.groupby("arch")["channel"].unique().to_dict()

    def flag(run) -> str:
        if run["channel"] == "combined":
            parts = [
                f"{ch}:{verdicts[(run['arch'], ch, run['epoch'])]}"
                for ch in channels_of.get(run["arch"], [])
                if (run["arch"], ch, run["epoch"]) in verdicts
            ]
            return " ".join(parts)
        return verdicts.get((run["arch"], run["channel"], run["epoch"]), "")

    runs = runs.copy()
    runs["training_collapse"] = [flag(run) for _, run in runs.iterrows()] if len(runs) else []
    return runs


def plot_training_health(health: pd.DataFrame) -> bytes:
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
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Training health per epoch (x = collapsed teacher)")
    return png_bytes(fig)


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


def png_bytes(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def plot_metric_vs_epoch(
    runs: pd.DataFrame, metric: str, baselines: pd.DataFrame | None = None
) -> bytes:
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
        ax.set_title(arch, fontsize=9)
        ax.set_xlabel(f"epoch (0 = {epoch0_name(runs, arch)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(METRICS[metric])
    fig.suptitle(f"{METRICS[metric]} vs fine-tuning epoch")
    return png_bytes(fig)


def plot_confusion(confusion: pd.DataFrame, title: str) -> bytes:
    counts = confusion.to_numpy()
    size = 2.5 + 0.55 * len(confusion)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(counts.shape[1]), confusion.columns, rotation=60, ha="right", fontsize=8)
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
    return png_bytes(fig)


def read_confusion(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "confusion.csv"
    table = read_table(path, required=["moa"])
    return table.set_index("moa")


def read_validation(path: Path) -> dict:
    return read_json(path)


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
            parts.append(f"<details><summary>{html.escape(key)}</summary>{table}</details>")
    return "\n".join(parts)


def key_value_table(mapping: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in mapping.items()
    )
    return f"<table>{rows}</table>"


def report_html(
    runs: pd.DataFrame,
    best: pd.DataFrame,
    figures: dict[str, bytes],
    confusion_caption: str | None,
    validation: dict,
    baselines: pd.DataFrame | None = None,
    pixel_scales: dict[str, str] | None = None,
    health_section: str = "",
) -> str:
    def image(name: str) -> str:
        data = base64.b64encode(figures[name]).decode("ascii")
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'

    def html_table(df: pd.DataFrame) -> str:
        return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0)

    every_run = runs if baselines is None or baselines.empty else pd.concat([runs, baselines])
    table = html_table(every_run.drop(columns=["run_dir"]))
    headline_table = pivot_html(headline_pivot(best, baselines))
    oracle_table = pivot_html(oracle_pivot(best))
    scales = pixel_scales_html(pixel_scales or {})
    plots = "\n".join(image(name) for name in figures if name.endswith("_vs_epoch.png"))
    confusion = (
        f"<h2>MoA confusion at the last epoch</h2><p>{html.escape(confusion_caption)}</p>"
        f"{image(CONFUSION_FIGURE)}"
        if confusion_caption is not None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BBBC021 x DINOv3: MoA retrieval summary</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1300px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
th {{ background: #f4f4f4; }}
img {{ max-width: 100%; margin: 0.5em 0; }}
</style></head><body>
<h1>BBBC021 x DINOv3: MoA retrieval summary</h1>
<h2>Metrics</h2>{METRICS_EXPLAINED}
<h2>Dataset</h2>{validation_html(validation)}
{evaluation_html(runs)}
<h2>Last epoch (pre-declared) vs epoch 0 (before fine-tuning)</h2>
<p>Rows: architecture &times; channel (and each baseline); a baseline has no epochs, its value
stands under <i>last</i>.</p>{headline_table}{scales}
<h2>Best epoch per architecture, channel and metric ({ORACLE})</h2>
<p>Each value below is the maximum over all evaluated epochs, chosen on the same treatments it
is scored on; it overstates what that epoch would score on new compounds.</p>{oracle_table}
<h2>Metrics vs epoch</h2>{plots}
{confusion}
{health_section}
<h2>All runs</h2>
<details><summary>{len(every_run)} runs (also in summary.csv)</summary>{table}</details>
</body></html>
"""


# ------------------------------------------------------------------ epoch 0 names, baselines
BASELINE_CHANNEL = "baseline"  # the channel part of a baseline's label: name/baseline/0000
EPOCH0_UNKNOWN = "before fine-tuning"


def epoch0_name(runs: pd.DataFrame, arch: str) -> str:
    """What epoch 0 of `arch` is: "pretrained", "random init" (weights none), or unknown."""
    names = runs.loc[runs["arch"] == arch, "epoch0"] if "epoch0" in runs else pd.Series()
    return str(names.iloc[0]) if len(names) else EPOCH0_UNKNOWN


def parse_weights(text: str) -> dict[str, str]:
    """--weights 'arch=none,arch2=hub' -> {arch: "random init" | "pretrained"}."""
    names = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        arch, sep, weights = item.partition("=")
        if not sep or not arch or not weights:
            raise InputError(f"--weights: '{item}' is not arch=weights")
        names[arch] = "random init" if weights == "none" else "pretrained"
    return names


def mark_runs(runs: pd.DataFrame, epoch0: dict[str, str]) -> pd.DataFrame:
    """The workflow's own runs: kind `model`, and what their epoch 0 is."""
    return runs.assign(
        kind="model", epoch0=runs["arch"].map(lambda arch: epoch0.get(arch, EPOCH0_UNKNOWN))
    )


def read_baselines(paths: list[Path]) -> pd.DataFrame:
    """Baseline runs (label name/baseline/NNNN): kind `baseline`, no epoch 0."""
    if not paths:
        return pd.DataFrame(columns=[*RUN_KEYS, *METRICS, "run_dir", "kind", "epoch0"])
    baselines = read_runs(paths)
    wrong = baselines[baselines["channel"] != BASELINE_CHANNEL]
    if len(wrong):
        row = wrong.iloc[0]
        raise InputError(
            f"{row['run_dir']}: a baseline's label must be name/{BASELINE_CHANNEL}/NNNN, "
            f"not {row['arch']}/{row['channel']}/{row['epoch']:04d}"
        )
    return baselines.assign(kind="baseline", epoch0="")


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


def headline_pivot(best: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows arch x channel (then the baselines), columns metric x {epoch 0, last}."""
    rows = {}
    for _, row in best.iterrows():
        values = rows.setdefault(row_key(row, int(row["last_epoch"])), {})
        values[(METRICS[row["metric"]], "epoch 0")] = row["pretrained_value"]
        values[(METRICS[row["metric"]], "last")] = row["last_value"]
    for _, row in (baselines if baselines is not None else pd.DataFrame()).iterrows():
        values = rows.setdefault((row["arch"], BASELINE_CHANNEL, "–", "–"), {})
        for metric, name in METRICS.items():
            values[(name, "epoch 0")] = np.nan
            values[(name, "last")] = row[metric]
    return pivot_frame(rows)


def oracle_pivot(best: pd.DataFrame) -> pd.DataFrame:
    """Rows arch x channel, columns metric x {oracle best epoch, its value}."""
    rows = {}
    for _, row in best.iterrows():
        values = rows.setdefault(row_key(row, int(row["last_epoch"])), {})
        values[(METRICS[row["metric"]], "best epoch")] = row["oracle_best_epoch"]
        values[(METRICS[row["metric"]], "value")] = row["oracle_best_value"]
    return pivot_frame(rows)


def row_key(row: pd.Series, last_epoch: int | str) -> tuple:
    return row["arch"], row["channel"], row.get("epoch0", EPOCH0_UNKNOWN), last_epoch


def pivot_frame(rows: dict[tuple, dict]) -> pd.DataFrame:
    """{(arch, channel, epoch 0 =, last epoch): {(metric, column): value}} -> a frame with
    those row and two-level column labels, metrics in METRICS order."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if frame.empty:
        return frame
    frame.index = pd.MultiIndex.from_tuples(
        frame.index, names=["model", "channel", "epoch 0 =", "last epoch"]
    )
    order = list(METRICS.values())
    frame = frame[sorted(frame.columns, key=lambda c: order.index(c[0]))]  # stable: epoch 0 first
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


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
        f"<li><b>{html.escape(arch)}</b>: {html.escape(text)}</li>" for arch, text in scales.items()
    )
    return (
        "<p>At what scale the model sees cells (raw-field pixels per model pixel; training and "
        "evaluation crops far apart means evaluated cells look larger or smaller than trained "
        f"ones):</p><ul>{items}</ul>"
    )


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", nargs="+", required=True, help="metrics.json files")
    parser.add_argument("--validation-report", required=True, help="data validation report (JSON)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument(
        "--baseline-metrics",
        nargs="*",
        default=[],
        help="metrics.json of external baselines (label name/baseline/NNNN)",
    )
    parser.add_argument(
        "--weights", default="", help="arch=weights,...: 'none' names epoch 0 random init"
    )
    parser.add_argument("--pixel-scales", default="{}", help="JSON {arch: sentence}")
    parser.add_argument(
        "--train-logs",
        nargs="*",
        default=[],
        help="train/{arch}/{channel}/log.jsonl files (training health)",
    )
    args = parser.parse_args(argv)

    runs = mark_runs(read_runs([Path(p) for p in args.metrics]), parse_weights(args.weights))
    baselines = read_baselines([Path(p) for p in args.baseline_metrics])
    pixel_scales = json_object_option(args.pixel_scales, "--pixel-scales")
    health = read_training_logs([Path(p) for p in args.train_logs])
    if args.train_logs:
        runs = add_collapse_flags(runs, health)
    validation = read_validation(Path(args.validation_report))
    best = best_epochs(runs)
    best["epoch0"] = best["arch"].map(lambda arch: epoch0_name(runs, arch)) if len(best) else []
    figures = {
        f"{metric}_vs_epoch.png": plot_metric_vs_epoch(runs, metric, baselines)
        for metric in METRICS
        if runs[metric].notna().any()
    }
    picked = confusion_run(runs)
    caption = label = None
    if picked is not None:
        shown, metric = picked
        label = f"{shown['arch']}/{shown['channel']}/{shown['epoch']:04d}"
        caption = (
            f"NSC nearest-neighbour MoAs of {label}: the last epoch of the architecture and "
            f"channel whose last-epoch {METRICS[metric]} is highest "
            f"({shown[metric]:.3f}). Choosing among the runs on that metric is itself "
            "a selection on the evaluation data."
        )
        title = f"NSC nearest-neighbour MoA, last epoch: {label}"
        figures[CONFUSION_FIGURE] = plot_confusion(read_confusion(shown["run_dir"]), title)
    health_section = ""
    if len(health):
        figures[HEALTH_FIGURE] = plot_training_health(health)
        data = base64.b64encode(figures[HEALTH_FIGURE]).decode("ascii")
        health_section = training_health_html(
            health, f'<img alt="{HEALTH_FIGURE}" src="data:image/png;base64,{data}">'
        )
    report = report_html(
        runs, best, figures, caption, validation, baselines, pixel_scales, health_section
    )

    out_dir = Path(args.out_dir)
    table = runs if baselines.empty else pd.concat([runs, baselines], ignore_index=True)
    write_table(table.drop(columns=["run_dir"]), out_dir / "summary.csv")
    write_table(best, out_dir / "best_epochs.csv")
    if args.train_logs:
        write_table(health, out_dir / "training_health.csv")
    for name, data in figures.items():
        with atomic_path(out_dir / FIGURES_DIR / name) as tmp:
            tmp.write_bytes(data)
    write_text(out_dir / "report.html", report)
    print(f"summarised {len(runs)} runs; confusion matrix of {label}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
