"""benchmarks/run_gpu_checks.sh is ready for a bare, offline GPU node: its steps run where
jsonschema, albumentations and snakemake cannot be imported, every step is capped by one overall
deadline, timm without the DINOv3 names stops it at once, and the training benchmark gives
torch.cuda.set_device an indexed device."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import bench_train_step  # noqa: E402
import pytest
import torch
from hang_guard import HANG_GUARD_S
from workflow_copy import REPO, copy_repo

BLOCKED = ("jsonschema", "albumentations", "snakemake")
LIB = REPO / "benchmarks" / "gpu_checks_lib.sh"


@pytest.fixture
def bare_node_env(tmp_path) -> dict:
    """Environment where the three packages fail to import (stubs first on PYTHONPATH that raise
    ImportError) and the snakemake command fails."""
    blocker = tmp_path / "blocked"
    for name in BLOCKED:
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: a bare GPU node has none')\n"
        )
    (blocker / "bin").mkdir()
    command = blocker / "bin" / "snakemake"
    command.write_text("#!/bin/sh\necho 'snakemake is blocked' >&2\nexit 127\n")
    command.chmod(0o755)
    env = {
        **os.environ,
        "PYTHONPATH": str(blocker),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{blocker / 'bin'}:{os.environ['PATH']}",
    }
    for name in BLOCKED:  # the blocker works
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True
        )
        assert probe.returncode != 0 and "blocked" in probe.stderr
    return env


def run_lib(
    script: str, tmp_path: Path, **settings: int | str
) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        **{key: str(value) for key, value in settings.items()},
        "SUMMARY": str(tmp_path / "summary.txt"),
        "STEPS_LOG": str(tmp_path / "steps.log"),
    }
    start = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", f"source {LIB}; checks_init; {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    return result, time.monotonic() - start


def test_step_caps_are_the_limit_or_what_the_deadline_leaves(tmp_path):
    # 480 - 5 (kill grace) - 10 (finishing reserve) = 465 s for the first step at most
    result, _ = run_lib(
        "step_cap 150; step_cap 1000; sleep 2; step_cap 1000", tmp_path, DEADLINE_S=480
    )
    first, capped, later = map(int, result.stdout.split())
    # later: 465 less the 2 s slept and however long bash itself took on this machine
    assert (first, capped) == (150, 465) and 440 <= later <= 463
    # under MIN_STEP_S left: 0, the step is skipped
    result, _ = run_lib("step_cap 100", tmp_path, DEADLINE_S=20, MIN_STEP_S=10)
    assert result.stdout.split() == ["0"]


def test_a_step_that_ignores_its_cap_cannot_push_past_the_deadline(tmp_path):
    deadline, grace, reserve = 8, 1, 1
    script = (
        "step stubborn 100 bash -c 'trap \"\" TERM; sleep 60'; step late 5 true; "
        "optional_step extra 5 true; echo FAILED=$FAILED"
    )
    result, wall = run_lib(
        script,
        tmp_path,
        DEADLINE_S=deadline,
        KILL_GRACE_S=grace,
        FINISH_RESERVE_S=reserve,
        MIN_STEP_S=2,
    )
    # the stubborn step would take 60 s: well under that shows the deadline held (slack for
    # a busy machine's process start-up, which is no part of what is tested)
    assert wall <= deadline - reserve + 10, result.stdout
    summary = (tmp_path / "summary.txt").read_text()
    # TERM ignored: KILL after the grace (exit 137), cap = 8 - 1 - 1
    assert re.search(r"stubborn\s+exit 137 .*\(cap 6s\)", summary), summary
    assert re.search(r"late\s+skipped", summary) and re.search(r"extra\s+skipped", summary)
    assert "FAILED=1" in result.stdout
    log = (tmp_path / "steps.log").read_text()
    assert "===== stubborn (cap 6s" in log and "----- stubborn: exit 137" in log


def test_optional_step_skipped_for_time_is_no_failure(tmp_path):
    result, _ = run_lib(
        "step first 10 sleep 8; optional_step extra 100 true; echo FAILED=$FAILED",
        tmp_path,
        DEADLINE_S=14,
        KILL_GRACE_S=1,
        FINISH_RESERVE_S=1,
        MIN_STEP_S=5,
    )
    assert "FAILED=0" in result.stdout
    summary = (tmp_path / "summary.txt").read_text()
    assert re.search(r"first\s+exit 0", summary) and re.search(r"extra\s+skipped", summary)


def test_step_caps_off_lets_a_slow_step_finish_and_on_cuts_it(tmp_path):
    """STEP_CAPS=off (the CPU smoke test's setting) runs a step past its limit to its end;
    the default cuts the same step at its limit."""
    script = "step slow 1 sleep 3; echo FAILED=$FAILED"
    capped, _ = run_lib(script, tmp_path, KILL_GRACE_S=1, MIN_STEP_S=1)
    assert "FAILED=1" in capped.stdout
    assert re.search(r"slow\s+exit 124 .*\(cap 1s\)", (tmp_path / "summary.txt").read_text())
    uncapped, _ = run_lib(script, tmp_path, STEP_CAPS="off", DEADLINE_S=2, MIN_STEP_S=1)
    assert "FAILED=0" in uncapped.stdout
    assert re.search(r"slow\s+exit 0 .*\(cap off\)", (tmp_path / "summary.txt").read_text())
    wrong, _ = run_lib(script, tmp_path, STEP_CAPS="maybe")
    assert wrong.returncode == 2 and "STEP_CAPS must be on or off" in wrong.stderr


def test_bench_train_step_gives_set_device_an_index(monkeypatch):
    """The bug: set_device(torch.device("cuda")) raises ValueError before CUDA is touched."""
    from torch.cuda._utils import _get_device_index

    class DeviceSet(Exception):
        pass

    def set_device(device):
        _get_device_index(device)  # what torch.cuda.set_device checks first
        raise DeviceSet(device)

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    args = bench_train_step.parse_args(["--quick", "--device", "cpu"])
    args.device = "cuda"
    with pytest.raises(DeviceSet) as raised:
        bench_train_step.run_config("tuned", args, {}, {}, 10000)
    assert raised.value.args[0] == torch.device("cuda", 0)


def test_timm_without_dinov3_stops_the_checks_with_one_line(tmp_path, bare_node_env):
    shadow = tmp_path / "old_timm"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(
        "import timm\n_is_model = timm.is_model\n"
        "timm.is_model = lambda name: 'dinov3' not in name and _is_model(name)\n"
    )
    env = {
        **bare_node_env,
        "PYTHONPATH": f"{shadow}:{bare_node_env['PYTHONPATH']}",
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
    }
    result = subprocess.run(
        [
            "bash",
            str(copy_repo(tmp_path / "repo") / "benchmarks" / "run_gpu_checks.sh"),
            "--cpu-smoke",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert summary[-1].startswith("preflight failed: error: timm ")
    assert "vit_small_patch16_dinov3" in summary[-1] and len(summary) == 2


SCALE_OUT_STEPS = ["fsdp_vs_ddp", "memory_plan", "extraction_memory"]
ALL_STEPS = [
    "preflight",
    "flops",
    "train_step_vit_small",
    "train_step_vit_base",
    "bench_eval",
    "collective",
    "end_to_end",
    "clip",
    *SCALE_OUT_STEPS,
]


def dry_run(tmp_path: Path, *options: str) -> list[tuple[str, str]]:
    """(step, command) of each step the script would run with `options`, none run."""
    out = tmp_path / "dry"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work")}
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "run_gpu_checks.sh"), "--dry-run", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    return re.findall(r"^(\w+)\s+dry run \(limit \d+s\): (.*)$", summary, flags=re.M)


def test_scale_out_runs_preflight_and_the_scale_out_steps_of_the_full_run(tmp_path):
    """--scale-out selects preflight and the scale-out section, with the very commands of the
    full run (whose CPU smoke run below executes them): checked without running them again."""
    everything = dry_run(tmp_path, "--cpu-smoke")
    scale_out = dry_run(tmp_path, "--cpu-smoke", "--scale-out")
    assert [name for name, _ in everything] == ALL_STEPS
    assert [name for name, _ in scale_out] == ["preflight", *SCALE_OUT_STEPS]
    assert scale_out == [step for step in everything if step[0] in {"preflight", *SCALE_OUT_STEPS}]


@pytest.mark.slow
def test_cpu_smoke_passes_without_jsonschema_albumentations_snakemake(tmp_path, bare_node_env):
    """Every step of the full run, on CPU, on a bare node. STEP_CAPS=off: the steps' time
    depends on the machine, so no cap or deadline may fail this test (the caps have their own
    tests above); the timeout only guards against a hang."""
    repo = copy_repo(tmp_path / "repo")
    out = tmp_path / "out"
    env = {**bare_node_env, "OUT": str(out), "WORK": str(tmp_path / "work"), "STEP_CAPS": "off"}
    result = subprocess.run(
        ["bash", str(repo / "benchmarks" / "run_gpu_checks.sh"), "--cpu-smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    steps = re.findall(r"^(\w+)\s+exit (\d+)\s+\d+s \(cap off\) at\s+\d+s$", summary, flags=re.M)
    assert steps == [(name, "0") for name in ALL_STEPS], summary
    assert "timm 1." in summary
    assert '"strategy": "fsdp"' in summary  # the FSDP/DDP result lines
    assert len(list(out.iterdir())) <= 8  # what a lent machine hands back
    log = (out / "steps.log").read_text()
    # the train CLI ran without jsonschema; the seed row said why it was skipped
    assert "note: jsonschema is not installed" in log
    assert "seed: skipped: albumentations is not installed" in log
    assert "1 process(es) on cpu" in summary and "end to end on cpu" in summary
    for name in ("flops.json", "train_step_vit_small.json", "train_step_vit_base.json"):
        assert (out / name).stat().st_size > 0
    # the planner's tables: every DINOv3 ViT at this machine's GPUs and at 8 GPUs x 2 nodes
    for gpus in ("1x1", "8x2"):
        assert re.search(rf"^vit_7b_patch16_dinov3\.lvd1689m\s+[\d.]+ {gpus}\s", log, re.M), gpus


def test_unknown_option_is_a_usage_line():
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "run_gpu_checks.sh"), "--bogus"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert result.returncode == 2 and "usage:" in result.stderr


def test_config_load_without_schema_still_checks_meaning(tmp_path):
    """A bare GPU node may lack jsonschema: the planner CLI loads without the schema and still
    runs the settings rules of the start-up check (config_check.py needs no jsonschema)."""
    from workflow_scripts import config as cfg
    from workflow_scripts import config_check
    from workflow_scripts.errors import InputError

    schema_error = tmp_path / "schema_error.yaml"
    schema_error.write_text("train: {bogus_key: 1}\n")
    with pytest.raises(InputError, match="bogus_key"):
        cfg.load([REPO / "config.yaml", schema_error])
    assert "bogus_key" in cfg.load([REPO / "config.yaml", schema_error], schema=False)["train"]
    meaning_error = tmp_path / "meaning_error.yaml"
    meaning_error.write_text("architectures: [{name: vit_giant_patch16_dinov3, weights: none}]\n")
    loaded = cfg.load([REPO / "config.yaml", meaning_error], schema=False)
    with pytest.raises(InputError, match="unknown architecture"):
        config_check.check(loaded, files=False, models=False)
