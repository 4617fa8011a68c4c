"""Extraction memory (workflow_scripts/evaluate/extraction_memory.py): the meta-device estimate
against real CPU forwards, the derived batch, `--batch-size auto` through the extract CLI, and
backbones loaded on the meta device against the random-init-then-load path."""

from __future__ import annotations

import json

import bench_extraction_memory as bench  # noqa: E402
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file
from test_eval_extract import TINY, cache_dir, run_extract  # noqa: F401  (cache_dir: fixture)

from workflow_scripts.cluster import memory_plan
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import extract, extraction_counts, extraction_plan
from workflow_scripts.evaluate import extraction_memory as em
from workflow_scripts.model import backbone
from workflow_scripts.model.checkpoint import load_backbone_checkpoint, save_backbone_checkpoint

ARCH = "vit_small_patch16_dinov3.lvd1689m"
ARCH_7B = "vit_7b_patch16_dinov3.lvd1689m"


@pytest.mark.parametrize(
    "name", ["tiny", pytest.param("small", marks=pytest.mark.slow)], ids=["tiny", "small"]
)
def test_per_image_estimate_matches_a_real_cpu_forward(name):
    kwargs = bench.MODELS[name]
    weights, estimated = em.estimate(ARCH, kwargs, bench.SETTINGS, bench.FIELD, "cpu")
    model = bench._model(kwargs)
    assert weights == sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))
    # the same tracker on real tensors: the meta forward creates the same tensors (+-2%)
    tracked = bench.tracked_per_image(kwargs)
    assert abs(estimated - tracked) <= 0.02 * tracked, (estimated, tracked)
    # independently, the process's peak resident memory over one forward (VmHWM): +-15% for
    # page granularity, allocator slack and kernel scratch the tracker does not see
    process = bench.process_per_image(kwargs)
    assert abs(estimated - process) <= 0.15 * process, (estimated, process)


def test_autocast_emulation_matches_a_real_bf16_autocast_forward_on_cpu():
    # CPU autocast casts as CUDA autocast does for a ViT's ops (linear, matmul, attention in
    # bf16; norms and the residual stream fp32); the meta emulation must count the same bytes
    windows = em.window_sizes(*bench.FIELD, bench.SETTINGS)
    model = bench._model(TINY)
    with torch.device("meta"):
        meta_model = bench._model(TINY)
    for batch in (1, 3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            real = extraction_counts.forward_peak_bytes(model, windows, batch, "cpu", None)
        emulated = extraction_counts.forward_peak_bytes(
            meta_model, windows, batch, "meta", torch.bfloat16
        )
        fp32 = extraction_counts.forward_peak_bytes(meta_model, windows, batch, "meta", None)
        assert abs(emulated - real) <= 0.02 * real and emulated < fp32, (emulated, real, fp32)


def test_window_sizes_group_equal_windows_as_embed_crops_does():
    # the seed's 4 windows on 512 x 640: two 256 x 224 (w x h) and two 224 x 224
    assert sorted(em.window_sizes(*bench.FIELD, bench.SETTINGS)) == [(2, 224, 224), (2, 224, 256)]


@pytest.mark.parametrize(
    "weights_gb, per_image_mb, memory_gb",
    [(26.86, 42.8, 80), (0.09, 6.9, 24), (1.2, 300.0, 40), (60.0, 900.0, 80), (10.0, 1.0, 14)],
)
def test_derived_batch_is_the_largest_that_fits(weights_gb, per_image_mb, memory_gb):
    weights, per_image = weights_gb * em.GB, per_image_mb * em.MB
    batch = em.derive_batch(weights, per_image, memory_gb, max_batch=10**9)
    assert batch >= 1
    assert em.needed_bytes(weights, per_image, batch) <= memory_gb * em.GB
    assert em.needed_bytes(weights, per_image, batch + 1) > memory_gb * em.GB
    assert em.derive_batch(weights, per_image, memory_gb, max_batch=3) == min(3, batch)


def test_batch_zero_when_one_image_does_not_fit():
    assert em.derive_batch(72 * em.GB, 50 * em.MB, 80) == 0
    assert em.derive_batch(1 * em.GB, 100 * em.GB, 80) == 0


def test_7b_fits_one_80gb_gpu_with_a_batch_of_at_least_8():
    from workflow_scripts import config as cfg
    from workflow_scripts.evaluate.crops import extraction_settings

    settings = extraction_settings(cfg.load([cfg.REPO_DIR / "config.yaml"])["evaluate"])
    plan = em.plan(ARCH_7B, {}, settings, (512, 640), 80)
    assert 26 < plan.weights_gb < 28  # 6.7 B fp32 parameters
    assert plan.batch_size >= 8 and plan.room >= plan.batch_size
    assert em.needed_bytes(plan.weights_gb * em.GB, plan.per_image_mb * em.MB, plan.room) <= (
        80 * em.GB
    )
    assert "vit_7b" in plan.line() and "does not fit" not in plan.line()
    assert extraction_plan.host_mem_mb(ARCH_7B, {}) > 40000  # asks for more than the default 32000


def test_auto_on_a_full_gpu_is_one_line_naming_the_architecture(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * em.GB, 80 * em.GB))
    with pytest.raises(InputError, match=r"vit_7b.*needs about 3\d\.\d GB.*20\.0 GB"):
        em.auto_batch_size(ARCH_7B, {}, bench.SETTINGS, bench.FIELD, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79 * em.GB, 80 * em.GB))
    batch, line = em.auto_batch_size(ARCH, TINY, bench.SETTINGS, bench.FIELD, torch.device("cuda"))
    assert batch == em.MAX_AUTO_BATCH and "per image" in line
    assert em.auto_batch_size(ARCH, TINY, bench.SETTINGS, bench.FIELD, torch.device("cpu"))[0] == (
        em.CPU_BATCH_SIZE
    )


def test_auto_batch_size_through_the_cli_gives_the_features_of_an_explicit_one(
    cache_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    assert run_extract(cache_dir, tmp_path / "explicit.parquet") == 0  # --batch-size 8
    # on CPU `auto` is CPU_BATCH_SIZE (64: all 44 images at once); then a derived batch of 5
    # (uneven batches), as on a GPU, with the planner's answer stubbed
    assert run_auto(cache_dir, tmp_path / "auto.parquet", ["--batch-size", "auto"]) == 0
    assert "batch size auto on cpu: 64" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(
        extract, "auto_batch_size", lambda *a, **k: calls.append(a) or (5, "plan line")
    )
    assert run_auto(cache_dir, tmp_path / "auto5.parquet", ["--batch-size", "auto"]) == 0
    assert "plan line" in capsys.readouterr().err and calls[0][0] == ARCH
    explicit = pd.read_parquet(tmp_path / "explicit.parquet")
    for name in ("auto.parquet", "auto5.parquet"):
        auto = pd.read_parquet(tmp_path / name)
        pd.testing.assert_frame_equal(explicit, auto, check_exact=False, rtol=1e-5, atol=1e-6)


def run_auto(cache_dir, out, batch_args):  # noqa: F811
    """run_extract with --batch-size replaced."""
    from test_eval_extract import SETTINGS

    return extract.main(
        [
            *("--arch", ARCH, "--channel", "DAPI", "--cache-dir", str(cache_dir)),
            *("--weights", "none", "--model-kwargs", json.dumps(TINY)),
            *("--settings", json.dumps(SETTINGS), *batch_args, "--num-workers", "0"),
            *("--epoch", "0", "--out", str(out)),
        ]
    )


def test_batch_size_option_refuses_words_other_than_auto(cache_dir, tmp_path):  # noqa: F811
    with pytest.raises(SystemExit):
        run_auto(cache_dir, tmp_path / "x.parquet", ["--batch-size", "many"])


def assert_same_model(new, old):
    new_state, old_state = new.state_dict(), old.state_dict()
    assert list(new_state) == list(old_state)
    for name, tensor in old_state.items():
        assert new_state[name].dtype == tensor.dtype and torch.equal(new_state[name], tensor), name
    new_buffers, old_buffers = dict(new.named_buffers()), dict(old.named_buffers())
    assert list(new_buffers) == list(old_buffers) and "rope.periods" in new_buffers
    for name, tensor in old_buffers.items():  # non-persistent ones (RoPE periods) included
        assert not new_buffers[name].is_meta and torch.equal(new_buffers[name], tensor), name
    images = torch.rand(2, 3, 32, 48)
    with torch.inference_mode():
        assert torch.equal(new.eval()(images), old.eval()(images))


def test_meta_loaded_weights_file_equals_the_timm_loader(tmp_path):
    torch.manual_seed(1)
    source = backbone.build_backbone(ARCH, "none", TINY)
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), path)
    # the old path: timm's pretrained loader (random init, then a copy of the file's tensors)
    old = backbone.pool_on_class_token(
        backbone._create(
            ARCH,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(path)},
            num_classes=0,
            drop_path_rate=0.0,
            **TINY,
        )
    )
    new = backbone.build_backbone(ARCH, str(path), TINY)
    assert_same_model(new, old)
    assert_same_model(new, source)


def test_meta_loaded_checkpoint_equals_random_init_then_load(tmp_path):
    torch.manual_seed(2)
    trained = backbone.build_backbone(ARCH, "none", TINY)
    path = save_backbone_checkpoint(
        tmp_path, trained, {"arch": ARCH, "epoch": 1, "model_kwargs": TINY}
    )
    loaded, _ = load_backbone_checkpoint(path, expected_arch=ARCH)
    old = backbone.build_backbone(ARCH, "none", TINY)
    old.load_state_dict(trained.state_dict(), strict=True)
    assert_same_model(loaded, old)


def test_meta_loading_a_file_of_another_shape_still_names_it(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(backbone.build_backbone(ARCH, "none", TINY).state_dict(), path)
    with pytest.raises(InputError, match="does not fit architecture"):
        backbone.build_backbone(ARCH, str(path), {**TINY, "embed_dim": 128})


def test_planner_cli_prints_the_extraction_line(capsys):
    assert (
        memory_plan.main(["--configfile", str(memory_plan.config_module.REPO_DIR / "config.yaml")])
        == 0
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if "extraction plan" in line]
    assert lines and all("MB per image" in line and " GB" in line for line in lines)


def test_features_do_not_depend_on_the_batch_size():
    model = bench._model(TINY)
    arrays = [np.random.default_rng(0).integers(0, 4000, (7, 64, 64), dtype=np.uint16)]
    settings = {**bench.SETTINGS, "crops": "grid", "crop_grid": [2, 2], "input_size": 32}
    runs = [
        extract.extract_features(
            model,
            arrays,
            4000.0,
            settings,
            torch.device("cpu"),
            "none",
            interpolation="bicubic",
            batch_size=b,
            num_workers=0,
        )
        for b in (1, 3, 64)
    ]
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], rtol=1e-5, atol=1e-6)
