"""The runs table: one row per metrics.json (model runs and external baselines), what epoch 0 is
per architecture, the per-metric headline (last epoch vs epoch 0) and the oracle best epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.tables import read_json, read_table

METRICS = {"nsc": "NSC", "nscb": "NSCB", "map_nsc": "mAP (NSC)", "map_nscb": "mAP (NSCB)"}
CONFUSION_METRIC = "nscb"  # picks the (arch, channel) whose last epoch's confusion is drawn
RUN_KEYS = ("arch", "channel", "epoch")
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


def parse_label(label: object, path: Path) -> tuple[str, str, int]:
    parts = str(label).split("/")
    if len(parts) != 3 or not parts[2].isdigit():
        raise InputError(f"{path}: key 'label' is {label!r}, expected 'arch/channel/NNNN'")
    return parts[0], parts[1], int(parts[2])


def run_label(run: pd.Series) -> str:
    """arch/channel/NNNN, as in metrics.json."""
    return f"{run['arch']}/{run['channel']}/{run['epoch']:04d}"


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
        raise InputError(f"{row['run_dir']}: run {run_label(row)} given twice")
    for key in METRICS:
        runs[key] = pd.to_numeric(runs[key]).astype(float)
    return runs.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def evaluation_columns(metrics: dict) -> dict:
    """n_dmso, features used and dropped (count), normalisation, TVN components possible; None
    where an older metrics.json lacks them."""
    dropped = metrics.get("features_dropped")
    tvn = metrics.get("tvn") or {}
    return {
        "n_dmso": metrics.get("n_dmso"),
        "features_used": metrics.get("features_used"),
        "features_dropped": None if dropped is None else sum(map(len, dropped.values())),
        "normalization": metrics.get("normalization"),
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
    train_settings; a checkpoint written before the setting existed trained without: none)."""
    labels = {}
    for path in paths:
        meta = read_json(path, required=("arch", "channel"))
        label = (meta.get("train_settings") or {}).get("weak_label", "none")
        if label not in WEAK_LABEL_NAMES:
            raise InputError(f"{path}: train_settings.weak_label {label!r} is unknown")
        labels[(meta["arch"], meta["channel"])] = label
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
    """Baseline runs (label name/baseline/NNNN): kind `baseline`, no epoch 0."""
    if not paths:
        return pd.DataFrame(columns=[*RUN_KEYS, *METRICS, "run_dir", "kind", "epoch0"])
    baselines = read_runs(paths)
    wrong = baselines[baselines["channel"] != BASELINE_CHANNEL]
    if len(wrong):
        row = wrong.iloc[0]
        raise InputError(
            f"{row['run_dir']}: a baseline's label must be name/{BASELINE_CHANNEL}/NNNN, "
            f"not {run_label(row)}"
        )
    return baselines.assign(kind="baseline", epoch0="")


def best_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, channel, metric): epoch 0 and last-epoch values and their difference (the
    headline), then the oracle best epoch (earliest maximum) and its value."""
    rows = []
    for (arch, channel), group in runs.groupby(["arch", "channel"], sort=True):
        group = group.sort_values("epoch")
        last = group.iloc[-1]
        weak_label = last.get("weak_label", WEAK_LABEL_UNKNOWN)
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
                    "weak_label": weak_label,
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


def headline_pivot(best: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows arch x channel (then the baselines), columns metric x {epoch 0, last}."""
    rows = {}
    for _, row in best.iterrows():
        values = rows.setdefault(row_key(row, int(row["last_epoch"])), {})
        values[(METRICS[row["metric"]], "epoch 0")] = row["pretrained_value"]
        values[(METRICS[row["metric"]], "last")] = row["last_value"]
    for _, row in (baselines if baselines is not None else pd.DataFrame()).iterrows():
        values = rows.setdefault((row["arch"], BASELINE_CHANNEL, "–", "–", "–"), {})
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
    return (
        row["arch"],
        row["channel"],
        row.get("epoch0", EPOCH0_UNKNOWN),
        row.get("weak_label", WEAK_LABEL_UNKNOWN),
        last_epoch,
    )


def pivot_frame(rows: dict[tuple, dict]) -> pd.DataFrame:
    """{(arch, channel, epoch 0 =, weak label, last epoch): {(metric, column): value}} -> a
    frame with those row and two-level column labels, metrics in METRICS order."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if frame.empty:
        return frame
    frame.index = pd.MultiIndex.from_tuples(
        frame.index, names=["model", "channel", "epoch 0 =", "weak label", "last epoch"]
    )
    order = list(METRICS.values())
    frame = frame[sorted(frame.columns, key=lambda c: order.index(c[0]))]  # stable: epoch 0 first
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
