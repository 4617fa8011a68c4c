"""A real SLURM in the default test run: the data stage through the SLURM profile.

tests/test_slurm.py runs the whole demo pipeline through the profile (minutes; CI runs it with
the slow tests). This module keeps a real-SLURM check in the README's test command at the cost
of two short jobs: a local single-node SLURM (tests/slurm_cluster.py), the profile as a user
edits it, and the data stage of the small SLURM demo. Skips only where it cannot run: not root,
or SLURM/munge not installed.
"""

from __future__ import annotations

import subprocess

import pytest
from slurm_cluster import LocalSlurm, unavailable_reason
from test_slurm import (
    OUTPUT_DIR,
    PARTITION,
    edited_profile,
    profile_resources,
    slurm_logs,
    slurm_overlay,
    submitted,
    time_limit,
)
from workflow_copy import DEMO_CONFIG, copy_repo, snakemake, write_overlay

pytestmark = pytest.mark.slurm

CLUSTER_RULES = ("validate_images", "build_image_cache")  # the data stage's non-local rules


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with LocalSlurm(tmp_path_factory.mktemp("slurm_data"), nodes=1) as slurm:
        yield slurm


def test_data_stage_runs_as_slurm_jobs_with_the_profiles_resources(cluster, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    profile = edited_profile(repo, tmp_path / "profile")
    overlay = write_overlay(tmp_path / "overlay.yaml", slurm_overlay())
    target = f"{OUTPUT_DIR}/cache/meta.json"
    args = [target, "--profile", str(profile), "--configfile", DEMO_CONFIG, str(overlay)]
    try:
        snakemake(repo, *args, env=cluster.env)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise AssertionError(f"{err}\n{slurm_logs(repo)}\n{cluster.logs()}") from None
    assert (repo / target).is_file()
    jobs = submitted(cluster)
    # the demo generator and prepare_metadata are local rules: never submitted
    assert sorted(job["rule"] for job in jobs) == sorted(CLUSTER_RULES)
    for job in jobs:
        asked = profile_resources(job["rule"])
        assert job["JobState"] == "COMPLETED", job
        assert job["Partition"] == PARTITION  # the user's profile edit reached sbatch
        assert job["TimeLimit"] == time_limit(asked["runtime"])
        assert f"mem={asked['mem_mb']}M" in job["TRES"]
        assert "gpu" not in job.get("TRES", "")  # CPU rules ask for no GPU
    # a second run plans nothing: the jobs' provenance came back from the cluster
    result = snakemake(repo, *args, "--dry-run", env=cluster.env)
    assert "Nothing to be done" in result.stdout + result.stderr
