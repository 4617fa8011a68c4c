"""Training health: the per-epoch statistics of each `train/{arch}/{channel}/log.jsonl` (another
training seed: `train/{arch}/{channel}/seed_S/log.jsonl`) as one table, and the collapse verdict
of each evaluated run's epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workflow_scripts.errors import InputError
from workflow_scripts.summary.runs import RUN_KEYS, SEED_PART

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


def log_series(path: Path, first_seeds: dict[str, int]) -> tuple[str, str, int | None]:
    """(arch, channel, seed) of a training log from its folders; a log without a seed folder
    is the architecture's first seed."""
    folder = path.parent
    if match := SEED_PART.fullmatch(folder.name):
        return folder.parent.parent.name, folder.parent.name, int(match.group(1))
    return folder.parent.name, folder.name, first_seeds.get(folder.parent.name)


def read_training_logs(
    paths: list[Path], first_seeds: dict[str, int] | None = None
) -> pd.DataFrame:
    """One row per epoch line of each training log: arch, channel, seed, epoch and the health
    columns (NaN / None where a log predates them)."""
    rows = []
    for path in paths:
        arch, channel, seed = log_series(path, first_seeds or {})
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
                    "arch": arch,
                    "channel": channel,
                    "seed": seed,
                    "epoch": epoch,
                    **{key: entry.get(key) for key in HEALTH_COLUMNS},
                }
            )
    health = pd.DataFrame(rows, columns=[*RUN_KEYS, *HEALTH_COLUMNS])
    health["seed"] = health["seed"].astype("Int64")
    for key in HEALTH_COLUMNS:
        if key != "collapse":
            health[key] = pd.to_numeric(health[key]).astype(float)
    return health.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)


def add_collapse_flags(runs: pd.DataFrame, health: pd.DataFrame) -> pd.DataFrame:
    """summary.csv's `training_collapse`: the run's epoch verdict from the training log
    (epoch 0 and runs without a log: empty); `combined`: `channel:kind` of each collapsed one."""
    verdicts = {
        (row.arch, row.channel, seed_key(row.seed), row.epoch): row.collapse
        for row in health.itertuples()
        if isinstance(row.collapse, str)
    }
    channels_of = health.groupby("arch")["channel"].unique().to_dict()

    def flag(run) -> str:
        seed = seed_key(run.get("seed"))
        if run["channel"] == "combined":
            parts = [
                f"{ch}:{verdicts[(run['arch'], ch, seed, run['epoch'])]}"
                for ch in channels_of.get(run["arch"], [])
                if (run["arch"], ch, seed, run["epoch"]) in verdicts
            ]
            return " ".join(parts)
        return verdicts.get((run["arch"], run["channel"], seed, run["epoch"]), "")

    runs = runs.copy()
    runs["training_collapse"] = [flag(run) for _, run in runs.iterrows()] if len(runs) else []
    return runs


def seed_key(seed) -> int | None:
    """A seed as a dictionary key (NA, None: unknown)."""
    return None if seed is None or pd.isna(seed) else int(seed)
