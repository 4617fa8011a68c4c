"""Helpers for tests that run Snakemake on a throwaway copy of this repository.

Tests never run Snakemake in the real tree: its .snakemake/ metadata and results/ belong to the
user, and a test that edits a source file must edit a copy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hang_guard import HANG_GUARD_S
from repo_copy import REPO, copy_repo  # noqa: F401  (re-exported for the tests)

DEMO_CONFIG = "config/demo.yaml"


def train_rule(arch: str) -> str:
    """Name of an architecture's training rule (rules/train.smk: one rule per architecture)."""
    return "train_" + re.sub(r"\W", "_", arch)


def extract_trained_rule(arch: str) -> str:
    """Name of the rule extracting an architecture's trained epochs (rules/evaluate.smk: one
    job per channel for all its epochs; epoch 0 is rule extract_pretrained)."""
    return "extract_trained_" + re.sub(r"\W", "_", arch)


def is_extraction(rule: str) -> bool:
    return rule == "extract_pretrained" or rule.startswith("extract_trained_")


def demo_config() -> dict:
    with open(REPO / DEMO_CONFIG) as fh:
        return yaml.safe_load(fh)


def write_overlay(path: Path, overlay: dict) -> Path:
    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return path


def snakemake(
    workdir: Path, *args: str, timeout_s: float = HANG_GUARD_S, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `workdir`; raises with Snakemake's output on failure."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(
        cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}): {' '.join(args)}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


@dataclass(frozen=True)
class PlannedOutput:
    """One row of `snakemake --summary`: an output file, its rule and whether a run rewrites it."""

    rule: str
    path: str  # relative to output_dir
    status: str
    pending: bool

    @property
    def arch(self) -> str | None:
        parts = self.path.split("/")
        return parts[1] if parts[0] in ("train", "features", "eval", "attention") else None

    @property
    def epoch(self) -> int | None:
        match = re.search(r"epoch_(\d{4})", self.path)
        return int(match.group(1)) if match else None


def summary(workdir: Path, output_dir: str, *args: str) -> list[PlannedOutput]:
    """Every output of the DAG with Snakemake's plan for it (`--summary`, a dry run)."""
    out = snakemake(workdir, "--cores", "1", "--summary", *args).stdout
    rows = []
    prefix = output_dir.rstrip("/") + "/"
    for line in out.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) != 6:
            continue
        path, _date, rule, _log, status, plan = fields
        assert path.startswith(prefix), f"output outside output_dir: {path}"
        rows.append(PlannedOutput(rule, path[len(prefix) :], status, plan == "update pending"))
    assert rows, f"no outputs in --summary:\n{out}"
    return rows


def write_placeholder(path: Path) -> None:
    """The smallest file of its format that reads without error (the workflow reads JSON,
    parquet, .npy, .npz and safetensors outputs at start: workflow_scripts/stale_outputs.py);
    records no settings, so it is never compared with the configuration. Other formats: empty."""
    if path.suffix == ".json":
        path.write_text("{}")
    elif path.suffix == ".parquet":
        pd.DataFrame({"x": []}).to_parquet(path)
    elif path.suffix == ".npy":
        np.save(path, np.zeros(0, dtype=np.uint16))
    elif path.suffix == ".npz":
        np.savez(path)
    elif path.suffix == ".safetensors":
        path.write_bytes(len(b"{}").to_bytes(8, "little") + b"{}")
    else:
        path.write_bytes(b"")


def mark_up_to_date(workdir: Path, output_dir: str, *args: str) -> None:
    """Put the workdir in the state a finished run leaves, without running anything: placeholder
    output files, then `--touch --forceall`, which records each job's provenance (params, code,
    input set, software environment) and touches outputs in DAG order, as a real run would."""
    for row in summary(workdir, output_dir, *args):
        path = workdir / output_dir / row.path
        if not path.suffix:  # a directory() output (the demo's images folder): files have suffixes
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_placeholder(path)
    snakemake(workdir, "--cores", "1", "--touch", "--forceall", *args)
