"""Hostile-user cases that need Snakemake itself (issue #11): unsafe characters in paths, a
replaced raw TIFF, two runs on one output_dir, a run killed with -9.

One small real run (a 2-week demo of 16 fields, DAPI only, one training epoch) in a repo copy
whose output_dir and weights path hold a space, a quote and `$(...)`; later tests reuse it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hang_guard import HANG_GUARD_S
from workflow_copy import (
    DEMO_CONFIG,
    REPO,
    copy_repo,
    demo_config,
    snakemake,
    summary,
    write_overlay,
)

from workflow_scripts.output_lock import LOCK_NAME

# each `$(touch ...)` would create its file in the job's working directory if a shell ran it
OUTPUT_DIR = "results/out put'q$(touch pwned_out)"
WEIGHTS_DIR = "my weights'$(touch pwned_weights)"
ARCH = demo_config()["architectures"][0]["name"]
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def overlay(weights: str) -> dict:
    return {
        "output_dir": OUTPUT_DIR,
        "data": {
            "channels": ["DAPI"],
            "demo": {
                "n_weeks": 2,
                "replicates": 1,
                "compounds_per_moa": 1,
                "concentrations_per_compound": 1,
                "sites_per_well": 1,
                "dmso_wells_per_plate": 2,
            },
        },
        "channel_modes": ["per_channel"],
        "architectures": [{"name": ARCH, "weights": weights, "gpus": 0, "model_kwargs": TINY}],
        "train": {"epochs": 1, "checkpoint_every": 1, "loss": {"warmup_teacher_temp_epochs": 1}},
        "evaluate": {"map": {"permutations": 20}},
    }


def config_args(workdir: Path) -> list[str]:
    return ["--configfile", DEMO_CONFIG, str(workdir / "overlay.yaml")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Repo copy + weights file at a hostile path + one complete run."""
    from workflow_scripts.model.backbone import build_backbone
    from workflow_scripts.model.checkpoint import save_weights

    workdir = copy_repo(tmp_path_factory.mktemp("hostile") / "repo")
    weights = workdir / WEIGHTS_DIR / "tiny.safetensors"
    save_weights(build_backbone(ARCH, "none", TINY), weights)
    write_overlay(workdir / "overlay.yaml", overlay(str(weights)))
    snakemake(workdir, "--cores", "2", *config_args(workdir), timeout_s=HANG_GUARD_S)
    return workdir


# Placeholders that may appear unquoted in a shell directive, and why it is safe.
UNQUOTED_OK = {
    "threads": "an integer",
    "resources.gpus_per_node": "an integer",
    "resources.allow_cpu_fallback": "0 or 1",
    "resources.extract_batch_size": "an integer or auto (schema; quoted anyway)",
    "resources.extract_workers": "an integer",
    "params.shape": "two integers (schema)",
    "params.launcher": "several words built from an integer (common.smk)",
    "params.model": "several arguments, each shlex-quoted (common.smk: pretrained_model_arg)",
    "params.strategy": "'--strategy ddp|fsdp' [+ '--activation-checkpointing'] (schema enums)",
    "params.epochs": "the trained epoch numbers, integers joined by spaces (evaluate.smk)",
    "params.plates": "'--plates' + BBBC021 plate names checked against the known list",
    "wildcards.channel": "constrained to the configured channel names (schema enum)",
    "wildcards.epoch": r"constrained to \d{4}",
    "wildcards.seed": r"constrained to -?\d+ (common.smk) and the listed train.seeds",
    "wildcards.arch": "constrained to the configured, known timm names",
    "wildcards.plate": r"constrained to Week\d+_\d+",
    "source_args()": "an f-string call whose result holds :q placeholders",
    "demo_layout_args()": "an f-string call whose result holds :q placeholders (or nothing)",
}


def shell_texts(lines: list[str]):
    """The lines of every shell command: the body of each `shell:` directive and of each
    `*_SHELL = (...)` constant (a command shared by a rule and its train.seeds copy)."""
    for i, line in enumerate(lines):
        if line.strip() == "shell:" or re.match(r"\s*\w+_SHELL = \($", line):
            indent = len(line) - len(line.lstrip())
            for body in lines[i + 1 :]:
                if body.strip() and len(body) - len(body.lstrip()) <= indent:
                    break
                yield body


def test_every_shell_placeholder_is_quoted_or_known_safe():
    unsafe = []
    constants = 0
    for smk in sorted((REPO / "rules").glob("*.smk")):
        lines = smk.read_text().splitlines()
        constants += sum(bool(re.match(r"\w+_SHELL = \($", line)) for line in lines)
        for body in shell_texts(lines):
            # {{...}}: a placeholder of a str.format template (EVALUATE_SHELL), the same check
            for name, quoted in re.findall(r"\{+([^{}:]+)(:q)?\}+", body):
                if not quoted and name not in UNQUOTED_OK and name != "label":
                    unsafe.append(f"{smk.name}: {{{name}}} in {body.strip()}")
    assert constants >= 4  # the shared commands are scanned too
    assert unsafe == []


def pwned(workdir: Path) -> list[str]:
    return [str(p) for p in workdir.rglob("pwned*")]


def test_hostile_paths_are_passed_as_data_never_executed(run):
    out = run / OUTPUT_DIR
    assert (out / "summary" / "report.html").is_file()
    assert (out / "features" / ARCH / "DAPI" / "epoch_0000.parquet").is_file()  # read the weights
    assert (out / "train" / ARCH / "DAPI" / "epoch_0001.safetensors").is_file()
    assert pwned(run) == []
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_replaced_raw_tiff_reruns_the_stages_after_it_and_only_those(run):
    out = run / OUTPUT_DIR
    assert "Nothing to be done" in snakemake(run, "-n", *config_args(run)).stdout
    image = sorted((out / "demo_data" / "images").rglob("*_w1*.tif"))[0]
    before = os.stat(image)
    pixels = tifffile.imread(image)
    tifffile.imwrite(image, (pixels[::-1] + 1).astype(np.uint16))  # new pixels, same size
    # even a copy that keeps an older time (cp -p, rsync -t) must count
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    rows = summary(run, OUTPUT_DIR, *config_args(run))
    pending = {row.rule for row in rows if row.pending}
    assert pending == {
        "validate_images",
        "build_image_cache",
        "train_" + ARCH.replace(".", "_"),
        "extract_pretrained",
        "extract_trained_" + ARCH.replace(".", "_"),
        "evaluate_features",
        "handcrafted_profiles",  # the demo's baseline reads the image cache
        "evaluate_baseline",
        "attention_maps",  # draws on the cached fields
        "summarize",
    }, pending
    # the rerun (and a dry run before it) rewrites nothing the user did not change
    upstream = ("generate_demo_data", "prepare_metadata")
    assert all(not row.pending for row in rows if row.rule in upstream)


@pytest.mark.slow
def test_new_pixels_under_the_old_names_retrain_from_scratch(run):
    """Issue 23, case 1: every DAPI TIFF overwritten with new pixels (same names, same size);
    the rebuilt cache used to pass for the old one and training resumed its old state."""
    out = run / OUTPUT_DIR
    rng = np.random.default_rng(23)
    for image in sorted((out / "demo_data" / "images").rglob("*_w1*.tif")):
        old = tifffile.imread(image)
        tifffile.imwrite(image, rng.permutation(old.ravel()).reshape(old.shape))
    train = "train_" + ARCH.replace(".", "_")
    snakemake(run, "--cores", "2", *config_args(run), "--until", train, timeout_s=HANG_GUARD_S)
    log = (out / "logs" / "train" / ARCH / "DAPI.log").read_text()
    assert "resuming after epoch" not in log
    # (the weights themselves may not differ: this run's one step has lr 0 in its warm-up)
    assert "is for another configuration" in log and "training from scratch" in log


def test_second_run_on_the_same_output_dir_is_refused_naming_the_holder(run):
    out = run / OUTPUT_DIR
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = out / LOCK_NAME
        lock.write_text(
            f'{{"host": "{socket.gethostname()}", "pid": {holder.pid}, "checkout": "/elsewhere"}}'
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "--cores",
                "1",
                *config_args(run),
                "--forcerun",
                "summarize",
            ],
            cwd=run,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert result.returncode != 0
        text = result.stdout + result.stderr
        assert f"in use by snakemake PID {holder.pid}" in text, text[-3000:]
        assert "/elsewhere" in text
        assert lock.is_file()  # someone else's lock is never removed
    finally:
        holder.kill()
        holder.wait()
    # now the holder is dead: the lock is stale and the same command runs
    snakemake(
        run, "--cores", "1", *config_args(run), "--forcerun", "summarize", timeout_s=HANG_GUARD_S
    )
    assert not (out / LOCK_NAME).exists()


def test_after_kill_9_the_plain_command_recovers(run):
    out = run / OUTPUT_DIR
    log = out / "logs" / "build_image_cache.log"
    log.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "1",
        *config_args(run),
        "--forcerun",
        "build_image_cache",
        "--until",
        "build_image_cache",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=run,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 240
    while not log.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its job, mid-job
    proc.wait()
    # the job had begun publishing: one output exists, marked incomplete by Snakemake
    (out / "cache" / "images.parquet").write_bytes(b"partial")
    assert (out / LOCK_NAME).exists() and (run / ".snakemake" / "locks").exists()
    snakemake(
        run,
        "--cores",
        "1",
        *config_args(run),
        "--until",
        "build_image_cache",
        timeout_s=HANG_GUARD_S,
    )
    assert (out / "cache" / "meta.json").is_file()
    assert not list(out.glob(".cache.*.tmp"))  # the killed build's temp folder is gone
    assert not (out / LOCK_NAME).exists()
