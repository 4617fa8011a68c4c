"""README's first command, end to end: the demo config from data generation to report.html.

The longest test (~5 min on 2 cores): it runs every stage for real on CPU, exactly as a user
does, in a copy of the repository.
"""

from __future__ import annotations

import json
import math
import zipfile

import pandas as pd
import pytest
from hang_guard import HANG_GUARD_S
from workflow_copy import DEMO_CONFIG, copy_repo, demo_config, snakemake

from workflow_scripts import config as cfg

OUTPUT_DIR = "results/demo_test"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    workdir = copy_repo(tmp_path_factory.mktemp("demo") / "repo")
    snakemake(
        workdir,
        "--cores",
        "2",
        "--configfile",
        DEMO_CONFIG,
        "--config",
        f"output_dir={OUTPUT_DIR}",
        timeout_s=HANG_GUARD_S,
    )
    return workdir, workdir / OUTPUT_DIR


def test_summary_has_every_arch_channel_and_epoch(demo_run):
    _, out = demo_run
    config = cfg.load([cfg.REPO_DIR / "config.yaml", cfg.REPO_DIR / DEMO_CONFIG])
    summary = pd.read_csv(out / "summary" / "summary.csv")
    summary = summary[summary["kind"] == "model"]  # the baseline: its own test below
    expected = {
        (arch, channel, epoch)
        for arch in cfg.architecture_names(config)
        for channel in cfg.evaluation_channels(config)
        for epoch in cfg.evaluated_epochs(cfg.train_settings(config, arch), include_pretrained=True)
    }
    assert set(zip(summary["arch"], summary["channel"], summary["epoch"])) == expected
    for metric in ("nsc", "nscb", "map_nsc", "map_nscb"):
        assert summary[metric].between(0, 1).all() and summary[metric].notna().all()
    # the demo's design: one MoA lives in a single week, so NSCB has fewer treatments
    assert (summary["n_treatments_nscb"] < summary["n_treatments_nsc"]).all()
    report = (out / "summary" / "report.html").read_text()
    assert "<img" in report and "vit_small_patch16_dinov3.lvd1689m" in report


def test_configured_baseline_is_a_row_of_the_summary_and_the_report(demo_run):
    _, out = demo_run
    summary = pd.read_csv(out / "summary" / "summary.csv")
    (baseline,) = cfg.baselines(
        cfg.load([cfg.REPO_DIR / "config.yaml", cfg.REPO_DIR / DEMO_CONFIG])
    )
    row = summary[summary["kind"] == "baseline"]
    assert list(zip(row["arch"], row["channel"])) == [(baseline["name"], "baseline")]
    scored = json.loads(
        (out / "eval" / "baselines" / baseline["name"] / "metrics.json").read_text()
    )
    assert row["nsc"].iloc[0] == pytest.approx(scored["nsc"])
    assert scored["n_images"] == summary["n_images"].iloc[0]  # every cache image has a profile
    report = (out / "summary" / "report.html").read_text()
    assert f"{baseline['name']}</th>" in report and "random init" in report
    assert "Raw-field pixels per model pixel" in report


def test_combined_features_are_the_channels_side_by_side(demo_run):
    _, out = demo_run
    arch = demo_config()["architectures"][0]["name"]
    features = out / "features" / arch
    combined = pd.read_parquet(features / "combined" / "epoch_0004.parquet")
    dapi = pd.read_parquet(features / "DAPI" / "epoch_0004.parquet")
    n_dapi = sum(c.startswith("feat_") for c in dapi.columns)
    assert sum(c.startswith("feat_") for c in combined.columns) == 3 * n_dapi
    assert (combined["image_id"] == dapi["image_id"]).all()


def test_training_logged_every_epoch_and_checkpoints_record_their_origin(demo_run):
    _, out = demo_run
    arch = demo_config()["architectures"][0]["name"]
    run_dir = out / "train" / arch / "rgb"
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    assert all(math.isfinite(line["loss"]) for line in lines)
    meta = json.loads((run_dir / "epoch_0004.json").read_text())
    assert (meta["arch"], meta["channel"], meta["epoch"]) == (arch, "rgb", 4)


def test_second_run_does_nothing(demo_run):
    workdir, _ = demo_run
    result = snakemake(
        workdir, "-n", "--configfile", DEMO_CONFIG, "--config", f"output_dir={OUTPUT_DIR}"
    )
    assert "Nothing to be done" in result.stdout + result.stderr


def test_snakemake_report_bundles_the_summary_with_captions(demo_run):
    workdir, _ = demo_run
    bundle = workdir / "report.zip"
    snakemake(
        workdir,
        "--configfile",
        DEMO_CONFIG,
        "--config",
        f"output_dir={OUTPUT_DIR}",
        "--report",
        str(bundle),
        timeout_s=HANG_GUARD_S,
    )
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
    # tagged outputs land under report/data/raw/; report/report.html is Snakemake's own index
    bundled = {name.rsplit("/", 1)[-1] for name in names if "/data/raw/" in name}
    assert {"summary.csv", "best_epochs.csv", "report.html"} <= bundled
    figures = {name for name in bundled if name.endswith(".png")}
    assert {"nsc_vs_epoch.png", "nscb_vs_epoch.png", "confusion_last_epoch.png"} <= figures
    arch = demo_config()["architectures"][0]["name"]
    assert f"embedding_map_{arch}_combined.png" in figures
    assert f"attention_{arch}_rgb.jpg" in bundled


def test_report_has_the_embedding_and_attention_maps(demo_run):
    _, out = demo_run
    arch = demo_config()["architectures"][0]["name"]
    report = (out / "summary" / "report.html").read_text()
    channels = ["DAPI", "Tubulin", "Actin", "rgb"]
    for channel in [*channels, "combined"]:
        assert f'alt="embedding_map_{arch}_{channel}.png"' in report
        points = pd.read_csv(out / "summary" / "figures" / f"embedding_map_{arch}_{channel}.csv")
        predictions = pd.read_csv(out / "eval" / arch / channel / "epoch_0004" / "predictions.csv")
        shown = points[points["epoch"] == 4]
        assert sorted(shown["treatment"]) == sorted(
            predictions.query("protocol == 'nsc'")["treatment"]
        )
    for channel in channels:  # the ViT's trained channels: field, epoch 0 and 4, per head
        assert f'alt="attention_{arch}_{channel}.jpg"' in report
        for epoch in (0, 4):
            assert f'alt="attention_heads_{arch}_{channel}_epoch_{epoch:04d}.jpg"' in report


def test_demo_training_learns_and_is_not_collapsed(demo_run):
    """The demo's tiny random-init ViT (layer-scale init 1.0) must not collapse. With timm's
    DINOv3 init (1e-5) its CLS output hardly depended on the image: every channel's loss was the
    same to 1e-5, the teacher's entropy went to ln K and its mutual information to 0."""
    _, out = demo_run
    config = cfg.load([cfg.REPO_DIR / "config.yaml", cfg.REPO_DIR / DEMO_CONFIG])
    arch = cfg.architecture_names(config)[0]
    ln_k = math.log(cfg.train_settings(config, arch)["head"]["out_dim"])
    last = {}
    for channel in cfg.training_channels(config):
        lines = [
            json.loads(x)
            for x in (out / "train" / arch / channel / "log.jsonl").read_text().splitlines()
        ]
        last[channel] = lines[-1]
        assert all(line["collapse"] is None for line in lines), channel
        # measured at epoch 4: 0.72-0.77 ln K; collapsed: 0.9995 ln K
        assert last[channel]["teacher_entropy"] < 0.85 * ln_k, channel
        assert last[channel]["teacher_mutual_info"] > 0.3, channel  # 0.69-0.74; collapsed 0.0000
        assert last[channel]["cls_relative_std"] > 1e-2, channel  # 0.37-0.41; collapsed ~1e-6
    losses = [line["loss"] for line in last.values()]
    assert max(losses) - min(losses) > 0.1  # 5.30-5.93; collapsed: equal to 1e-5
    summary = pd.read_csv(out / "summary" / "summary.csv", keep_default_na=False)
    assert (summary["training_collapse"] == "").all()
    assert (out / "summary" / "figures" / "training_health.png").is_file()
    assert "Training health" in (out / "summary" / "report.html").read_text()
