"""The between-workflow cache through the SLURM profile, on a real single-node SLURM.

The profile with `cache: true` (the line slurm/config.yaml ships commented out) and
$SNAKEMAKE_OUTPUT_CACHE exported on the "login node": two experiments (other output_dir, other
training recipe) run the data stage. The second one's SLURM jobs must see the variable and
`--cache` (sbatch --export=ALL; Snakemake passes --cache on) and only link the stored files.

Skips only where it cannot run: not root, or SLURM/munge not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hang_guard import HANG_GUARD_S
from slurm_cluster import LocalSlurm, unavailable_reason
from test_slurm import edited_profile, slurm_overlay
from workflow_copy import DEMO_CONFIG, copy_repo, snakemake, write_overlay

from workflow_scripts import timed

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SUBMITTED_DATA_RULES = ["validate_images", "build_image_cache"]  # the others are local rules


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm_cache")) as slurm:
        yield slurm


def run_experiment(repo: Path, profile: Path, env: dict, name: str, train: dict) -> str:
    overlay = {**slurm_overlay(), "output_dir": f"results/{name}"}
    overlay["train"] = {**overlay["train"], **train}
    config = write_overlay(repo / f"{name}.yaml", overlay)
    targets = [f"results/{name}/cache/meta.json", f"results/{name}/data/validation_report.json"]
    result = snakemake(
        repo,
        "--profile",
        str(profile),
        "--configfile",
        DEMO_CONFIG,
        str(config),
        "--",
        *targets,
        timeout_s=HANG_GUARD_S,
        env=env,
    )
    return result.stdout + result.stderr


def test_second_experiment_takes_the_data_stage_from_the_cache_inside_slurm_jobs(cluster, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    profile = edited_profile(repo, tmp_path / "profile")
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["cache"] = True  # the commented-out line of slurm/config.yaml
    (profile / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {**cluster.env, "SNAKEMAKE_OUTPUT_CACHE": str(cache)}

    run_experiment(repo, profile, env, "first", {"epochs": 2})
    submitted_first = len(cluster.jobs())
    run_experiment(repo, profile, env, "second", {"epochs": 3, "seed": 1})
    jobs = cluster.jobs()

    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    assert len(jobs) - submitted_first == len(SUBMITTED_DATA_RULES)  # still submitted...
    for rule in SUBMITTED_DATA_RULES:
        first_log = (repo / "results/first/logs" / f"{rule}.log").read_text()
        assert timed.read_timing(first_log)["exit"] == 0, rule
        second_log = repo / "results/second/logs" / f"{rule}.log"
        # ...but ran no command: no timing line
        assert not second_log.exists() or timed.read_timing(second_log.read_text()) is None
    second_cache = repo / "results/second/cache"
    for name in ("meta.json", "images.parquet", "DAPI.npy", "Tubulin.npy", "Actin.npy"):
        link = second_cache / name
        assert link.is_symlink() and Path(os.readlink(link)).parent == cache, name
        assert link.read_bytes() == (repo / "results/first/cache" / name).read_bytes()
