r"""Summary of all evaluated runs: tables, metric-vs-epoch plots and a self-contained HTML report.

Reads the `metrics.json` of every (arch, channel, epoch) run (label `arch/channel/NNNN`, or
`arch/channel/seed_S/NNNN` for a run trained with another seed than the architecture's first),
the `predictions.csv` beside each (the per-query outcomes behind the error bars), the
`confusion.csv` of one run (below), and the data validation report. Writes into `--out-dir`:
summary.csv (one row per run, with the bootstrap interval of every metric), best_epochs.csv (per
arch, channel, seed and metric: the epoch 0 and last-epoch values with their intervals, their
difference, and the oracle best epoch and its value), comparisons.csv (paired tests: each
series' last epoch against its epoch 0 and against each baseline), seeds.csv (mean and sd over
training seeds per epoch; header only without several seeds), figures/ (`{metric}_vs_epoch.png`,
confusion_last_epoch.png) and report.html (figures inlined; open it in any browser; the headline
table first).

Error bars (`--bootstrap`, JSON with config.yaml's `evaluate.bootstrap`: resamples, confidence,
seed): compound bootstrap percentile intervals of NSC, NSCB and mAP from each run's per-query
outcomes; paired comparisons by the exact McNemar test (NSC, NSCB) or a paired compound bootstrap
(mAP). What is resampled: workflow_scripts/summary/bootstrap.py and paired.py.

Training seeds (`--train-seeds`, JSON {arch: [seeds]}, config `train.seeds`; the first seed's
runs have labels without a seed part): the seed column of every table; without it the seed of a
label without a seed part is unknown (empty).

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
training series whose last-epoch NSCB is highest (ties: first in summary order; NSC when no run
has an NSCB).

With `--train-logs` (the `train/{arch}/{channel}[/seed_S]/log.jsonl` files) it also writes
training_health.csv (the per-epoch health statistics that training logs, see
workflow_scripts.train.health), training_health.png, a `training_collapse` column in summary.csv
(the collapse verdict of that epoch; for `combined`, every collapsed channel) and a
training-health section in the report.

With `--checkpoint-metas` (training checkpoints' JSON) the runs get a `weak_label` column
(train.weak_label; `MoA (circular)` where the training used the MoA labels NSC/NSCB retrieve),
also a level of the report's tables and a column of best_epochs.csv; every training seed of an
(arch, channel) trains with the same settings, so one checkpoint names the label of all its seeds.
With `--profiles` (the evaluations' profiles.parquet, e.g. of epoch 0 and the last epoch, of the
first training seed: runs labelled without seed_S) it draws per (arch, channel) a t-SNE map of
the treatment profiles (embedding_maps.py: figures/embedding_map_{arch}_{channel}.png, the
coordinates beside it as .csv). With `--attention-maps` (the .npz of
workflow_scripts.evaluate.attention; the workflow computes them for the first training seed) it
draws the attention maps (attention_maps.py: figures/attention_{arch}_{channel}.jpg,
head-averaged, and figures/attention_heads_{arch}_{channel}_epoch_NNNN.jpg, per head).

The package reads files only (no import of the train or evaluate code): runs.py (the runs table,
best epochs, the pivots, weak labels), bootstrap.py and paired.py (error bars and tests),
comparisons.py, seeds.py, headline.py, health.py (training logs), figures.py, embedding_maps.py,
attention_maps.py, html.py and this CLI.

    python -m workflow_scripts.summary.cli --metrics results/eval/*/*/*/metrics.json \
        --validation-report results/data/validation_report.json --out-dir results/summary \
        --train-logs results/train/*/*/log.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import atomic_path, write_text
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.summary import attention_maps, embedding_maps
from workflow_scripts.summary.bootstrap import DEFAULTS as BOOTSTRAP_DEFAULTS
from workflow_scripts.summary.bootstrap import Settings
from workflow_scripts.summary.comparisons import comparisons_table
from workflow_scripts.summary.figures import (
    CONFUSION_FIGURE,
    HEALTH_FIGURE,
    confusion_figure,
    metric_vs_epoch_figure,
    metric_vs_epoch_file,
    png_bytes,
    training_health_figure,
)
from workflow_scripts.summary.headline import headline_pivot
from workflow_scripts.summary.health import add_collapse_flags, read_training_logs
from workflow_scripts.summary.html import (
    attention_html,
    embedding_html,
    image_html,
    report_html,
    training_health_html,
)
from workflow_scripts.summary.runs import (
    METRICS,
    add_intervals,
    best_epochs,
    circular_runs,
    confusion_run,
    epoch0_name,
    mark_runs,
    mark_weak_labels,
    oracle_pivot,
    parse_weights,
    read_baselines,
    read_confusion,
    read_predictions,
    read_runs,
    read_validation,
    read_weak_labels,
    run_label,
)
from workflow_scripts.summary.seeds import seed_statistics
from workflow_scripts.tables import write_table

FIGURES_DIR = "figures"  # one folder, so that `snakemake --report` can collect whatever is drawn
INTERNAL_COLUMNS = ["run_dir", "label", "first_seed"]  # not written to summary.csv


def bootstrap_settings(text: str) -> Settings:
    """--bootstrap JSON: resamples (>= 1), confidence (0 < c < 1), seed (an integer)."""
    given = json_object_option(text, "--bootstrap")
    unknown = sorted(set(given) - set(BOOTSTRAP_DEFAULTS))
    if unknown:
        raise InputError(
            f"--bootstrap: unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(BOOTSTRAP_DEFAULTS)})"
        )
    settings = {**BOOTSTRAP_DEFAULTS, **given}
    resamples, confidence, seed = (settings[k] for k in ("resamples", "confidence", "seed"))
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise InputError(f"--bootstrap: resamples must be an integer >= 1, not {resamples!r}")
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not (0 < confidence < 1)
    ):
        raise InputError(f"--bootstrap: confidence must lie between 0 and 1, not {confidence!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"--bootstrap: seed must be an integer, not {seed!r}")
    return Settings(resamples, float(confidence), seed)


def first_seeds(text: str) -> dict[str, int]:
    """--train-seeds JSON {arch: [seeds]} -> {arch: its first seed}."""
    seeds = json_object_option(text, "--train-seeds")
    firsts = {}
    for arch, values in seeds.items():
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            raise InputError(f"--train-seeds: '{arch}' must map to a list of integer seeds")
        firsts[arch] = values[0]
    return firsts


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
        help="train/{arch}/{channel}[/seed_S]/log.jsonl files (training health)",
    )
    parser.add_argument(
        "--bootstrap",
        default="{}",
        help="JSON: resamples, confidence, seed of the error bars (default "
        + ", ".join(f"{k} {v}" for k, v in BOOTSTRAP_DEFAULTS.items())
        + ")",
    )
    parser.add_argument(
        "--train-seeds", default="{}", help="JSON {arch: [seeds]}: the first is unlabelled"
    )
    parser.add_argument(
        "--checkpoint-metas",
        nargs="*",
        default=[],
        help="train/{arch}/{channel}[/seed_S]/epoch_NNNN.json files (train.weak_label)",
    )
    parser.add_argument(
        "--profiles",
        nargs="*",
        default=[],
        help="profiles.parquet of evaluations (beside their metrics.json): t-SNE maps",
    )
    parser.add_argument(
        "--attention-maps", nargs="*", default=[], help=".npz files of evaluate.attention"
    )
    args = parser.parse_args(argv)

    settings = bootstrap_settings(args.bootstrap)
    seeds = first_seeds(args.train_seeds)
    runs = mark_runs(read_runs([Path(p) for p in args.metrics], seeds), parse_weights(args.weights))
    if args.checkpoint_metas:
        runs = mark_weak_labels(runs, read_weak_labels([Path(p) for p in args.checkpoint_metas]))
    baselines = read_baselines([Path(p) for p in args.baseline_metrics])
    every_run = runs if baselines.empty else pd.concat([runs, baselines], ignore_index=True)
    predictions = read_predictions(every_run)
    runs = add_intervals(runs, predictions, settings)
    if not baselines.empty:
        baselines = add_intervals(baselines, predictions, settings)
    pixel_scales = json_object_option(args.pixel_scales, "--pixel-scales")
    health = read_training_logs([Path(p) for p in args.train_logs], seeds)
    if args.train_logs:
        runs = add_collapse_flags(runs, health)
    validation = read_validation(Path(args.validation_report))
    best = best_epochs(runs)
    best["epoch0"] = best["arch"].map(lambda arch: epoch0_name(runs, arch)) if len(best) else []
    comparisons = comparisons_table(runs, baselines, predictions, settings)
    spread = seed_statistics(runs)
    tables = {}  # CSVs beside the figures

    epoch_plots = {
        metric_vs_epoch_file(metric): png_bytes(metric_vs_epoch_figure(runs, metric, baselines))
        for metric in METRICS
        if runs[metric].notna().any()
    }
    figures = dict(epoch_plots)
    confusion = label = None
    picked = confusion_run(runs)
    if picked is not None:
        shown, metric = picked
        label = run_label(shown)
        caption = (
            f"NSC nearest-neighbour MoAs of {label}: the last epoch of the training series "
            f"(architecture, channel, seed) whose last-epoch {METRICS[metric]} is highest "
            f"({shown[metric]:.3f}). Choosing among the runs on that metric is itself "
            "a selection on the evaluation data."
        )
        title = f"NSC nearest-neighbour MoA, last epoch: {label}"
        png = png_bytes(confusion_figure(read_confusion(shown["run_dir"]), title))
        figures[CONFUSION_FIGURE] = png
        confusion = (caption, CONFUSION_FIGURE, png)
    health_section = ""
    if len(health):
        png = png_bytes(training_health_figure(health))
        figures[HEALTH_FIGURE] = png
        health_section = training_health_html(health, image_html(HEALTH_FIGURE, png))
    # the maps show the runs of each architecture's first training seed (labels without seed_S)
    mapped = runs[runs["first_seed"]]
    profiles = {Path(p).parent.resolve(): Path(p) for p in args.profiles}  # by run folder
    orphans = set(profiles) - {Path(d).resolve() for d in mapped["run_dir"]}
    if orphans:
        raise InputError(
            f"{profiles[sorted(orphans)[0]]}: a --profiles file must lie beside a metrics.json "
            "of --metrics labelled without a seed part (the maps show the first training seed)"
        )
    points = embedding_maps.embedding_table(mapped, profiles)
    embedding_figures = {}
    if len(points):
        styles = embedding_maps.style_keys(points)
        for (arch, channel), group in points.groupby(["arch", "channel"], sort=True):
            figure = embedding_maps.embedding_figure(
                points, mapped, arch, channel, styles, epoch0_name(runs, arch)
            )
            embedding_figures[embedding_maps.map_file(arch, channel)] = png_bytes(figure)
            tables[embedding_maps.map_file(arch, channel, "csv")] = group
    attention_figures = []  # (arch, channel, {file name: png}), mean first
    for path in args.attention_maps:
        maps = attention_maps.read_attention(Path(path))
        arch, channel = maps["info"]["arch"], maps["info"]["channel"]
        named = epoch0_name(runs, arch)
        drawn = {attention_maps.mean_file(arch, channel): attention_maps.mean_figure(maps, named)}
        for index, epoch in enumerate(maps["epochs"]):
            drawn[attention_maps.heads_file(arch, channel, int(epoch))] = (
                attention_maps.heads_figure(maps, index, named)
            )
        attention_figures.append(
            (arch, channel, {n: attention_maps.jpeg_bytes(f) for n, f in drawn.items()})
        )
    for drawn in [embedding_figures, *(d for _, _, d in attention_figures)]:
        figures.update(drawn)
    every_run = runs if baselines.empty else pd.concat([runs, baselines], ignore_index=True)
    page = report_html(
        runs,
        every_run,
        headline_pivot(best, baselines, comparisons),
        oracle_pivot(best),
        epoch_plots,
        confusion,
        validation,
        pixel_scales,
        health_section,
        comparisons,
        settings,
        embedding_html(embedding_figures, points),
        attention_html(attention_figures),
        circular_runs(runs),
    )

    out_dir = Path(args.out_dir)
    write_table(every_run.drop(columns=INTERNAL_COLUMNS), out_dir / "summary.csv")
    write_table(best, out_dir / "best_epochs.csv")
    write_table(comparisons, out_dir / "comparisons.csv")
    write_table(spread, out_dir / "seeds.csv")  # header only without several seeds
    if args.train_logs:
        write_table(health, out_dir / "training_health.csv")
    for name, data in figures.items():
        with atomic_path(out_dir / FIGURES_DIR / name) as tmp:
            tmp.write_bytes(data)
    for name, table in tables.items():
        write_table(table, out_dir / FIGURES_DIR / name)
    write_text(out_dir / "report.html", page)
    print(f"summarised {len(runs)} runs; confusion matrix of {label}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
