"""Outputs made with other settings than the configuration's, or that cannot be read: at start,
their jobs are made to rerun through a stamp file each job takes as input.

Snakemake reruns a job whose params changed only from its own records (`.snakemake/` of the
checkout, keyed by output path). An output_dir moved or copied by an administrator, a fresh
clone, or a deleted `.snakemake/` leaves outputs without records: a changed setting then reruns
nothing ("missing provenance"). And a truncated output (a full disk, a copy cut short) is never
rewritten: every run fails reading it. The outputs below record what they were made from; at
every start (the Snakefile, main process) they are read and compared with what the
configuration implies. The stamps (under `<output_dir>/.rerun/`), the outputs read, and the
recorded settings compared:

- `validation.stamp`: `data/images.parquet`, `data/validation_report.json` (channels, image shape)
- `cache.stamp`: `cache/meta.json` (preprocess digest), `cache/images.parquet`, `cache/*.npy`
- `train/{arch}/{channel}.stamp`: checkpoint `.json` (train settings, model_kwargs), `.safetensors`
- `extract/{arch}/{channel}.stamp`: features `.parquet` (extraction settings, model_kwargs);
  `extract/{arch}/combined.stamp` the combined features (read only)
- `evaluate/{arch}/{channel}.stamp`, `baseline/{name}.stamp`: `metrics.json` (scoring settings),
  `profiles.parquet` (read only) and `predictions.csv` (as many rows as metrics.json's queries:
  the summary reads it)
- another training seed's jobs (`train.seeds`, files under `seed_S/`): the same, with the
  stamps `train|extract|evaluate/{arch}/{channel}/seed_{seed}.stamp` and that seed's train
  settings
- `attention/{arch}/{channel}.stamp`: the attention maps' `.npz` (read only)

Each stamp is an input of its job. It is created empty with modification time 0 (older than any
output: nothing reruns) and rewritten only when an output of its job was made with other
settings or cannot be read: then with the current time and a new content (what is redone and
why, and when), because Snakemake counts a newer input as updated only when its checksum differs
from the one it recorded. The job's input is then updated, and Snakemake reruns it (and what
follows) whatever its records say. Nothing is deleted or touched but the stamps. A record that
is absent (outputs of an older version) is not compared. Limits: settings no output records (the
demo generator's, prepare's, the epoch-0 extraction's weights path and seed) still depend on
Snakemake's records; a dry run (`-n`) rewrites stamps too, so the run after it reruns those jobs.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts import config as config_module
from workflow_scripts import training_seeds
from workflow_scripts.atomic import write_text
from workflow_scripts.evaluate.crops import extraction_settings

STAMP_DIR = ".rerun"
EXTRACTION_ATTR = "extraction"  # features parquet attrs: {"settings", "model_kwargs"}
# what evaluate.py writes beside metrics.json (--out-dir)
PREDICTIONS = "predictions.csv"
PROFILES = "profiles.parquet"


@dataclass(frozen=True)
class Finding:
    stamp: str  # the stamp file of the job that rewrites `path`
    path: str
    reason: str


# ------------------------------------------------------------------ reading outputs
def unreadable(path: str) -> str | None:
    """Why an existing output cannot be read (by its suffix; headers and footers only), or
    None. A missing file is not checked: Snakemake makes it."""
    if not os.path.isfile(path):
        return None
    try:
        if path.endswith(".json"):
            if not isinstance(json.loads(Path(path).read_text()), dict):
                return "not a JSON object"
        elif path.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.read_schema(path)
        elif path.endswith(".npy"):
            np.load(path, mmap_mode="r")  # the header, and the size it implies
        elif path.endswith(".npz"):
            np.load(path).close()  # reads the zip's directory, at the end of the file
        elif path.endswith(".safetensors"):
            return safetensors_problem(path)
    except Exception as err:  # each reader raises its own types for damaged files
        return " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return None


def safetensors_problem(path: str) -> str | None:
    """The header's length, JSON and data offsets against the file size (no tensor is read)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            return f"{size} bytes: shorter than a safetensors header"
        (n,) = struct.unpack("<Q", prefix)
        if 8 + n > size:
            return f"header of {n} bytes, file of {size} bytes"
        header = json.loads(fh.read(n))
    end = max(
        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
        default=0,
    )
    return f"data ends at byte {8 + n + end}, file has {size}" if 8 + n + end > size else None


def missing_rows(path: str, metrics_path: str) -> str | None:
    """predictions.csv against the metrics.json beside it: one complete line per query of each
    protocol (n_treatments_nsc + n_treatments_nscb), or why not. A truncated CSV still parses,
    so its lines are counted (those that end with a newline: a cut last line does not)."""
    metrics = json_record(metrics_path) or {}
    if not all(isinstance(metrics.get(f"n_treatments_{p}"), int) for p in ("nsc", "nscb")):
        return None
    expected = metrics["n_treatments_nsc"] + metrics["n_treatments_nscb"]
    with open(path, "rb") as fh:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1
    if rows == expected:
        return None
    return f"{max(rows, 0)} complete rows, {expected} queries in {os.path.basename(metrics_path)}"


def json_record(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def parquet_attrs(path: str) -> dict:
    """A pandas parquet's `attrs` (the schema metadata only; no column is read)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
        return json.loads(metadata.get(b"PANDAS_ATTRS", b"{}"))
    except Exception:  # unreadable files are found by `unreadable`
        return {}


def differences(recorded: object, expected: object, prefix: str = "") -> list[str]:
    """`key: recorded -> expected` for each differing leaf (1 and 1.0 are equal)."""
    if isinstance(recorded, Mapping) and isinstance(expected, Mapping):
        return [
            line
            for key in sorted(set(recorded) | set(expected), key=str)
            for line in differences(
                recorded.get(key, "<absent>"), expected.get(key, "<absent>"), f"{prefix}{key}."
            )
        ]
    if recorded == expected:
        return []
    return [f"{prefix.rstrip('.')}: {json.dumps(recorded)} -> {json.dumps(expected)}"]


def settings_reason(lines: list[str]) -> str:
    shown = "; ".join(lines[:3]) + (f"; {len(lines) - 3} more" if len(lines) > 3 else "")
    return f"made with other settings ({shown})"


# ------------------------------------------------------------------ what the config implies
def epochs(config: dict, arch: str, pretrained: bool) -> list[str]:
    settings = config_module.train_settings(config, arch)
    include = pretrained and config["evaluate"]["pretrained_baseline"]
    return [f"{e:04d}" for e in config_module.evaluated_epochs(settings, include)]


def fill(template: str, **wildcards: str) -> str:
    for key, value in wildcards.items():
        template = template.replace("{" + key + "}", value)
    return template


def seed_epochs(config: dict, arch: str) -> list[str]:
    """Another training seed's evaluated epochs: its own epoch 0 only with random init."""
    own_epoch0 = config_module.architecture(config, arch)["weights"] == "none"
    return epochs(config, arch, pretrained=own_epoch0)


def evaluation_outputs(stamp: str, metrics: str, scoring: dict) -> Iterator[tuple[str, str, dict]]:
    """An evaluation's metrics.json (scoring settings), profiles and predictions beside it."""
    yield stamp, metrics, {"metrics": scoring}
    folder = os.path.dirname(metrics)
    yield stamp, os.path.join(folder, PROFILES), {}
    yield stamp, os.path.join(folder, PREDICTIONS), {"rows_of": metrics}


def checks(config: dict, layout: Mapping, stamps: Mapping) -> Iterator[tuple[str, str, dict]]:
    """(stamp, output path, what to compare) for every output of the configured DAG; the
    comparison names the record to read ("validation", "cache", "checkpoint", "features",
    "metrics": the configuration's settings it must equal; "rows_of": the metrics.json whose
    queries a predictions.csv lists)."""
    data = config["data"]
    shape = list(data["image_shape"])
    report = {"channels": list(data["channels"]), "image_shape": shape}
    yield stamps["validation"], layout["validated_table"], {}
    yield stamps["validation"], layout["validation_report"], {"validation": report}
    cache_digest = config_module.digest(config["preprocess"])
    yield stamps["cache"], layout["cache_meta"], {"cache": cache_digest}
    yield stamps["cache"], layout["cache_table"], {}
    for array in layout["cache_arrays"]:
        yield stamps["cache"], array, {}
    scoring = config_module.scoring_settings(config)
    extraction = extraction_settings(config["evaluate"])
    for arch in config_module.architecture_names(config):
        model_kwargs = config_module.architecture(config, arch)["model_kwargs"]
        train = config_module.train_settings(config, arch)
        extracted = {"features": {"settings": extraction, "model_kwargs": model_kwargs}}
        # train.seed's run (the single-run paths), then each other seed's under seed_S/
        runs = [("", None, epochs(config, arch, pretrained=True))] + [
            ("_seed", str(seed), seed_epochs(config, arch))
            for seed in training_seeds.extra_seeds(train)
        ]
        for suffix, seed, evaluated in runs:
            s = {} if seed is None else {"seed": seed}
            trained = {
                "checkpoint": {
                    "train_settings": training_seeds.run_settings(
                        train, None if seed is None else int(seed)
                    ),
                    "model_kwargs": model_kwargs,
                }
            }
            for channel in config_module.training_channels(config):
                w = {"arch": arch, "channel": channel, **s}
                train_stamp = fill(stamps["train" + suffix], **w)
                for epoch in epochs(config, arch, pretrained=False):
                    meta = fill(layout["checkpoint_meta" + suffix], epoch=epoch, **w)
                    yield train_stamp, meta, trained
                    yield train_stamp, fill(layout["checkpoint" + suffix], epoch=epoch, **w), {}
                for epoch in evaluated:
                    features = fill(layout["features" + suffix], epoch=epoch, **w)
                    yield fill(stamps["extract" + suffix], **w), features, extracted
            for channel in config_module.evaluation_channels(config):
                w = {"arch": arch, "channel": channel, **s}
                for epoch in evaluated:
                    if channel == config_module.COMBINED:
                        features = fill(layout["features" + suffix], epoch=epoch, **w)
                        yield fill(stamps["extract" + suffix], **w), features, {}
                    metrics = fill(layout["metrics" + suffix], epoch=epoch, **w)
                    yield from evaluation_outputs(
                        fill(stamps["evaluate" + suffix], **w), metrics, scoring
                    )
    for arch in layout["attention_archs"]:
        for channel in config_module.training_channels(config):
            w = {"arch": arch, "channel": channel}
            yield fill(stamps["attention"], **w), fill(layout["attention_maps"], **w), {}
    for entry in config_module.baselines(config):
        metrics = fill(layout["baseline_metrics"], baseline=entry["name"])
        yield from evaluation_outputs(
            fill(stamps["baseline"], baseline=entry["name"]), metrics, scoring
        )


def recorded_difference(path: str, compare: dict) -> list[str]:
    """What differs between an output's recorded settings and the configuration's."""
    if "validation" in compare:
        record = json_record(path) or {}
        if "channels" not in record:
            return []
        got = {
            "channels": record["channels"],
            "image_shape": [record.get("image_height"), record.get("image_width")],
        }
        return differences(got, compare["validation"], "data.")
    if "cache" in compare:
        digest = (json_record(path) or {}).get("settings_digest")
        if digest is None or digest == compare["cache"]:
            return []
        return [f"preprocess: digest {digest} -> {compare['cache']}"]
    if "checkpoint" in compare:
        record = json_record(path) or {}
        expected = compare["checkpoint"]
        lines = []
        if "train_settings" in record:
            lines += differences(record["train_settings"], expected["train_settings"], "train.")
        if "model_kwargs" in record:
            lines += differences(record["model_kwargs"], expected["model_kwargs"], "model_kwargs.")
        return lines
    if "features" in compare:
        record = parquet_attrs(path).get(EXTRACTION_ATTR)
        if not isinstance(record, dict):
            return []
        expected = compare["features"]
        return differences(record.get("settings"), expected["settings"], "evaluate.") + (
            differences(record.get("model_kwargs"), expected["model_kwargs"], "model_kwargs.")
        )
    if "metrics" in compare:
        record = (json_record(path) or {}).get("settings")
        return [] if record is None else differences(record, compare["metrics"], "evaluate.")
    return []


# ------------------------------------------------------------------ the start-up pass
def stamp_templates(output_dir: str) -> dict[str, str]:
    """The stamp of each job kind (wildcards as in rules/common.smk)."""
    root = os.path.join(output_dir, STAMP_DIR)
    per_job = {
        "validation": os.path.join(root, "validation.stamp"),
        "cache": os.path.join(root, "cache.stamp"),
        "train": os.path.join(root, "train", "{arch}", "{channel}.stamp"),
        "extract": os.path.join(root, "extract", "{arch}", "{channel}.stamp"),
        "evaluate": os.path.join(root, "evaluate", "{arch}", "{channel}.stamp"),
        "attention": os.path.join(root, "attention", "{arch}", "{channel}.stamp"),
        "baseline": os.path.join(root, "baseline", "{baseline}.stamp"),
    }
    # another training seed's jobs (rules *_seeds): a stamp each, one folder deeper
    for kind in ("train", "extract", "evaluate"):
        folder = per_job[kind].removesuffix(".stamp")
        per_job[f"{kind}_seed"] = os.path.join(folder, "seed_{seed}.stamp")
    return per_job


def find(config: dict, layout: Mapping, stamps: Mapping) -> tuple[list[str], list[Finding]]:
    """Every stamp the configured jobs take as input, and the outputs to redo."""
    every, findings = [], []
    for stamp, path, compare in checks(config, layout, stamps):
        every.append(stamp)
        if not os.path.isfile(path):
            continue
        problem = unreadable(path)
        if problem:
            findings.append(Finding(stamp, path, f"cannot be read ({problem})"))
            continue
        if "rows_of" in compare:
            problem = missing_rows(path, compare["rows_of"])
            if problem:
                findings.append(Finding(stamp, path, f"is incomplete ({problem})"))
            continue
        lines = recorded_difference(path, compare)
        if lines:
            findings.append(Finding(stamp, path, settings_reason(lines)))
    return sorted(set(every)), findings


def refresh(every: list[str], findings: list[Finding]) -> None:
    """Create missing stamps empty and old (mtime 0: nothing reruns; empty, so the
    between-workflow cache keys the data-stage rules alike in every output_dir); rewrite those
    of the findings' jobs with the current time and a content of their own (those jobs rerun)."""
    redo: dict[str, list[Finding]] = {}
    for finding in findings:
        redo.setdefault(finding.stamp, []).append(finding)
    for stamp in every:
        path = Path(stamp)
        if stamp in redo:
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = [f"{f.path}\t{f.reason}\n" for f in redo[stamp]]
            write_text(path, f"rerun requested at {time.time_ns()} ns for:\n" + "".join(lines))
        elif not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, "")
            os.utime(path, ns=(0, 0))


def notes(findings: list[Finding]) -> list[str]:
    """One line per job to redo: its first output and why, and how many more."""
    by_stamp: dict[str, list[Finding]] = {}
    for finding in findings:
        by_stamp.setdefault(finding.stamp, []).append(finding)
    lines = []
    for group in by_stamp.values():
        more = f" (and {len(group) - 1} more of its outputs)" if len(group) > 1 else ""
        lines.append(f"note: {group[0].path} {group[0].reason}{more}: its job reruns")
    return lines
