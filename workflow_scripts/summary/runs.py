"""The runs table: one row per metrics.json (model runs and external baselines), its training
seed, what epoch 0 is per architecture, the weak label its training used (from the checkpoints'
JSON), the bootstrap intervals of its metrics (from its predictions.csv), the per-metric headline
(last epoch vs epoch 0) and the oracle best epoch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.summary import bootstrap
from workflow_scripts.tables import read_json, read_table

METRICS = {"nsc": "NSC", "nscb": "NSCB", "map_nsc": "mAP (NSC)", "map_nscb": "mAP (NSCB)"}
CONFUSION_METRIC = "nscb"  # picks the (arch, channel) whose last epoch's confusion is drawn
RUN_KEYS = ("arch", "channel", "seed", "epoch")
SERIES_KEYS = ("arch", "channel", "seed")  # one training run: its epochs form a series
# the label of a run trained with another seed than the architecture's first: its folder
SEED_PART = re.compile(r"seed_(-?\d+)")
PREDICTION_COLUMNS = [
    "protocol",
    "treatment",
    "compound",
    "neighbour",
    "correct",
    "average_precision",
]
COUNT_KEYS = ("n_treatments_nsc", "n_treatments_nscb", "n_images", "feature_dim", "tvn_components")
BASELINE_CHANNEL = "baseline"  # the channel part of a baseline's label: name/baseline/0000
EPOCH0_UNKNOWN = "before fine-tuning"
# train.weak_label as the summary names it; moa trains on the labels NSC/NSCB retrieve
WEAK_LABEL_NAMES = {
    "none": "none",
    "compound": "compound",
    "treatment": "treatment",
    "moa": "MoA (circular)",
}
WEAK_LABEL_UNKNOWN = "–"  # no checkpoint JSON was given for the run


def parse_label(label: object, path: Path) -> tuple[str, str, int | None, int]:
    """`arch/channel/NNNN` (seed None: the architecture's first seed) or, for another training
    seed, `arch/channel/seed_S/NNNN` -> (arch, channel, seed, epoch)."""
    parts = str(label).split("/")
    seed = None
    if len(parts) == 4 and (match := SEED_PART.fullmatch(parts[2])):
        seed = int(match.group(1))
        parts = [parts[0], parts[1], parts[3]]
    if len(parts) != 3 or not parts[2].isdigit():
        raise InputError(
            f"{path}: key 'label' is {label!r}, expected 'arch/channel/NNNN' "
            "(or arch/channel/seed_S/NNNN)"
        )
    return parts[0], parts[1], seed, int(parts[2])


def run_label(run: pd.Series) -> str:
    """The label of its metrics.json."""
    return str(run["label"])


def read_runs(paths: list[Path], first_seeds: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per metrics.json: arch, channel, seed (from the label, or for a label without one
    the architecture's first seed in `first_seeds`; NA where unknown), epoch, the metrics,
    counts, label, first_seed (the label had no seed part) and its folder."""
    first_seeds = first_seeds or {}
    rows = []
    for path in paths:
        metrics = read_json(path, required=("label", *METRICS))
        arch, channel, seed, epoch = parse_label(metrics["label"], path)
        rows.append(
            {
                "arch": arch,
                "channel": channel,
                "seed": first_seeds.get(arch) if seed is None else seed,
                "epoch": epoch,
                **{key: metrics[key] for key in METRICS},
                **{key: metrics.get(key) for key in COUNT_KEYS},
                **evaluation_columns(metrics),
                "label": metrics["label"],
                "first_seed": seed is None,
                "run_dir": path.parent,
            }
        )
    runs = pd.DataFrame(rows)
    runs["seed"] = runs["seed"].astype("Int64")
    duplicated = runs.duplicated(list(RUN_KEYS))
    if duplicated.any():
        row = runs[duplicated].iloc[0]
        raise InputError(f"{row['run_dir']}: run {run_label(row)} given twice")
    for key in METRICS:
        runs[key] = pd.to_numeric(runs[key]).astype(float)
    return runs.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def read_predictions(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """{label: its predictions.csv}, each checked against its metrics.json: the per-query
    outcomes must give the metric (files of two different evaluations would not)."""
    tables = {}
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / "predictions.csv"
        table = read_table(path, required=PREDICTION_COLUMNS)
        for metric in METRICS:
            outcomes = bootstrap.query_outcomes(table, metric)["outcome"]
            expected = run[metric]
            found = outcomes.mean() if len(outcomes) else np.nan
            if not (np.isnan(expected) and np.isnan(found)) and not abs(found - expected) < 1e-9:
                raise InputError(
                    f"{path}: its per-query outcomes give {METRICS[metric]} {found:.6g}, but "
                    f"metrics.json beside it says {expected:.6g} (files of different evaluations?)"
                )
        tables[run_label(run)] = table
    return tables


def add_intervals(
    runs: pd.DataFrame, predictions: dict[str, pd.DataFrame], settings: bootstrap.Settings
) -> pd.DataFrame:
    """`{metric}_ci_low` / `_ci_high` for every metric: compound bootstrap (bootstrap.py)."""
    rows = [
        bootstrap.metric_intervals(predictions[run_label(run)], settings)
        for _, run in runs.iterrows()
    ]
    columns = [f"{m}_ci_{end}" for m in METRICS for end in ("low", "high")]
    intervals = pd.DataFrame(rows, index=runs.index, columns=columns)
    # each interval right after its metric's other columns: after the metrics themselves
    position = list(runs.columns).index(list(METRICS)[-1]) + 1
    left, right = runs.iloc[:, :position], runs.iloc[:, position:]
    return pd.concat([left, intervals, right], axis=1)


def evaluation_columns(metrics: dict) -> dict:
    """n_dmso, features used and dropped (count), normalisation, TVN components possible; None
    where an older metrics.json lacks them."""
    dropped = metrics.get("features_dropped")
    tvn = metrics.get("tvn") or {}
    normalization = metrics.get("normalization")
    if metrics.get("normalization_scope"):  # absent for the default, per plate
        normalization = f"{normalization} ({metrics['normalization_scope']})"
    return {
        "n_dmso": metrics.get("n_dmso"),
        "features_used": metrics.get("features_used"),
        "features_dropped": None if dropped is None else sum(map(len, dropped.values())),
        "normalization": normalization,
        "tvn_possible": tvn.get("possible"),
    }


def read_confusion(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "confusion.csv"
    table = read_table(path, required=["moa"])
    return table.set_index("moa")


def read_validation(path: Path) -> dict:
    return read_json(path)


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


def read_weak_labels(paths: list[Path]) -> dict[tuple[str, str], str]:
    """{(arch, channel): train.weak_label} from training checkpoints' JSON (their recorded
    train_settings; a checkpoint written before the setting existed trained without: none).
    Every training seed of an (arch, channel) trains with its settings: one label for all."""
    labels = {}
    for path in paths:
        meta = read_json(path, required=("arch", "channel"))
        label = (meta.get("train_settings") or {}).get("weak_label", "none")
        if label not in WEAK_LABEL_NAMES:
            raise InputError(f"{path}: train_settings.weak_label {label!r} is unknown")
        key = (meta["arch"], meta["channel"])
        if labels.setdefault(key, label) != label:
            raise InputError(
                f"{path}: train_settings.weak_label {label!r}, but another checkpoint of "
                f"{key[0]}/{key[1]} says {labels[key]!r} (checkpoints of two configurations?)"
            )
    return labels


def mark_weak_labels(runs: pd.DataFrame, labels: dict[tuple[str, str], str]) -> pd.DataFrame:
    """Column weak_label: the WEAK_LABEL_NAMES name of the run's training; `combined` takes its
    architecture's channels' (one train section per architecture); "–" where unknown."""

    def name(arch: str, channel: str) -> str:
        if (arch, channel) in labels:
            found = {labels[(arch, channel)]}
        else:
            found = {label for (a, _), label in labels.items() if a == arch}
        if not found:
            return WEAK_LABEL_UNKNOWN
        return " + ".join(WEAK_LABEL_NAMES[label] for label in sorted(found))

    return runs.assign(weak_label=[name(a, c) for a, c in zip(runs["arch"], runs["channel"])])


def circular_runs(runs: pd.DataFrame) -> list[str]:
    """arch/channel of the runs trained on MoA labels (their NSC/NSCB are circular)."""
    if "weak_label" not in runs:
        return []
    marked = runs[runs["weak_label"].str.contains(WEAK_LABEL_NAMES["moa"], regex=False)]
    return sorted({f"{a}/{c}" for a, c in zip(marked["arch"], marked["channel"])})


def epoch0_name(runs: pd.DataFrame, arch: str) -> str:
    """What epoch 0 of `arch` is: "pretrained", "random init" (weights none), or unknown."""
    names = runs.loc[runs["arch"] == arch, "epoch0"] if "epoch0" in runs else pd.Series()
    return str(names.iloc[0]) if len(names) else EPOCH0_UNKNOWN


def read_baselines(paths: list[Path]) -> pd.DataFrame:
    """Baseline runs (label name/baseline/NNNN): kind `baseline`, no epoch 0, no seed."""
    if not paths:
        return pd.DataFrame(columns=[*RUN_KEYS, *METRICS, "label", "run_dir", "kind", "epoch0"])
    baselines = read_runs(paths)
    wrong = baselines[(baselines["channel"] != BASELINE_CHANNEL) | ~baselines["first_seed"]]
    if len(wrong):
        row = wrong.iloc[0]
        raise InputError(
            f"{row['run_dir']}: a baseline's label must be name/{BASELINE_CHANNEL}/NNNN, "
            f"not {run_label(row)}"
        )
    return baselines.assign(kind="baseline", epoch0="")


def training_series(runs: pd.DataFrame):
    """(arch, channel, seed), its runs sorted by epoch: one fine-tuning and its evaluations."""
    for key, group in runs.groupby(list(SERIES_KEYS), sort=True, dropna=False):
        yield key, group.sort_values("epoch", kind="stable")


def pretrained_run(runs: pd.DataFrame, arch: str, channel: str, seed) -> pd.Series | None:
    """Epoch 0 of a training series: its own, else that of the architecture's first seed (with
    pretrained weights every seed starts from the same backbone, evaluated once)."""
    same = (runs["arch"] == arch) & (runs["channel"] == channel) & (runs["epoch"] == 0)
    own = (
        runs[same & (runs["seed"] == seed).fillna(False)]
        if not pd.isna(seed)
        else runs[same & runs["seed"].isna()]
    )
    if len(own):
        return own.iloc[0]
    first = runs[same & runs["first_seed"]]
    return first.iloc[0] if len(first) else None


def best_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, channel, seed, metric): epoch 0 and last-epoch values with their bootstrap
    intervals and their difference (the headline), then the oracle best epoch (earliest
    maximum) and its value. A metric no epoch has (mAP disabled; NSCB without any cross-batch
    candidate) keeps its row, with empty values: the report shows it as n/a instead of leaving
    it out."""
    rows = []
    for (arch, channel, seed), group in training_series(runs):
        last = group.iloc[-1]
        weak_label = last.get("weak_label", WEAK_LABEL_UNKNOWN)
        pretrained = pretrained_run(runs, arch, channel, seed)
        trained = group[group["epoch"] > 0] if pretrained is not None else group
        candidates = (
            pd.concat([pretrained.to_frame().T, trained]) if pretrained is not None else group
        )
        for metric in METRICS:
            scored = candidates.dropna(subset=[metric])
            best = scored.loc[pd.to_numeric(scored[metric]).idxmax()] if len(scored) else None
            value = np.nan if pretrained is None else pretrained[metric]
            rows.append(
                {
                    "arch": arch,
                    "channel": channel,
                    "seed": seed,
                    "weak_label": weak_label,
                    "metric": metric,
                    "pretrained_value": value,
                    **interval_columns(pretrained, metric, "pretrained"),
                    "last_epoch": int(last["epoch"]),
                    "last_value": last[metric],
                    **interval_columns(last, metric, "last"),
                    "last_minus_pretrained": last[metric] - value,
                    "oracle_best_epoch": np.nan if best is None else int(best["epoch"]),
                    "oracle_best_value": np.nan if best is None else best[metric],
                    "pretrained_label": "" if pretrained is None else run_label(pretrained),
                    "last_label": run_label(last),
                }
            )
    best = pd.DataFrame(rows)
    if len(best):
        best["seed"] = best["seed"].astype("Int64")
    return best


def interval_columns(run: pd.Series | None, metric: str, name: str) -> dict:
    """The run's bootstrap interval of `metric` as {name}_ci_low / _high (nan without one)."""
    return {
        f"{name}_ci_{end}": np.nan if run is None else run.get(f"{metric}_ci_{end}", np.nan)
        for end in ("low", "high")
    }


def confusion_run(runs: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """The last epoch of the training series with the highest last-epoch NSCB (NSC when no
    last epoch has an NSCB), and the metric it was picked by; ties: first in summary order."""
    keys = [k for k in SERIES_KEYS if k in runs.columns]
    last_epochs = runs.groupby(keys, sort=False, dropna=False).tail(1)  # runs sorted by epoch
    for metric in (CONFUSION_METRIC, "nsc"):
        scored = last_epochs.dropna(subset=[metric])
        if not scored.empty:
            return scored.loc[scored[metric].idxmax()], metric
    return None


def oracle_pivot(best: pd.DataFrame) -> pd.DataFrame:
    """Rows arch x channel x seed, columns metric x {oracle best epoch, its value}."""
    rows = {}
    for _, row in best.iterrows():
        values = rows.setdefault(row_key(row, int(row["last_epoch"])), {})
        values[(METRICS[row["metric"]], "best epoch")] = row["oracle_best_epoch"]
        values[(METRICS[row["metric"]], "value")] = row["oracle_best_value"]
    return pivot_frame(rows)


def seed_text(seed) -> str:
    return "–" if pd.isna(seed) else str(int(seed))


def row_key(row: pd.Series, last_epoch: int | str) -> tuple:
    return (
        row["arch"],
        row["channel"],
        seed_text(row.get("seed")),
        row.get("epoch0", EPOCH0_UNKNOWN),
        row.get("weak_label", WEAK_LABEL_UNKNOWN),
        last_epoch,
    )


INDEX_NAMES = ["model", "channel", "seed", "epoch 0 =", "weak label", "last epoch"]


def pivot_frame(rows: dict[tuple, dict]) -> pd.DataFrame:
    """{(arch, channel, seed, epoch 0 =, weak label, last epoch): {(metric, column): value}} ->
    a frame with those row and two-level column labels, metrics in METRICS order."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if frame.empty:
        return frame
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=INDEX_NAMES)
    order = list(METRICS.values())
    frame = frame[sorted(frame.columns, key=lambda c: order.index(c[0]))]  # stable order
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
