"""FSDP2 training on CPU with gloo (2 processes, tests/fsdp_driver.py or the CLI under torchrun):
equal to DDP within float tolerance, kill -9 + rerun bitwise equal, the sharded resume state
loaded, and training continued, at another world size (2 -> 1, opt-in), and a depth-2 copy of
ViT-7B's width trained sharded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hang_guard import HANG_GUARD_S
from safetensors.torch import load_file
from test_train_run import (
    REPO,
    SINGLE_PROCESS,
    TORCHRUN,
    cli_args,
    log_epochs,
    make_cache,
    make_job,
    stop_after_epoch_one,
)
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

from workflow_scripts.model.checkpoint import load_backbone_checkpoint
from workflow_scripts.train import loop, sharded_state

pytestmark = pytest.mark.slow

EPOCHS = 6  # 12 images, batch 4 on each of 2 ranks: one step per epoch
# FSDP reduce-scatters where DDP all-reduces: sums round differently. Tolerance per tensor:
# max |FSDP - DDP| <= TOLERANCE x max |DDP| (measured after 6 steps: 5e-6 for AdamW's exp_avg
# of the prototype layer, 6e-8 for the weights)
TOLERANCE = 1e-5


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def job_json(job: loop.TrainJob) -> str:
    return json.dumps(
        {
            **job.__dict__,
            "cache_dir": str(job.cache_dir),
            "out_dir": str(job.out_dir),
            "resume_dir": str(job.resume_dir),
        }
    )


def torchrun(args: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
    """2 processes on the CPU (gloo); fails the test with the ranks' stderr."""
    result = subprocess.run(
        [*TORCHRUN, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_driver(job: loop.TrainJob, out: Path) -> dict:
    torchrun([str(REPO / "tests" / "fsdp_driver.py"), job_json(job), str(out)])
    return torch.load(out / "rank0.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-process job trained with DDP and with FSDP."""
    root = tmp_path_factory.mktemp("fsdp")
    cache = make_cache(root / "cache")
    held = {}
    for strategy in ("ddp", "fsdp"):
        job = replace(
            make_job(root / strategy, cache, epochs=EPOCHS, checkpoint_every=2), strategy=strategy
        )
        held[strategy] = (job, run_driver(job, root / strategy))
    return held


def assert_close(a: dict, b: dict, tolerance: float, where: str) -> None:
    """Every tensor within tolerance x its largest magnitude (0: bitwise equal)."""
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            assert_close(a[key], b[key], tolerance, f"{where}.{key}")
        elif isinstance(a[key], torch.Tensor):
            if tolerance == 0:
                assert torch.equal(a[key], b[key]), (where, key)
                continue
            difference = (a[key].double() - b[key].double()).abs().max().item()
            scale = a[key].double().abs().max().item()
            assert difference <= tolerance * scale, (where, key, difference, scale)
        else:
            assert a[key] == b[key], (where, key)


def test_two_process_fsdp_equals_ddp(runs):
    (ddp_job, ddp), (fsdp_job, fsdp) = runs["ddp"], runs["fsdp"]
    for part in ("student", "teacher"):
        assert_close(ddp[part], fsdp[part], TOLERANCE, part)
    assert_close(ddp["optimizer"]["state"], fsdp["optimizer"]["state"], TOLERANCE, "optimizer")
    assert torch.allclose(ddp["center"], fsdp["center"], rtol=TOLERANCE)
    ddp_losses, fsdp_losses = (
        [json.loads(line)["loss"] for line in (job.out_dir / "log.jsonl").read_text().splitlines()]
        for job in (ddp_job, fsdp_job)
    )
    assert len(fsdp_losses) == EPOCHS
    assert fsdp_losses == pytest.approx(ddp_losses, abs=1e-5)
    # evaluated-epoch exports: the same single-file safetensors of the teacher backbone
    for epoch in (2, 4, 6):
        name = f"epoch_{epoch:04d}.safetensors"
        expected, exported = load_file(ddp_job.out_dir / name), load_file(fsdp_job.out_dir / name)
        assert_close(expected, exported, TOLERANCE, name)
    final = load_file(fsdp_job.out_dir / f"epoch_{EPOCHS:04d}.safetensors")
    first = load_file(fsdp_job.out_dir / "epoch_0002.safetensors")
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], final["blocks.0.attn.qkv.weight"])
    for key, value in final.items():
        assert torch.equal(value, fsdp["teacher"][f"backbone.{key}"]), key
    model, meta = load_backbone_checkpoint(fsdp_job.out_dir / f"epoch_{EPOCHS:04d}.safetensors")
    assert meta["epoch"] == EPOCHS  # timm names: loads strictly into a fresh timm model


def test_sharded_state_loads_into_one_process(runs, tmp_path):
    """2 -> 1: the DCP shards of a 2-process FSDP run load into a single process."""
    fsdp_job, fsdp = runs["fsdp"]
    fresh = replace(fsdp_job, out_dir=tmp_path / "train", resume_dir=tmp_path / "resume")
    trainer = loop.Trainer(fresh, SINGLE_PROCESS)
    record = sharded_state.read_commit(fsdp_job.resume_dir)
    assert record["epoch"] == EPOCHS and len(record["extra"]["rng"]) == 2
    sharded_state.load(
        fsdp_job.resume_dir, record, trainer.student, trainer.teacher, trainer.optimizer
    )
    for part in ("student", "teacher"):
        assert_close(getattr(trainer, part).state_dict(), fsdp[part], 0.0, part)
    optimizer = get_optimizer_state_dict(trainer.student, trainer.optimizer)
    assert_close(optimizer["state"], fsdp["optimizer"]["state"], 0.0, "optimizer")


@pytest.fixture(scope="module")
def killed_fsdp(runs, tmp_path_factory):
    """The reference FSDP job killed mid-way: launcher and ranks SIGKILLed (as a node failure)
    once epoch 2 is logged. Returns (job, last committed epoch)."""
    reference, _ = runs["fsdp"]
    root = tmp_path_factory.mktemp("killed")
    job = replace(reference, out_dir=root / "train", resume_dir=root / "resume")
    command = ["-m", "workflow_scripts.train.cli", *cli_args(job), "--strategy", "fsdp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [*TORCHRUN, *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while 2 not in log_epochs(job.out_dir) and process.poll() is None:
            assert time.monotonic() < deadline, "epoch 2 never finished"
            time.sleep(0.01)
    finally:
        # torchrun starts ranks in new sessions: kill every descendant, then the launcher
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
    killed_after = json.loads((job.resume_dir / sharded_state.COMMIT_FILE).read_text())["epoch"]
    assert 2 <= killed_after < EPOCHS, "the run was not killed mid-way"
    return job, killed_after


def copy_of(job: loop.TrainJob, root: Path, **settings) -> loop.TrainJob:
    """The job with its output and resume folders copied under `root` (and settings edited)."""
    shutil.copytree(job.out_dir, root / "train")
    shutil.copytree(job.resume_dir, root / "resume")
    return replace(
        job,
        out_dir=root / "train",
        resume_dir=root / "resume",
        settings={**job.settings, **settings},
    )


def test_fsdp_killed_and_rerun_is_bitwise_the_same(runs, killed_fsdp, tmp_path):
    reference, _ = runs["fsdp"]
    job, killed_after = copy_of(killed_fsdp[0], tmp_path), killed_fsdp[1]
    result = torchrun(["-m", "workflow_scripts.train.cli", *cli_args(job), "--strategy", "fsdp"])
    assert f"resuming after epoch {killed_after}" in result.stderr
    assert "continued by" not in result.stderr  # same world size
    assert log_epochs(job.out_dir) == list(range(1, EPOCHS + 1))
    expected_log = (reference.out_dir / "log.jsonl").read_text().splitlines()
    resumed_log = (job.out_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in resumed_log] == [
        json.loads(line)["loss"] for line in expected_log
    ]
    for epoch in (2, 4, 6):
        name = f"epoch_{epoch:04d}.safetensors"
        assert_close(load_file(reference.out_dir / name), load_file(job.out_dir / name), 0.0, name)
    # only the committed epoch's shards are kept
    assert [p.name for p in (job.resume_dir / "sharded").iterdir()] == [f"epoch_{EPOCHS:04d}"]


def test_fsdp_state_of_two_processes_is_continued_by_one_only_when_opted_in(
    runs, killed_fsdp, tmp_path, capsys
):
    """2 -> 1: refused (set aside) by default; with train.resume_at_other_world_size the one
    process continues after the killed run's last epoch, on the resharded state."""
    reference, _ = runs["fsdp"]
    killed, killed_after = killed_fsdp

    refused = copy_of(killed, tmp_path / "default")
    trainer = loop.Trainer(refused, SINGLE_PROCESS)
    assert trainer.start_epoch == 0
    assert "saved by 2 process(es) and this job has 1" in capsys.readouterr().err
    assert not (refused.resume_dir / sharded_state.COMMIT_FILE).exists()
    assert len(list(refused.resume_dir.glob("stale-*/sharded/epoch_*"))) == 1
    del trainer

    job = copy_of(killed, tmp_path / "opted_in", resume_at_other_world_size=True)
    loop.run(job)
    stderr = capsys.readouterr().err
    assert (
        f"resuming after epoch {killed_after} from {job.resume_dir / sharded_state.COMMIT_FILE}"
        ", saved by 2 process(es), continued by 1: global batch 8 -> 4"
    ) in stderr
    lines = [json.loads(line) for line in (job.out_dir / "log.jsonl").read_text().splitlines()]
    expected = [
        json.loads(line) for line in (reference.out_dir / "log.jsonl").read_text().splitlines()
    ]
    assert [line["epoch"] for line in lines] == list(range(1, EPOCHS + 1))
    # the epochs before the kill are the 2-process run's; after it, 1 process takes 3 steps of 4
    assert [line["loss"] for line in lines[:killed_after]] == [
        line["loss"] for line in expected[:killed_after]
    ]
    assert [(line["world_size"], line["steps"]) for line in lines] == [(2, 1)] * killed_after + [
        (1, 3)
    ] * (EPOCHS - killed_after)
    last_kept = 2 * (killed_after // 2)  # evaluated epochs: every 2
    for epoch in (2, 4, 6):
        name = f"epoch_{epoch:04d}.safetensors"
        exported, original = load_file(job.out_dir / name), load_file(reference.out_dir / name)
        if epoch <= last_kept:
            assert_close(original, exported, 0.0, name)
        else:  # trained on by the one process: its own weights, still a loadable timm backbone
            assert all(torch.isfinite(t).all() for t in exported.values())
            assert not torch.equal(exported["cls_token"], original["cls_token"])
            model, meta = load_backbone_checkpoint(job.out_dir / name)
            assert meta["world_size"] == 1 and meta["epoch"] == epoch
    record = json.loads((job.resume_dir / sharded_state.COMMIT_FILE).read_text())
    assert (record["epoch"], record["world_size"]) == (EPOCHS, 1)


def test_fsdp_state_saved_while_the_last_layer_is_frozen_resumes_bitwise(tmp_path, monkeypatch):
    """After epoch 1 the frozen last layer has no optimizer state yet (no gradient so far): the
    sharded state must load all the same and continue exactly as the uninterrupted run."""
    cache = make_cache(tmp_path / "cache")
    reference = replace(
        make_job(tmp_path / "reference", cache, epochs=3, checkpoint_every=1), strategy="fsdp"
    )
    assert reference.settings["optimizer"]["freeze_last_layer_epochs"] == 1
    loop.run(reference)
    job = replace(
        reference,
        out_dir=tmp_path / "stopped" / "train",
        resume_dir=tmp_path / "stopped" / "resume",
    )
    with monkeypatch.context() as patch:
        stop_after_epoch_one(patch)
        with pytest.raises(KeyboardInterrupt):
            loop.run(job)
    assert log_epochs(job.out_dir) == [1]
    loop.run(job)
    assert log_epochs(job.out_dir) == [1, 2, 3]
    losses = [
        [json.loads(line)["loss"] for line in (j.out_dir / "log.jsonl").read_text().splitlines()]
        for j in (reference, job)
    ]
    assert losses[0] == losses[1]
    for epoch in (1, 2, 3):
        name = f"epoch_{epoch:04d}.safetensors"
        assert_close(load_file(reference.out_dir / name), load_file(job.out_dir / name), 0.0, name)


def test_fsdp_state_of_one_process_is_continued_by_two(tmp_path, monkeypatch):
    """1 -> 2: a single process's DCP state (plain modules) loads into 2 sharded processes."""
    cache = make_cache(tmp_path / "cache")
    job = replace(
        make_job(tmp_path, cache, epochs=3, checkpoint_every=1, resume_at_other_world_size=True),
        strategy="fsdp",
    )
    stop_after_epoch_one(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        loop.run(job)
    saved = json.loads((job.resume_dir / sharded_state.COMMIT_FILE).read_text())
    assert (saved["epoch"], saved["world_size"]) == (1, 1)
    first = load_file(job.out_dir / "epoch_0001.safetensors")

    result = torchrun(["-m", "workflow_scripts.train.cli", *cli_args(job), "--strategy", "fsdp"])
    assert "saved by 1 process(es), continued by 2: global batch 4 -> 8" in result.stderr
    lines = [json.loads(line) for line in (job.out_dir / "log.jsonl").read_text().splitlines()]
    assert [(line["epoch"], line["world_size"]) for line in lines] == [(1, 1), (2, 2), (3, 2)]
    assert_close(first, load_file(job.out_dir / "epoch_0001.safetensors"), 0.0, "epoch 1")
    last = load_file(job.out_dir / "epoch_0003.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
    assert not torch.equal(last["cls_token"], first["cls_token"])
    record = json.loads((job.resume_dir / sharded_state.COMMIT_FILE).read_text())
    assert (record["epoch"], record["world_size"]) == (3, 2)


def test_seven_b_width_depth_two_trains_sharded(tmp_path):
    """ViT-7B's width (4096, SwiGLU 8192) at depth 2 (~340 M parameters), 2 FSDP processes."""
    cache = make_cache(tmp_path / "cache")
    job = replace(
        make_job(
            tmp_path,
            cache,
            epochs=1,
            checkpoint_every=1,
            max_steps_per_epoch=1,
            head={"out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64},
        ),
        arch="vit_7b_patch16_dinov3.lvd1689m",
        model_kwargs={"depth": 2},
        strategy="fsdp",
        activation_checkpointing=True,
    )
    torchrun(
        [
            "-m",
            "workflow_scripts.train.cli",
            *cli_args(job),
            "--strategy",
            "fsdp",
            "--activation-checkpointing",
        ],
        timeout_s=HANG_GUARD_S,
    )
    exported = load_file(job.out_dir / "epoch_0001.safetensors")
    assert exported["blocks.1.mlp.fc1_g.weight"].shape == (8192, 4096)
    assert "blocks.2.norm1.weight" not in exported
    assert log_epochs(job.out_dir) == [1]
