"""The SLURM profile (slurm/config.yaml) against a real single-node SLURM on this machine.

A local cluster (tests/slurm_cluster.py: munged, slurmctld, slurmd; two fake GPUs) runs the demo
pipeline through `snakemake --profile`, as a user would after editing the profile's partition.
The sbatch requests are read back from the controller (`scontrol show job`): GPUs, CPUs,
memory and time limit per job, local rules never submitted. The fake GPUs are character devices:
SLURM allocates them, torch finds no CUDA, so the two-GPU training runs as two torchrun
processes on the CPU (gloo).

Skips only where it cannot run: not root, or SLURM/munge not installed.
"""

from __future__ import annotations

import copy
import csv
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from hang_guard import HANG_GUARD_S
from slurm_cluster import LocalSlurm, unavailable_reason
from workflow_copy import (
    DEMO_CONFIG,
    REPO,
    copy_repo,
    demo_config,
    extract_trained_rule,
    snakemake,
    train_rule,
    write_overlay,
)

# the demo pipeline through SLURM takes minutes: CI runs this module with the slow tests;
# tests/test_slurm_data_stage.py keeps a real-SLURM check in the default run
pytestmark = [pytest.mark.slow, pytest.mark.slurm]

# group jobs (rules/evaluate.smk): one per (arch, channel) and kind, whatever the epochs
GROUP_KINDS = ("extract", "evaluate")
PARTITION = "gpu"  # the cluster's default partition is "cpu": the profile edit must reach sbatch
OUTPUT_DIR = "results/slurm"
GPU_ARCH = demo_config()["architectures"][0]["name"]
CPU_ARCH = "vit_small_plus_patch16_dinov3.lvd1689m"
GPUS = 2
CPUS_PER_GPU = demo_config()["resources"]["cpus_per_gpu"]
MEM_MB_PER_GPU = demo_config()["resources"]["mem_mb_per_gpu"]
TRAIN_RUNTIME_MIN = 30
EXTRACT_RUNTIME_MIN = 20
EXTRACT_EPOCH_RUNTIME_MIN = 5
TRAINED_EPOCHS = (1, 2)


def slurm_overlay() -> dict:
    """The demo made small (30 images, rgb only, 2 epochs of 2 steps, both evaluated: a job per
    epoch shows in the counts), with one 2-GPU and one CPU-only architecture."""
    gpu_arch = {**copy.deepcopy(demo_config()["architectures"][0]), "gpus": GPUS}
    cpu_arch = {**copy.deepcopy(gpu_arch), "name": CPU_ARCH, "gpus": 0}
    return {
        "output_dir": OUTPUT_DIR,
        "data": {
            "demo": {
                "compounds_per_moa": 2,
                "concentrations_per_compound": 1,
                "n_weeks": 2,
                "replicates": 1,
                "sites_per_well": 1,
                "dmso_wells_per_plate": 2,
            }
        },
        "architectures": [gpu_arch, cpu_arch],
        "allow_cpu_fallback": True,  # the test cluster's "GPUs" have no CUDA
        "channel_modes": ["rgb"],
        "train": {
            "epochs": 2,
            "checkpoint_every": 1,
            "max_steps_per_epoch": 2,
            "batch_size_per_gpu": 4,  # 30 images over 2 processes
        },
        "evaluate": {"map": {"permutations": 20}},
        "resources": {
            "train_runtime_min": TRAIN_RUNTIME_MIN,
            "extract_runtime_min": EXTRACT_RUNTIME_MIN,
            "extract_epoch_runtime_min": EXTRACT_EPOCH_RUNTIME_MIN,
        },
    }


def edited_profile(repo: Path, dest: Path) -> Path:
    """slurm/config.yaml with the edit a user makes (partition), plus test-only settings:
    squeue for job status (no slurmdbd here, so sacct cannot answer), fast status checks,
    no account (none exists without accounting), no retries (fail fast), logs kept."""
    profile = yaml.safe_load((repo / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = f"'{PARTITION}'"
    profile.update(
        {
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-no-account": True,
            "slurm-keep-successful-logs": True,
            "retries": 0,
        }
    )
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    # 2 nodes (two slurmd on this machine): the multi-node training job spans both
    with LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=2) as slurm:
        yield slurm


@pytest.fixture(scope="module")
def pipeline_run(cluster, tmp_path_factory):
    """The demo pipeline run once through the profile; returns (repo copy, snakemake args)."""
    tmp = tmp_path_factory.mktemp("slurm_run")
    repo = copy_repo(tmp / "repo")
    profile = edited_profile(repo, tmp / "profile")
    overlay = write_overlay(tmp / "overlay.yaml", slurm_overlay())
    args = ["--profile", str(profile), "--configfile", DEMO_CONFIG, str(overlay)]
    started = time.monotonic()
    try:
        snakemake(repo, *args, timeout_s=HANG_GUARD_S, env=cluster.env)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise AssertionError(f"{err}\n{slurm_logs(repo)}\n{cluster.logs()}") from None
    print(f"pipeline through SLURM: {time.monotonic() - started:.0f} s")
    return repo, args


def slurm_logs(repo: Path) -> str:
    logs = sorted((repo / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in logs[-5:])


def submitted(cluster: LocalSlurm) -> list[dict[str, str]]:
    """SLURM jobs, each with the Snakemake rule and wildcards it ran: the plugin submits with
    --comment rule_<rule>_wildcards_<values joined by _>, and a group job with
    --comment rule_<group id>_<its rules joined by _>; for those, `rule` is the group's kind
    (GROUP_KINDS) and `wildcards` <arch>_<channel>."""
    rules = sorted(
        {
            train_rule(GPU_ARCH),
            train_rule(CPU_ARCH),
            "validate_images",
            "build_image_cache",
            "extract_pretrained",
            extract_trained_rule(GPU_ARCH),
            extract_trained_rule(CPU_ARCH),
            "evaluate_features",
            "generate_demo_data",
            "prepare_metadata",
            "combine_channel_features",
            "summarize",
            "all",
        },
        key=len,
        reverse=True,  # longest first: no rule name is mistaken for a prefix of another
    )
    jobs = cluster.jobs()
    for job in jobs:
        comment = job.get("Comment", "")
        group = next(
            (
                (kind, f"{arch}_{comment.removeprefix(f'rule_{kind}_{arch}_').split('_')[0]}")
                for kind in GROUP_KINDS
                for arch in sorted((GPU_ARCH, CPU_ARCH), key=len, reverse=True)
                if comment.startswith(f"rule_{kind}_{arch}_")
            ),
            None,
        )
        if group:
            job["rule"], job["wildcards"] = group
            continue
        job["rule"] = next((r for r in rules if comment.startswith(f"rule_{r}")), comment)
        job["wildcards"] = comment.removeprefix(f"rule_{job['rule']}").removeprefix("_wildcards_")
    return jobs


def profile_resources(rule: str) -> dict:
    """What slurm/config.yaml asks for a CPU rule: its set-resources over default-resources."""
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    return {**profile["default-resources"], **profile.get("set-resources", {}).get(rule, {})}


def time_limit(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def gpus_requested(job: dict[str, str]) -> int:
    match = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", "") or "")
    return int(match.group(1)) if match else 0


def test_demo_pipeline_runs_through_the_profile(pipeline_run):
    repo, _ = pipeline_run
    out = repo / OUTPUT_DIR
    assert (out / "summary" / "report.html").stat().st_size > 0
    with open(out / "summary" / "summary.csv") as fh:
        table = list(csv.DictReader(fh))
    rows = {(r["arch"], r["channel"], int(r["epoch"])) for r in table if r["kind"] == "model"}
    epochs = (0, *TRAINED_EPOCHS)
    assert rows == {(arch, "rgb", epoch) for arch in (GPU_ARCH, CPU_ARCH) for epoch in epochs}
    # the demo's baseline (local rules) is scored beside them
    assert {(r["arch"], r["channel"]) for r in table if r["kind"] == "baseline"} == {
        ("handcrafted", "baseline")
    }


def test_only_cluster_rules_are_submitted_and_all_completed(cluster, pipeline_run):
    jobs = submitted(cluster)
    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    assert {j["Partition"] for j in jobs} == {PARTITION}
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    # local rules (login node) never reach SLURM; the extractions of one (arch, channel) are
    # one SLURM job, its evaluations another, however many epochs (one job per epoch: 6 and 6)
    assert counts == {
        "validate_images": 1,
        "build_image_cache": 1,
        train_rule(GPU_ARCH): 1,
        train_rule(CPU_ARCH): 1,
        "extract": 2,
        "evaluate": 2,
    }
    assert sorted(j["wildcards"] for j in jobs if j["rule"] in GROUP_KINDS) == sorted(
        f"{arch}_rgb" for arch in (GPU_ARCH, CPU_ARCH) for _ in GROUP_KINDS
    )


def test_sbatch_requests_follow_config(cluster, pipeline_run):
    for job in submitted(cluster):
        rule, arch_is_gpu = job["rule"], job["wildcards"].startswith(GPU_ARCH + "_")
        if rule == train_rule(GPU_ARCH):
            assert gpus_requested(job) == GPUS
            assert int(job["NumCPUs"]) == GPUS * CPUS_PER_GPU
            assert f"mem={GPUS * MEM_MB_PER_GPU}M" in job["TRES"]
            assert job["TimeLimit"] == time_limit(TRAIN_RUNTIME_MIN)
        elif rule == "extract" and arch_is_gpu:
            # epoch 0 and the trained epochs one after another: one member's GPU, not the sum
            assert gpus_requested(job) == 1
        else:  # CPU jobs, and gpus: 0 (resource gpu=0) training and extraction: no GPU at all
            assert gpus_requested(job) == 0, (rule, job.get("TresPerJob"))
            assert "gpu" not in job.get("TRES", "")
        if rule == "extract":  # runtimes of the members summed; CPUs and memory of one member
            members = EXTRACT_RUNTIME_MIN + EXTRACT_EPOCH_RUNTIME_MIN  # epoch 0
            members += EXTRACT_RUNTIME_MIN + len(TRAINED_EPOCHS) * EXTRACT_EPOCH_RUNTIME_MIN
            # the attention maps of both ViTs are a member too: start-up and one epoch's pass
            members += EXTRACT_RUNTIME_MIN + EXTRACT_EPOCH_RUNTIME_MIN
            assert job["TimeLimit"] == time_limit(members)
            assert int(job["NumCPUs"]) == 4 and "mem=32000M" in job["TRES"]
        if rule == "evaluate":  # epochs 0, 1, 2 one after another
            asked = profile_resources("evaluate_features")
            assert job["TimeLimit"] == time_limit((1 + len(TRAINED_EPOCHS)) * asked["runtime"])
            assert int(job["NumCPUs"]) == 2 and f"mem={asked['mem_mb']}M" in job["TRES"]
        if rule in ("validate_images", "build_image_cache"):
            asked = profile_resources(rule)
            assert job["TimeLimit"] == time_limit(asked["runtime"])
            assert f"mem={asked['mem_mb']}M" in job["TRES"]


def test_job_steps_see_their_gpus(cluster, pipeline_run):
    """The plugin runs each job as `srun -n1 ... snakemake`: that step (id 0), where torchrun
    starts its processes, must see every GPU of the allocation and a CPU job none."""
    seen = cluster.step_gpus()
    for job in submitted(cluster):
        devices = seen[(job["JobId"], "0")]
        if job["rule"] == train_rule(GPU_ARCH):
            assert devices == ",".join(str(i) for i in range(GPUS))
        elif job["rule"] == "extract" and job["wildcards"].startswith(GPU_ARCH + "_"):
            assert len(devices.split(",")) == 1 and devices != "none"
        else:
            assert devices == "none", job["rule"]


def test_two_gpu_training_ran_two_processes(pipeline_run):
    """The training log's first line (workflow_scripts/train/loop.py) states the world size."""
    repo, _ = pipeline_run
    log = (repo / OUTPUT_DIR / "logs" / "train" / GPU_ARCH / "rgb.log").read_text()
    assert "2 process(es)" in log
    cpu_log = (repo / OUTPUT_DIR / "logs" / "train" / CPU_ARCH / "rgb.log").read_text()
    assert "1 process(es)" in cpu_log


def test_second_run_plans_nothing(cluster, pipeline_run):
    repo, args = pipeline_run
    result = snakemake(repo, *args, "--dry-run", env=cluster.env)
    assert "Nothing to be done" in result.stdout + result.stderr


# ---------------------------------------------------------------- multi-task training (srun)
SRUN_OUTPUT_DIR = "results/slurm_srun"


def srun_overlay() -> dict:
    """One training job on 2 nodes x 1 GPU (launcher auto -> srun, one task per GPU), sharded
    with FSDP; the rest of the demo made small."""
    overlay = slurm_overlay()
    arch = {**overlay["architectures"][0], "gpus": 1, "nodes": 2, "strategy": "fsdp"}
    return {**overlay, "output_dir": SRUN_OUTPUT_DIR, "architectures": [arch]}


def test_two_node_training_runs_as_two_srun_tasks_and_matches_torchrun(cluster, tmp_path):
    import json
    import os
    import sys

    from safetensors.torch import load_file

    from workflow_scripts import config as cfg

    repo = copy_repo(tmp_path / "repo")
    profile = edited_profile(repo, tmp_path / "profile")
    overlay_path = write_overlay(tmp_path / "overlay.yaml", srun_overlay())
    log_target = f"{SRUN_OUTPUT_DIR}/train/{GPU_ARCH}/rgb/log.jsonl"
    try:
        snakemake(
            repo,
            log_target,
            "--profile",
            str(profile),
            "--configfile",
            DEMO_CONFIG,
            str(overlay_path),
            timeout_s=HANG_GUARD_S,
            env=cluster.env,
        )
    except (AssertionError, subprocess.TimeoutExpired) as err:
        raise AssertionError(f"{err}\n{slurm_logs(repo)}\n{cluster.logs()}") from None

    train_jobs = [
        j
        for j in cluster.jobs()
        if j.get("Comment", "").startswith(f"rule_{train_rule(GPU_ARCH)}")
        and j.get("WorkDir") == str(repo)
    ]
    assert train_jobs and train_jobs[-1]["JobState"] == "COMPLETED"
    assert train_jobs[-1]["NumTasks"] == "2"
    assert train_jobs[-1]["NumNodes"] == "2"
    assert "gres:gpu:1" in train_jobs[-1].get("TresPerNode", "")  # GPUs per node, not per job
    # the training step: one task on each node (the job's step 0 is the executor's snakemake)
    job_id = train_jobs[-1]["JobId"]
    steps = {step: nodes for (job, step), nodes in cluster.step_nodes().items() if job == job_id}
    assert sorted(cluster.nodes) in steps.values(), steps
    out = repo / SRUN_OUTPUT_DIR / "train" / GPU_ARCH / "rgb"
    log = (repo / SRUN_OUTPUT_DIR / "logs" / "train" / GPU_ARCH / "rgb.log").read_text()
    assert "2 process(es)" in log

    # the same job launched by torchrun on this machine: the same checkpoint
    config = cfg.load([repo / "config.yaml", repo / DEMO_CONFIG, overlay_path])
    entry = cfg.architecture(config, GPU_ARCH)
    reference = tmp_path / "reference"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "workflow_scripts.train.cli",
        "--arch",
        GPU_ARCH,
        "--channel",
        "rgb",
        "--cache-dir",
        str(repo / SRUN_OUTPUT_DIR / "cache"),
        "--weights",
        "none",
        "--model-kwargs",
        json.dumps(entry["model_kwargs"]),
        "--settings",
        json.dumps(cfg.train_settings(config, GPU_ARCH)),
        "--out-dir",
        str(reference / "train"),
        "--resume-dir",
        str(reference / "resume"),
        "--strategy",
        "fsdp",
    ]
    result = subprocess.run(
        command,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = load_file(reference / "train" / "epoch_0002.safetensors")
    trained = load_file(out / "epoch_0002.safetensors")
    assert expected.keys() == trained.keys()
    for key in expected:  # same world size and code: equal up to float reordering
        difference = (expected[key] - trained[key]).abs().max().item()
        assert difference <= 1e-5 * expected[key].abs().max().item(), key
