"""Snakemake's between-workflow cache shares the data stage and hub weights between experiments.

Two demo experiments with different output_dirs and different training settings: the first builds
the data stage with `--cache` (and stores it), the second takes every data-stage output from the
cache without running a command, and its training reads the cached arrays. The oracle is a third
experiment built from scratch without `--cache`: its arrays must be byte-identical to the cached
ones. Changing a preprocessing setting (`resize_factor`) must miss the cache for the image cache
only. Hub weights: two architectures in one weights_dir, then a second weights_dir.
"""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hang_guard import HANG_GUARD_S
from workflow_copy import DEMO_CONFIG, copy_repo, demo_config, snakemake, write_overlay

from workflow_scripts import output_cache, timed
from workflow_scripts.errors import InputError

DATA_RULES = ["generate_demo_data", "prepare_metadata", "validate_images", "build_image_cache"]
CHANNELS = demo_config().get("data", {}).get("channels", ["DAPI", "Tubulin", "Actin"])
ARCH = demo_config()["architectures"][0]["name"]
FIRST = {"output_dir": "results/first"}  # the demo recipe
SECOND = {  # another experiment: other output_dir, other training recipe
    "output_dir": "results/second",
    "channel_modes": ["per_channel"],
    "train": {
        "epochs": 1,
        "checkpoint_every": 1,
        "optimizer": {"lr": 3.0e-4, "warmup_epochs": 0},
        "loss": {"warmup_teacher_temp_epochs": 0},
    },
}
FRESH = {**SECOND, "output_dir": "results/fresh"}  # built without the cache: the oracle
RESIZED = {"output_dir": "results/resized", "preprocess": {"resize_factor": 0.5}}


def data_targets(output_dir: str) -> list[str]:
    return [f"{output_dir}/cache/meta.json", f"{output_dir}/data/validation_report.json"]


def data_outputs(out: Path) -> list[Path]:
    """Every output of the four data-stage rules (the demo images folder included)."""
    return [
        out / "demo_data" / "BBBC021_v1_image.csv",
        out / "demo_data" / "BBBC021_v1_moa.csv",
        out / "demo_data" / "images",
        out / "data" / "images_prepared.parquet",
        out / "data" / "images.parquet",
        out / "data" / "validation_report.json",
        out / "data" / "validation_report.md",
        out / "cache" / "images.parquet",
        out / "cache" / "meta.json",
        *[out / "cache" / f"{ch}.npy" for ch in CHANNELS],
    ]


def run(workdir: Path, overlay: dict, name: str, *targets: str, cache: Path | None) -> str:
    config = write_overlay(workdir / f"{name}.yaml", overlay)
    args = ["--cores", "2", "--configfile", DEMO_CONFIG, str(config)]
    env = None
    if cache is not None:
        args.append("--cache")
        env = {"SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    result = snakemake(workdir, *args, "--", *targets, timeout_s=HANG_GUARD_S, env=env)
    return result.stdout + result.stderr


def ran_its_command(out: Path, rule: str) -> bool:
    """A job that ran wrote its timing line (workflow_scripts.timed) into its log; a job taken
    from the cache runs no command and leaves the log empty."""
    log = out / "logs" / f"{rule}.log"
    return log.is_file() and timed.read_timing(log.read_text()) is not None


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    root = tmp_path_factory.mktemp("between_workflow_cache")
    workdir = copy_repo(root / "repo")
    cache = root / "cache"
    cache.mkdir()
    logs = {
        "first": run(workdir, FIRST, "first", *data_targets("results/first"), cache=cache),
        "second": run(
            workdir,
            SECOND,
            "second",
            *data_targets("results/second"),
            f"results/second/train/{ARCH}/DAPI/log.jsonl",
            cache=cache,
        ),
        "fresh": run(workdir, FRESH, "fresh", *data_targets("results/fresh"), cache=None),
        "resized": run(workdir, RESIZED, "resized", *data_targets("results/resized"), cache=cache),
    }
    return workdir, cache, logs


def test_first_experiment_builds_and_stores_the_data_stage(experiments):
    workdir, cache, logs = experiments
    out = workdir / "results/first"
    for rule in DATA_RULES:
        assert ran_its_command(out, rule), rule
    for path in data_outputs(out):
        assert path.is_symlink() and Path(os.readlink(path)).parent == cache, path
        assert f"Moving output file {path.relative_to(workdir)} to cache." in logs["first"]


def test_second_experiment_runs_no_data_stage_job(experiments):
    workdir, cache, logs = experiments
    out = workdir / "results/second"
    for rule in DATA_RULES:
        assert not ran_its_command(out, rule), f"{rule} ran instead of coming from the cache"
    assert "to cache." not in logs["second"]  # nothing new stored
    for path in data_outputs(out):
        if path.name == "images":  # a fetched folder is rebuilt as links to its entries
            weeks = sorted(p for p in path.iterdir() if p.name != ".snakemake_timestamp")
            assert weeks and all(Path(os.readlink(w)).parent.parent == cache for w in weeks)
            continue
        assert path.is_symlink() and Path(os.readlink(path)).parent == cache, path
        assert f"Symlinking output file {path.relative_to(workdir)} from cache." in logs["second"]


def test_cached_arrays_are_byte_identical_to_a_fresh_build(experiments):
    workdir, _, _ = experiments
    second, fresh = workdir / "results/second", workdir / "results/fresh"
    for rule in DATA_RULES:
        assert ran_its_command(fresh, rule), rule
    assert not (fresh / "cache" / "meta.json").is_symlink()
    for name in [f"{ch}.npy" for ch in CHANNELS] + ["meta.json"]:
        assert filecmp.cmp(second / "cache" / name, fresh / "cache" / name, shallow=False), name


def test_second_experiment_trains_on_the_cached_arrays(experiments):
    workdir, _, _ = experiments
    train_dir = workdir / "results/second/train" / ARCH / "DAPI"
    assert len((train_dir / "log.jsonl").read_text().splitlines()) == SECOND["train"]["epochs"]
    assert (train_dir / "epoch_0001.safetensors").is_file()


def test_a_finished_cached_experiment_plans_nothing(experiments):
    workdir, cache, _ = experiments
    config = write_overlay(workdir / "second.yaml", SECOND)
    result = snakemake(
        workdir,
        "--cores",
        "1",
        "--cache",
        "--dry-run",
        "--configfile",
        DEMO_CONFIG,
        str(config),
        "--",
        *data_targets("results/second"),
        env={"SNAKEMAKE_OUTPUT_CACHE": str(cache)},
    )
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_preprocessing_change_misses_the_cache_for_the_image_cache_only(experiments):
    workdir, _, logs = experiments
    out = workdir / "results/resized"
    for rule in ("generate_demo_data", "prepare_metadata", "validate_images"):
        assert not ran_its_command(out, rule), f"{rule} does not depend on resize_factor"
    assert ran_its_command(out, "build_image_cache")
    assert "Moving output file results/resized/cache/DAPI.npy to cache." in logs["resized"]
    full = np.load(workdir / "results/first/cache/DAPI.npy", mmap_mode="r")
    half = np.load(out / "cache" / "DAPI.npy", mmap_mode="r")
    assert half.shape == (full.shape[0], full.shape[1] // 2, full.shape[2] // 2)


# A stand-in for the hub download (tests have no network): writes the architecture's name.
FETCH_STAND_IN = '''"""Test stand-in for the hub download: the file holds the arch's name."""
import argparse
import pathlib

parser = argparse.ArgumentParser()
parser.add_argument("--arch")
parser.add_argument("--out")
args = parser.parse_args()
pathlib.Path(args.out).write_text(args.arch)
'''
HUB_ARCHS = ["vit_small_patch16_dinov3.lvd1689m", "vit_base_patch16_dinov3.lvd1689m"]


def test_hub_weights_are_fetched_once_per_architecture_across_weights_dirs(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    (workdir / "workflow_scripts/model/fetch_weights.py").write_text(FETCH_STAND_IN)
    cache = tmp_path / "cache"
    cache.mkdir()
    archs = [{"name": a, "weights": "hub", "gpus": 0} for a in HUB_ARCHS]
    logs = {}
    for name in ("w1", "w2"):
        overlay = {"output_dir": f"results/{name}", "weights_dir": name, "architectures": archs}
        logs[name] = run(
            workdir, overlay, name, *[f"{name}/{a}.safetensors" for a in HUB_ARCHS], cache=cache
        )
    for arch in HUB_ARCHS:
        first = workdir / "w1" / f"{arch}.safetensors"
        second = workdir / "w2" / f"{arch}.safetensors"
        # each architecture its own entry (the key holds params, not wildcards)
        assert first.read_text() == second.read_text() == arch
        assert f"Moving output file w1/{arch}.safetensors to cache." in logs["w1"]
        assert f"Symlinking output file w2/{arch}.safetensors from cache." in logs["w2"]
    assert "to cache." not in logs["w2"]


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "is not set"),
        ("", "is not set"),
        ("relative/cache", "must be an absolute path"),
        ("/no/such/folder/17", "no such folder"),
    ],
)
def test_cache_location_errors_name_the_variable(value, message):
    environ = {} if value is None else {"SNAKEMAKE_OUTPUT_CACHE": value}
    with pytest.raises(InputError, match=message) as err:
        output_cache.check_location(environ)
    assert "$SNAKEMAKE_OUTPUT_CACHE" in str(err.value)


def test_cache_location_accepts_a_writable_absolute_folder(tmp_path):
    assert output_cache.check_location({"SNAKEMAKE_OUTPUT_CACHE": str(tmp_path)}) == str(tmp_path)


def test_cache_on_without_a_location_stops_before_any_job(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_OUTPUT_CACHE"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--cache", "--configfile", DEMO_CONFIG],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode != 0
    assert "$SNAKEMAKE_OUTPUT_CACHE is not set" in result.stdout + result.stderr
    assert not (workdir / "results").exists()
