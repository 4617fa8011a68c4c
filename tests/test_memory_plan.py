"""Memory planner (workflow_scripts/train/memory.py, cluster/): parameter counts and activation
bytes against real CPU models, the auto strategy, the refusal at `snakemake -n`, the CLI table."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from workflow_copy import copy_repo, demo_config, snakemake, write_overlay

from workflow_scripts import config as cfg
from workflow_scripts import config_check
from workflow_scripts.cluster import memory_plan, resources
from workflow_scripts.errors import InputError
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.train import memory, memory_counts
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.loss import DINOLoss

REPO = cfg.REPO_DIR
ARCH = "vit_small_patch16_dinov3.lvd1689m"
ARCH_7B = "vit_7b_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
WIDE_7B = {"depth": 2}  # the 7B's width (4096) and SwiGLU MLP, two blocks


def demo_with(architectures: list[dict], **resources) -> dict:
    config = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])
    config["architectures"] = architectures
    config["resources"].update(resources)
    cfg.check_schema(config)
    config_check.check(config, files=False, models=False)
    return config


def real_saved_bytes(student, crops, loss) -> int:
    """Oracle: distinct storages autograd saves in a real CPU forward (by data pointer)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss(student(crops), torch.zeros(2 * len(crops[0]), loss.center.shape[1]), 0.04)
    return sum(storages.values())


@pytest.mark.parametrize("model_kwargs", [TINY, {"depth": 3, "embed_dim": 96, "num_heads": 3}])
def test_parameters_and_activations_match_a_real_cpu_model(model_kwargs):
    batch = 3
    entry = {"name": ARCH, "weights": "none", "gpus": 1, "model_kwargs": model_kwargs}
    config = demo_with([{**entry, "train": {"precision": "fp32", "batch_size_per_gpu": batch}}])
    settings = cfg.train_settings(config, ARCH)
    counts = memory_counts.count(memory.count_inputs(config, ARCH))

    torch.manual_seed(0)
    backbone = build_backbone(ARCH, "none", model_kwargs, settings["drop_path_rate"])
    student = build_dino_model(backbone, settings["head"]).train()
    assert counts["backbone_params"] == sum(p.numel() for p in backbone.parameters())
    assert counts["head_params"] == sum(p.numel() for p in student.head.parameters())
    assert counts["depth"] == model_kwargs["depth"]

    g, loc = settings["global_crops"], settings["local_crops"]
    crops = [torch.rand(batch, 3, g["size"], g["size"])] * g["number"] + [
        torch.rand(batch, 3, loc["size"], loc["size"])
    ] * loc["number"]
    loss = DINOLoss(settings["head"]["out_dim"], g["number"], loc["number"])
    measured = real_saved_bytes(student, crops, loss)
    estimated = counts["activation_bytes"]
    # meta counts attention as the math kernel (seq^2 weights) and misses storage slack
    # (the oracle counts whole storages): within -10% .. +50% of the real CPU graph
    assert 0.9 * measured <= estimated <= 1.5 * measured, (measured, estimated)


def test_activation_checkpointing_lowers_the_estimate():
    entry = {"name": ARCH, "model_kwargs": {"depth": 6, "embed_dim": 64, "num_heads": 2}}
    config = demo_with([entry])
    config["train"]["precision"] = "fp32"
    inputs = memory.count_inputs(config, ARCH)
    full = memory_counts.count(inputs)["activation_bytes"]
    checkpointed = memory_counts.count({**inputs, "activation_checkpointing": True})
    assert 0 < checkpointed["activation_bytes"] < 0.6 * full


def test_compute_dtype_names_follow_the_precision_rule_on_cuda():
    """The planner's torch-free table against precision.py, for every precision setting."""
    from workflow_scripts.model.precision import Precision

    for name in ("auto", "bf16", "fp16", "fp32"):
        dtype = Precision.resolve(name, "cuda").autocast_dtype or torch.float32
        assert memory.compute_dtype_name({"precision": name}) == str(dtype).split(".")[1]
        assert memory.DTYPE_BYTES[memory.compute_dtype_name({"precision": name})] == (
            dtype.itemsize
        )


def test_auto_picks_fsdp_when_ddp_exceeds_gpu_memory():
    entry = {
        "name": ARCH_7B,
        "weights": "none",
        "gpus": 8,
        "nodes": 2,
        "model_kwargs": WIDE_7B,
        "activation_checkpointing": True,
    }
    plan = memory.plan_architecture(demo_with([entry]), ARCH_7B)
    assert plan.world_size == 16 and plan.fsdp_gb < plan.ddp_gb
    between = (plan.fsdp_gb + plan.ddp_gb) / 2
    tight = demo_with([entry], gpu_mem_gb=between)
    chosen = memory.plan_architecture(tight, ARCH_7B)
    assert (chosen.strategy, chosen.fits) == ("fsdp", True)
    assert resources.training_strategy(tight, ARCH_7B) == "fsdp"
    roomy = demo_with([entry], gpu_mem_gb=plan.ddp_gb + 1)
    assert resources.training_strategy(roomy, ARCH_7B) == "ddp"
    forced = demo_with([{**entry, "strategy": "ddp"}], gpu_mem_gb=between)
    with pytest.raises(InputError, match=r"architectures\.0.*with ddp over 16 GPU"):
        resources.check_fits(forced)


def test_sharding_divides_model_state_by_world_size():
    entry = {"name": ARCH_7B, "weights": "none", "gpus": 1, "model_kwargs": WIDE_7B}
    one = memory.plan_architecture(demo_with([entry]), ARCH_7B)
    eight = memory.plan_architecture(demo_with([{**entry, "gpus": 8}]), ARCH_7B)
    assert one.ddp_gb == eight.ddp_gb  # DDP replicates
    assert eight.fsdp_gb < one.fsdp_gb
    assert one.activations_gb == eight.activations_gb  # per-GPU batch: unchanged


def test_cpu_jobs_are_not_refused():
    config = demo_with([{"name": ARCH_7B, "weights": "none", "gpus": 0}], gpu_mem_gb=1)
    resources.check_fits(config)
    assert resources.training_strategy(config, ARCH_7B) == "ddp"


def test_cli_prints_every_configured_architecture(capsys):
    assert memory_plan.main(["--configfile", str(REPO / "config.yaml")]) == 0
    table = capsys.readouterr().out
    for name in cfg.architecture_names(cfg.load([REPO / "config.yaml"])):
        assert name in table
    assert "DDP GB" in table and "FSDP GB" in table


@pytest.mark.parametrize(
    "option, value", [("--gpus", "0"), ("--gpus", "-2"), ("--nodes", "0"), ("--nodes", "-1")]
)
def test_cli_refuses_fewer_than_one_gpu_or_node_with_one_usage_error(option, value, capsys):
    """Issue 23 (6): these printed a plan marked as fitting (--nodes 0: ZeroDivisionError)."""
    with pytest.raises(SystemExit) as stopped:
        memory_plan.main(["--all-models", option, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: argument {option}: must be at least 1, got {value}")
    assert err[0].startswith("usage:") and sum("error" in line for line in err) == 1, err


def test_cli_configfiles_are_overlays_on_config_yaml(capsys):
    """Issue 23 (13): `--configfile config/demo.yaml` alone stopped on a schema error
    ('channel_modes' is a required property); it overlays config.yaml as Snakemake does."""
    assert memory_plan.main(["--configfile", str(REPO / "config" / "demo.yaml")]) == 0
    demo_only = capsys.readouterr().out
    assert memory_plan.main(["--configfile", str(REPO / "config.yaml"), "config/demo.yaml"]) == 0
    assert capsys.readouterr().out == demo_only  # config.yaml named first: the same
    (demo_arch,) = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])["architectures"]
    assert demo_only.splitlines()[1].split()[:2] == [demo_arch["name"], "0.3"]  # tiny: 0.3 M
    assert memory_plan.main([]) == 0
    assert "vit_base_patch16_dinov3" in capsys.readouterr().out  # no overlay: config.yaml


@pytest.mark.slow
def test_snakemake_dry_run_refuses_what_cannot_fit_and_plans_the_7b(tmp_path):
    workdir = copy_repo(tmp_path / "repo")
    arch = copy.deepcopy(demo_config()["architectures"][0])
    overlay = write_overlay(
        workdir / "overlay.yaml",
        {
            "architectures": [{**arch, "gpus": 1}],
            "resources": {"gpu_mem_gb": 0.01},
            "channel_modes": ["rgb"],
        },
    )
    with pytest.raises(
        AssertionError,
        match=r"needs about [\d.]+ GB per GPU with ddp.*"
        r"gpu_mem_gb is 0\.01",
    ):
        snakemake(workdir, "-n", "--configfile", "config/demo.yaml", str(overlay))

    # the shipped overlay's 7B entry, with random init (no hub weights here) and one channel
    (seven_b,) = [
        a
        for a in cfg.load([REPO / "config.yaml", REPO / "config/vit7b.yaml"])["architectures"]
        if a["name"] == ARCH_7B
    ]
    overlay = write_overlay(
        workdir / "overlay.yaml",
        {
            "architectures": [{**seven_b, "weights": "none"}],
            "channel_modes": ["rgb"],
            "evaluate": {"batch_size": "auto"},
        },
    )
    result = snakemake(
        workdir, "-n", "-p", "--verbose", "--configfile", "config/demo.yaml", str(overlay)
    )
    assert "--strategy fsdp --activation-checkpointing" in result.stdout
    # extraction: the batch is derived on the GPU; the jobs ask for the 7B's host memory
    assert "--batch-size auto " in result.stdout
    extract_mem = re.findall(r"extract_batch_size=auto, .*mem_mb=(\d+)", result.stdout)
    # epoch 0, the trained epochs and the attention maps: the extraction group's three members
    assert len(extract_mem) == 3 and all(int(m) >= 48000 for m in extract_mem), extract_mem
    assert "srun --nodes=2 --ntasks=16 --ntasks-per-node=8" in result.stdout
