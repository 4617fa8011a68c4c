"""Outputs made with other settings, or unreadable, found at start (issue 23, cases 4 and 15):
what is found, and the stamps that make Snakemake rerun their jobs. The workflow-level plans
are in tests/test_reruns.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from workflow_scripts import config as cfg
from workflow_scripts import stale_outputs, training_seeds

REPO = cfg.REPO_DIR


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_unreadable_outputs_are_those_their_readers_refuse(tmp_path):
    """Oracle: each reader the stages use (pandas, numpy, safetensors, json) on the whole file."""
    pd.DataFrame({"feat_0": np.arange(50.0)}).to_parquet(tmp_path / "f.parquet")
    np.save(tmp_path / "a.npy", np.arange(4096, dtype=np.uint16).reshape(4, 32, 32))
    save_file({"w": torch.arange(1000.0)}, tmp_path / "w.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({"nsc": 0.5, "notes": ["x" * 100]}))
    readers = {
        "f.parquet": pd.read_parquet,
        "a.npy": lambda p: np.load(p)[:].sum(),
        "w.safetensors": load_file,
        "m.json": lambda p: json.loads(Path(p).read_text()),
    }
    for name, read in readers.items():
        path = tmp_path / name
        read(path)
        assert stale_outputs.unreadable(str(path)) is None, name
        truncated(path)
        with pytest.raises(Exception):  # noqa: B017 (each reader raises its own type)
            read(path)
        assert stale_outputs.unreadable(str(path)), name
    assert stale_outputs.unreadable(str(tmp_path / "absent.parquet")) is None


@pytest.fixture
def finished(tmp_path):
    """The demo config and an output_dir whose checkpoints and metrics record it."""
    config = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])
    config["output_dir"] = str(tmp_path / "out")
    arch = cfg.architecture_names(config)[0]
    out = Path(config["output_dir"])
    meta = out / "train" / arch / "DAPI" / "epoch_0002.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(
        json.dumps(
            {
                "train_settings": training_seeds.run_settings(cfg.train_settings(config, arch)),
                "model_kwargs": cfg.architecture(config, arch)["model_kwargs"],
            }
        )
    )
    metrics = out / "eval" / arch / "DAPI" / "epoch_0002" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"settings": cfg.scoring_settings(config)}))
    return config, arch


def layout(output_dir: str) -> dict:
    """The paths of rules/common.smk."""
    out = Path(output_dir)
    return {
        "validated_table": str(out / "data" / "images.parquet"),
        "validation_report": str(out / "data" / "validation_report.json"),
        "cache_meta": str(out / "cache" / "meta.json"),
        "cache_table": str(out / "cache" / "images.parquet"),
        "cache_arrays": [str(out / "cache" / f"{c}.npy") for c in ("DAPI", "Tubulin", "Actin")],
        "checkpoint": str(out / "train/{arch}/{channel}/epoch_{epoch}.safetensors"),
        "checkpoint_meta": str(out / "train/{arch}/{channel}/epoch_{epoch}.json"),
        "features": str(out / "features/{arch}/{channel}/epoch_{epoch}.parquet"),
        "metrics": str(out / "eval/{arch}/{channel}/epoch_{epoch}/metrics.json"),
        "checkpoint_seed": str(
            out / "train/{arch}/{channel}/seed_{seed}/epoch_{epoch}.safetensors"
        ),
        "checkpoint_meta_seed": str(out / "train/{arch}/{channel}/seed_{seed}/epoch_{epoch}.json"),
        "features_seed": str(out / "features/{arch}/{channel}/seed_{seed}/epoch_{epoch}.parquet"),
        "metrics_seed": str(out / "eval/{arch}/{channel}/seed_{seed}/epoch_{epoch}/metrics.json"),
        "attention_maps": str(out / "attention/{arch}/{channel}/maps.npz"),
        "attention_archs": ["vit_small_patch16_dinov3.lvd1689m"],
        "baseline_metrics": str(out / "eval/baselines/{baseline}/metrics.json"),
    }


def find(config):
    stamps = stale_outputs.stamp_templates(config["output_dir"])
    return stale_outputs.find(config, layout(config["output_dir"]), stamps)


def test_outputs_recording_the_configuration_are_left_alone(finished):
    config, arch = finished
    every, findings = find(config)
    assert findings == []
    stamps = stale_outputs.stamp_templates(config["output_dir"])
    assert stamps["train"].format(arch=arch, channel="rgb") in every
    assert stamps["evaluate"].format(arch=arch, channel="combined") in every
    assert stamps["baseline"].format(baseline="handcrafted") in every


def test_changed_settings_name_the_output_its_stamp_and_what_changed(finished):
    config, arch = finished
    recorded_lr, recorded_scope = (
        config["train"]["optimizer"]["lr"],
        config["evaluate"]["tvn"]["scope"],
    )
    config["train"]["optimizer"]["lr"] = 0.125
    config["evaluate"]["tvn"]["scope"] = "per_batch"
    _, findings = find(config)
    out = config["output_dir"]
    assert [(f.stamp, f.path) for f in findings] == [
        (f"{out}/.rerun/train/{arch}/DAPI.stamp", f"{out}/train/{arch}/DAPI/epoch_0002.json"),
        (
            f"{out}/.rerun/evaluate/{arch}/DAPI.stamp",
            f"{out}/eval/{arch}/DAPI/epoch_0002/metrics.json",
        ),
    ]
    assert f"train.optimizer.lr: {recorded_lr} -> 0.125" in findings[0].reason
    assert f'evaluate.tvn.scope: "{recorded_scope}" -> "per_batch"' in findings[1].reason


def test_refresh_makes_old_empty_stamps_and_rewrites_only_those_of_findings(finished):
    config, arch = finished
    every, _ = find(config)
    stale_outputs.refresh(every, [])
    assert all(os.stat(s).st_mtime_ns == 0 and os.path.getsize(s) == 0 for s in every)
    stamp = every[0]
    finding = stale_outputs.Finding(stamp, "some/output.json", "cannot be read (x)")
    stale_outputs.refresh(every, [finding])
    first = Path(stamp).read_text()
    assert "some/output.json\tcannot be read (x)" in first and os.stat(stamp).st_mtime_ns > 0
    stale_outputs.refresh(every, [finding])
    # Snakemake counts a newer input as updated only when its checksum changed too
    assert Path(stamp).read_text() != first
    assert all(os.stat(s).st_mtime_ns == 0 for s in every[1:])
    assert stale_outputs.notes([finding]) == [
        "note: some/output.json cannot be read (x): its job reruns"
    ]


def checkpoint_record(config: dict, arch: str, seed: int | None) -> str:
    """What the training CLI records: one run's settings (rules: training_seeds.run_settings)."""
    settings = training_seeds.run_settings(cfg.train_settings(config, arch), seed)
    model_kwargs = cfg.architecture(config, arch)["model_kwargs"]
    return json.dumps({"train_settings": settings, "model_kwargs": model_kwargs})


@pytest.mark.parametrize("weights", ["none", "hub"])
def test_another_training_seed_has_stamps_of_its_own_and_its_own_settings(finished, weights):
    """train.seeds: the first seed's checkpoints record one run's settings (no `seeds` list):
    not a difference; seed 3's files under seed_3/ are compared with seed 3's settings, and a
    difference there reruns seed 3's jobs only (their own stamps)."""
    config, arch = finished
    config["train"]["seeds"] = [config["train"]["seed"], 3]
    config["architectures"][0]["weights"] = weights
    out = Path(config["output_dir"])
    (out / "train" / arch / "DAPI" / "epoch_0002.json").write_text(
        checkpoint_record(config, arch, None)
    )
    seed_meta = out / "train" / arch / "DAPI" / "seed_3" / "epoch_0002.json"
    seed_meta.parent.mkdir(parents=True)
    seed_meta.write_text(checkpoint_record(config, arch, 3))
    every, findings = find(config)
    assert findings == []
    stamps = stale_outputs.stamp_templates(config["output_dir"])
    for kind, channel in (("train", "rgb"), ("extract", "combined"), ("evaluate", "combined")):
        assert stamps[f"{kind}_seed"].format(arch=arch, channel=channel, seed=3) in every
    assert stamps["attention"].format(arch=arch, channel="DAPI") in every

    # the first seed's record where seed 3's belongs (e.g. folders copied by hand)
    seed_meta.write_text(checkpoint_record(config, arch, None))
    _, findings = find(config)
    assert [(f.stamp, f.path) for f in findings] == [
        (f"{out}/.rerun/train/{arch}/DAPI/seed_3.stamp", str(seed_meta))
    ]
    assert f"train.seed: {config['train']['seed']} -> 3" in findings[0].reason

    # epoch 0 of another seed exists only with random init (pretrained: one backbone)
    epoch0 = out / "features" / arch / "DAPI" / "seed_3" / "epoch_0000.parquet"
    epoch0.parent.mkdir(parents=True)
    epoch0.write_bytes(b"PAR1 cut short")
    _, findings = find(config)
    assert (str(epoch0) in {f.path for f in findings}) == (weights == "none")


def test_truncated_evaluation_outputs_and_attention_maps_rerun_their_own_jobs(finished):
    """Beside metrics.json: profiles.parquet (read at the header, as parquet) and predictions.csv,
    whose complete rows must be metrics.json's queries (a truncated CSV still parses: the
    summary would refuse it as another evaluation's); the attention maps' .npz."""
    config, arch = finished
    run = Path(config["output_dir"]) / "eval" / arch / "DAPI" / "epoch_0002"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(n_treatments_nsc=30, n_treatments_nscb=25)
    (run / "metrics.json").write_text(json.dumps(metrics))
    rows = pd.DataFrame({"protocol": ["nsc"] * 30 + ["nscb"] * 25, "treatment": "t@1"})
    rows.to_csv(run / "predictions.csv", index=False)
    pd.DataFrame({"feat_0000": np.arange(55.0)}).to_parquet(run / "profiles.parquet")
    maps = Path(config["output_dir"]) / "attention" / arch / "DAPI" / "maps.npz"
    maps.parent.mkdir(parents=True)
    np.savez_compressed(maps, attention=np.random.default_rng(0).random((2, 3, 4, 4)))
    assert find(config)[1] == []

    for path in (run / "predictions.csv", run / "profiles.parquet", maps):
        truncated(path)
    assert pd.read_csv(run / "predictions.csv").shape[0] < 55  # it parses, shorter
    _, findings = find(config)
    found = {(f.stamp, f.path): f.reason for f in findings}
    out = config["output_dir"]
    assert set(found) == {
        (f"{out}/.rerun/evaluate/{arch}/DAPI.stamp", str(run / "profiles.parquet")),
        (f"{out}/.rerun/evaluate/{arch}/DAPI.stamp", str(run / "predictions.csv")),
        (f"{out}/.rerun/attention/{arch}/DAPI.stamp", str(maps)),
    }
    lines = len((run / "predictions.csv").read_bytes().splitlines()) - 2  # header, cut line
    assert found[(f"{out}/.rerun/evaluate/{arch}/DAPI.stamp", str(run / "predictions.csv"))] == (
        f"is incomplete ({lines} complete rows, 55 queries in metrics.json)"
    )
