"""The planner's count cache (workflow_scripts/count_cache.py): a cached count equals the count
computed afresh (cold, warm, cache off), a warm planner imports neither torch nor timm, and a
corrupt entry, another key or an unwritable folder never gives a wrong number or an error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hang_guard import HANG_GUARD_S

from workflow_scripts import config as cfg
from workflow_scripts import count_cache
from workflow_scripts.evaluate import extraction_counts, extraction_plan
from workflow_scripts.evaluate import extraction_memory as em
from workflow_scripts.evaluate.crops import cached_field, extraction_settings
from workflow_scripts.train import memory, memory_counts

REPO = cfg.REPO_DIR
ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2, "init_values": 1.0}


def tiny_config() -> dict:
    return cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])


def seed_vit_s_config() -> dict:
    """ViT-S/16 with the seed's recipe (config/recipes/seed.yaml), on one GPU."""
    config = cfg.load([REPO / "config.yaml", REPO / "config" / "recipes" / "seed.yaml"])
    config["architectures"] = [{"name": ARCH, "weights": "none", "gpus": 1}]
    return config


CONFIGS = [pytest.param(tiny_config, id="tiny"), pytest.param(seed_vit_s_config, id="vit_s_seed")]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache folder for this test; entries land in <folder>/meta_counts."""
    monkeypatch.setenv(count_cache.ENV_VAR, str(tmp_path / "cache"))
    count_cache.forget()
    yield tmp_path / "cache" / count_cache.SUBDIR
    count_cache.forget()


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def forbid_counting(monkeypatch) -> None:
    """Counting again fails the test: a warm answer must come from the folder."""

    def refuse(*args, **kwargs):
        raise AssertionError("counted again although the cache holds the entry")

    monkeypatch.setattr(memory_counts, "count", refuse)
    monkeypatch.setattr(extraction_counts, "count_weights", refuse)
    monkeypatch.setattr(extraction_counts, "count_per_image", refuse)


def plans(config: dict) -> list:
    """Everything the planner derives from counts, for every architecture."""
    out = []
    for arch in cfg.architecture_names(config):
        kwargs = cfg.architecture(config, arch)["model_kwargs"]
        out += [
            memory.plan_architecture(config, arch),
            extraction_plan.plan_for_config(config, arch, 80.0),
            extraction_plan.host_mem_mb(arch, kwargs),
        ]
    return out


@pytest.mark.parametrize("make_config", CONFIGS)
def test_cold_warm_and_uncached_counts_are_equal(make_config, cache, monkeypatch):
    config = make_config()
    (arch,) = cfg.architecture_names(config)
    kwargs = cfg.architecture(config, arch)["model_kwargs"]
    # the uncached computations: the counting module itself, extraction's job-time path
    fresh_training = memory_counts.count(memory.count_inputs(config, arch))
    field = cached_field(config["data"]["image_shape"], config["preprocess"]["resize_factor"])
    settings = extraction_settings(config["evaluate"])
    fresh_extraction = em.plan(arch, kwargs, settings, field, 80.0)

    cold = plans(config)
    assert len(entries(cache)) == 3  # training, extraction weights, extraction per image
    assert memory.meta_counts(config, arch)[1] == fresh_training["activation_bytes"]
    assert cold[1] == fresh_extraction
    assert cold[2] == em.host_mem_mb_for(
        extraction_counts.count_weights({"arch": arch, "model_kwargs": kwargs})["weights_bytes"]
    )

    count_cache.forget()  # as a new process: read the folder
    with monkeypatch.context() as patched:
        forbid_counting(patched)
        warm = plans(config)
    monkeypatch.setenv(count_cache.ENV_VAR, count_cache.DISABLED)
    count_cache.forget()
    disabled = plans(config)
    assert cold == warm == disabled
    size, activations = memory.meta_counts(config, arch)
    assert (size.backbone_params, size.head_params, size.largest_unit_params, size.depth) == (
        fresh_training["backbone_params"],
        fresh_training["head_params"],
        fresh_training["largest_unit_params"],
        fresh_training["depth"],
    )
    assert activations == fresh_training["activation_bytes"]


def test_the_key_holds_exactly_what_the_count_reads(cache):
    """Planner-only settings (GPUs, nodes, memory, optimizer) share an entry; a setting the
    count reads (batch, checkpointing, precision) makes another."""
    config = tiny_config()
    config["architectures"][0]["gpus"] = 1
    memory.plan_architecture(config, ARCH)
    assert len(entries(cache)) == 1
    for arch_change in ({"gpus": 4}, {"nodes": 2}, {"strategy": "fsdp"}):
        memory.plan_architecture(
            {**config, "architectures": [{**config["architectures"][0], **arch_change}]}, ARCH
        )
    other = {**config, "resources": {**config["resources"], "gpu_mem_gb": 24}}
    other["train"] = {**config["train"], "epochs": 9, "optimizer": {"name": "sgd"}}
    memory.plan_architecture(other, ARCH)
    assert len(entries(cache)) == 1
    for train_change in ({"batch_size_per_gpu": 3}, {"precision": "fp32"}):
        memory.plan_architecture({**config, "train": {**config["train"], **train_change}}, ARCH)
    checkpointed = {**config["architectures"][0], "activation_checkpointing": True}
    memory.plan_architecture({**config, "architectures": [checkpointed]}, ARCH)
    assert len(entries(cache)) == 4


def test_corrupt_or_foreign_entries_are_counted_again_and_rewritten(cache):
    config = tiny_config()
    expected = memory.plan_architecture(config, ARCH)
    (entry,) = entries(cache)
    good = json.loads(entry.read_text())
    foreign = {**good, "key": {**good["key"], "versions": {"torch": "0.0", "timm": "0.0"}}}
    wrong_type = {**good, "counts": {**good["counts"], "activation_bytes": "many"}}
    missing = {**good, "counts": {"depth": 2}}
    for bad in ("", "{not json", json.dumps(foreign), json.dumps(wrong_type), json.dumps(missing)):
        entry.write_text(bad)
        count_cache.forget()
        assert memory.plan_architecture(config, ARCH) == expected
        assert json.loads(entry.read_text()) == good, bad
    entry.write_bytes(b"\xff\xfe binary")
    count_cache.forget()
    assert memory.plan_architecture(config, ARCH) == expected


def test_an_unwritable_folder_means_no_cache_and_no_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # even root cannot create a folder under a file
    monkeypatch.setenv(count_cache.ENV_VAR, str(blocker / "cache"))
    count_cache.forget()
    expected = memory_counts.count(memory.count_inputs(tiny_config(), ARCH))
    size, activations = memory.meta_counts(tiny_config(), ARCH)
    assert activations == expected["activation_bytes"]
    assert blocker.read_text() == "not a folder"
    count_cache.forget()


def test_new_torch_timm_or_counting_code_invalidates(cache, monkeypatch):
    config = tiny_config()
    memory.plan_architecture(config, ARCH)
    monkeypatch.setattr(count_cache, "package_versions", lambda: {"torch": "9.9", "timm": "1"})
    count_cache.forget()
    memory.plan_architecture(config, ARCH)
    monkeypatch.setattr(count_cache, "source_digest", lambda module: "edited")
    count_cache.forget()
    memory.plan_architecture(config, ARCH)
    assert len(entries(cache)) == 3


def test_the_code_digest_follows_the_bytes_of_every_imported_file(tmp_path):
    files = [tmp_path / "a.py", tmp_path / "b.py"]
    for path in files:
        path.write_text("x = 1\n")
    before = count_cache.files_digest(files)
    files[1].write_text("x = 2\n")
    assert count_cache.files_digest(files) != before
    # the counting module's digest covers what it imports (the backbone, the DINO head, ...)
    counted = {Path(p).name for p in count_cache.code_deps.module_files(memory.COUNTING_MODULE)}
    assert {"memory_counts.py", "backbone.py", "dino_model.py", "head.py", "loss.py"} <= counted


def test_cache_location(tmp_path):
    home = Path("~").expanduser()
    assert count_cache.cache_dir({}) == home / ".cache" / "bbbc021-dinov3" / "meta_counts"
    assert count_cache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "bbbc021-dinov3" / "meta_counts"
    )
    # the XDG spec: a relative path is ignored
    assert count_cache.cache_dir({"XDG_CACHE_HOME": "rel"}) == count_cache.cache_dir({})
    own = {count_cache.ENV_VAR: str(tmp_path / "x"), "XDG_CACHE_HOME": "/elsewhere"}
    assert count_cache.cache_dir(own) == tmp_path / "x" / "meta_counts"
    assert count_cache.cache_dir({count_cache.ENV_VAR: "off"}) is None


PLAN_DEFAULT_CONFIG = """
import sys
from workflow_scripts import config as cfg, config_check
from workflow_scripts.cluster import memory_plan, resources

assert memory_plan.main([]) == 0
config = cfg.load([cfg.REPO_DIR / "config.yaml"])
config_check.check(config, files=False)  # the Snakefile's start-up check, models included
for arch in cfg.architecture_names(config):
    resources.strategy_args(config, arch), resources.extract_mem_mb(config, arch)
loaded = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print("loaded:", loaded)
"""


def plan_in_a_new_process(cache_folder: Path, cwd: Path, shipped: bool = False) -> list[str]:
    """PLAN_DEFAULT_CONFIG run by a fresh Python with `cache_folder` as the count cache (and the
    shipped counts when `shipped`): its output lines, the table then the heavy modules loaded."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, count_cache.ENV_VAR: str(cache_folder), "PYTHONPATH": path}
    if shipped:
        env.pop(count_cache.SHIPPED_ENV_VAR)
    run = subprocess.run(
        [sys.executable, "-c", PLAN_DEFAULT_CONFIG],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.splitlines()


def test_a_warm_planner_imports_neither_torch_nor_timm(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cache"
    monkeypatch.setenv(count_cache.ENV_VAR, str(folder))
    count_cache.forget()
    exec(PLAN_DEFAULT_CONFIG, {})  # fill the folder, here, where torch is loaded anyway
    count_cache.forget()
    table = capsys.readouterr().out.splitlines()[:-1]
    warm = plan_in_a_new_process(folder, tmp_path)
    assert warm[-1] == "loaded: []" and warm[:-1] == table
    # the check sees an import: one entry missing, and that count needs torch and timm
    (weights_entry, *_) = sorted(folder.glob("meta_counts/extraction_weights-*.json"))
    weights_entry.unlink()
    assert plan_in_a_new_process(folder, tmp_path)[-1] == "loaded: ['timm', 'torch', 'torchvision']"


def test_a_fresh_clone_plans_the_default_config_from_the_shipped_counts(tmp_path):
    """An empty user cache: the counts shipped in workflow_scripts/meta_counts.json answer the
    planning of config.yaml (the CLI, the start-up check, strategies, extraction memory)
    without torch. Fails when counting code or a pinned version changed since they were
    written: then run `python -m workflow_scripts.cluster.shipped_counts --write`."""
    lines = plan_in_a_new_process(tmp_path / "empty", tmp_path, shipped=True)
    assert lines[-1] == "loaded: []", (
        "the shipped counts are stale: python -m workflow_scripts.cluster.shipped_counts --write"
    )


def test_shipped_entries_are_used_only_under_their_exact_key(tmp_path, monkeypatch):
    """A shipped entry answers instead of counting; one of another key (stale code) does not."""
    monkeypatch.setenv(count_cache.ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.delenv(count_cache.SHIPPED_ENV_VAR)
    inputs = {"n": 3}
    key = count_cache.entry_key("demo", inputs, "workflow_scripts.count_cache")
    name = count_cache.entry_name("demo", key)
    shipped = tmp_path / "shipped.json"
    stale = {**key, "code": "0" * 64}
    for entry_key, expected in ((key, {"value": 7}), (stale, {"value": 3})):
        shipped.write_text(
            json.dumps({"entries": {name: {"key": entry_key, "counts": {"value": 7}}}})
        )
        monkeypatch.setattr(count_cache, "SHIPPED", shipped)
        count_cache.forget()
        counted = count_cache.cached(
            "demo", inputs, "workflow_scripts.count_cache", lambda i: {"value": i["n"]}, ["value"]
        )
        assert counted == expected
    count_cache.forget()


@pytest.mark.slow
def test_the_shipped_counts_equal_counts_made_afresh():
    """Every shipped number equals what the counting code gives now (the --check CLI)."""
    from workflow_scripts.cluster import shipped_counts

    assert shipped_counts.main(["--check"]) == 0
