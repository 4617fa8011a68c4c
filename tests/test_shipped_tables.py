"""The official BBBC021 metadata tables ship in data/bbbc021/: unchanged, the default of
config.yaml, and enough (with an image folder) for a clone alone to plan the real experiment."""

from __future__ import annotations

import hashlib
import re

import pandas as pd
import pytest
from slurm_plan import local_rules, submissions
from workflow_copy import REPO, copy_repo, snakemake, write_overlay

from workflow_scripts import config as cfg

TABLES = REPO / "data" / "bbbc021"


def test_tables_are_the_published_files_listed_with_their_checksums():
    listed = dict(
        re.findall(
            r"`(BBBC021_v1_\w+\.csv(?:\.gz)?)` \| .*? \| `([0-9a-f]{64})`",
            (TABLES / "README.md").read_text(),
        )
    )
    assert set(listed) == {"BBBC021_v1_image.csv.gz", "BBBC021_v1_moa.csv"}
    for name, checksum in listed.items():
        assert hashlib.sha256((TABLES / name).read_bytes()).hexdigest() == checksum, name
    images = pd.read_csv(TABLES / "BBBC021_v1_image.csv.gz")
    moa = pd.read_csv(TABLES / "BBBC021_v1_moa.csv")
    assert len(images) == 13200 and images["Image_Metadata_Plate_DAPI"].nunique() == 55
    assert len(moa) == 104  # 103 treatments + DMSO


def test_config_yaml_reads_the_shipped_tables_by_a_path_inside_the_repository():
    official = cfg.load([REPO / "config.yaml"])["data"]["official"]
    for key in ("image_table", "moa_table"):
        path = official[key]
        assert not path.startswith(("/", "..")), f"{key}: {path}"
        assert (REPO / path).resolve().parent == TABLES.resolve()


@pytest.mark.parametrize("seeds", [None, [0, 1, 2]], ids=["one seed", "three seeds"])
def test_a_clone_alone_plans_the_real_experiment_with_only_the_image_root_set(tmp_path, seeds):
    """A copy of the repository in an empty folder (nothing beside it), the default config and
    an (empty) image folder: the dry run through the SLURM profile plans all 28 submissions.
    Each more training seed adds its trainings only (its extractions and evaluations join the
    groups of their architecture and channel)."""
    repo = copy_repo(tmp_path / "clone")
    images = tmp_path / "images"
    images.mkdir()
    overlay = {"data": {"official": {"image_root": str(images)}}}
    if seeds:
        overlay["train"] = {"seeds": seeds}
    overlay = write_overlay(tmp_path / "images.yaml", overlay)
    result = snakemake(repo, "--dry-run", "--profile", "slurm", "--configfile", str(overlay))
    counts = submissions(result.stdout + result.stderr, local_rules(repo))
    # 2 architectures x 4 training channels (DAPI, Tubulin, Actin, rgb), + combined for scoring
    expected = {
        "train_vit_small_patch16_dinov3_lvd1689m": 4,
        "train_vit_base_patch16_dinov3_lvd1689m": 4,
        "extract (group)": 8,
        "evaluate (group)": 10,
        "validate_images": 1,
        "build_image_cache": 1,
    }
    if seeds:
        expected["train_vit_small_patch16_dinov3_lvd1689m_seeds"] = 4 * (len(seeds) - 1)
        expected["train_vit_base_patch16_dinov3_lvd1689m_seeds"] = 4 * (len(seeds) - 1)
    assert counts == expected
    assert sum(counts.values()) == 28 + 8 * (len(seeds or [0]) - 1)
    # hub weights: every seed starts from the same backbone, whose epoch 0 is extracted once
    assert "rule extract_pretrained_seeds:" not in result.stdout + result.stderr
    assert (
        "rule extract_trained_vit_small_patch16_dinov3_lvd1689m_seeds:"
        in result.stdout + result.stderr
    ) == bool(seeds)
