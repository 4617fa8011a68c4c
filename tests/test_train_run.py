"""Training runs on a tiny model and a small random image cache: frozen last layer, non-finite
loss, configuration changes, 2-process DDP, and kill + resume ending with the same weights."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hang_guard import HANG_GUARD_S
from safetensors.torch import load_file

from workflow_scripts import config as cfg
from workflow_scripts.data.cache import write_arrays
from workflow_scripts.errors import InputError
from workflow_scripts.train import cli, loop
from workflow_scripts.train.distributed import DistributedContext
from workflow_scripts.train.loss import DINOLoss

REPO = cfg.REPO_DIR
ARCH = "vit_small_patch16_dinov3.lvd1689m"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
CHANNELS = ["DAPI", "Tubulin", "Actin"]
SINGLE_PROCESS = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]


def make_cache(directory: Path, n_images: int = 12, height: int = 64, width: int = 80) -> Path:
    """A cache (docs/formats.md) of random uint16 fields, written by data.cache's writer."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sites = [f"P1/B{i // 4 + 2:02d}/s{i % 4 + 1}" for i in range(n_images)]
    table = pd.DataFrame(
        {
            "image_id": sites,
            "plate": "P1",
            "well": [s.split("/")[1] for s in sites],
            "site": [i % 4 + 1 for i in range(n_images)],
            "replicate": 1,
            "batch": "Week1",
            # treated: train.images defaults to the treated images
            "compound": "taxol",
            "concentration": 1.0,
            "treatment": "taxol@1",
            "moa": "Microtubule stabilizers",
            "is_control": False,
            **{
                f"path_{channel}": [f"/images/{s}_{channel}.tif" for s in sites]
                for channel in CHANNELS
            },
        }
    )
    arrays = {
        channel: rng.integers(0, 10000, (n_images, height, width), dtype=np.uint16)
        for channel in CHANNELS
    }
    write_arrays(directory, table, arrays, clip_max=10000, settings_digest="test")
    return directory


def demo_settings(**overrides) -> dict:
    """The demo config's train section (tiny crops and head), smaller batches for 12 images."""
    config = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])
    settings = cfg.train_settings(config, ARCH)
    settings.update(batch_size_per_gpu=4, num_workers=0)
    return cfg.deep_merge(settings, overrides)


def make_job(tmp_path: Path, cache: Path, channel: str = "DAPI", **overrides) -> loop.TrainJob:
    return loop.TrainJob(
        arch=ARCH,
        channel=channel,
        cache_dir=cache,
        weights="none",
        model_kwargs=TINY,
        settings=demo_settings(**overrides),
        out_dir=tmp_path / "train",
        resume_dir=tmp_path / "resume",
    )


def cli_args(job: loop.TrainJob) -> list[str]:
    return [
        "--arch",
        job.arch,
        "--channel",
        job.channel,
        "--cache-dir",
        str(job.cache_dir),
        "--weights",
        job.weights,
        "--model-kwargs",
        json.dumps(job.model_kwargs),
        "--settings",
        json.dumps(job.settings),
        "--out-dir",
        str(job.out_dir),
        "--resume-dir",
        str(job.resume_dir),
    ]


def stop_after_epoch_one(monkeypatch) -> None:
    """The job ends (time limit, preemption) right after epoch 1's state is saved."""
    finish_epoch = loop.Trainer._end_epoch

    def stopped(self, epoch, stats):
        finish_epoch(self, epoch, stats)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_end_epoch", stopped)


def log_epochs(out_dir: Path) -> list[int]:
    path = out_dir / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core CI runner OpenMP's
    spinning threads slow a step down ~15x. Subprocesses get OMP_NUM_THREADS=1 to match."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"))


def test_last_layer_frozen_in_first_epoch_only(tmp_path, cache):
    job = make_job(tmp_path, cache, optimizer={"warmup_epochs": 0, "freeze_last_layer_epochs": 1})
    trainer = loop.Trainer(job, SINGLE_PROCESS)
    batch = next(iter(trainer.loader))

    def snapshot():
        return {n: p.detach().clone() for n, p in trainer.student.named_parameters()}

    def changed(before):
        return {n for n, p in trainer.student.named_parameters() if not torch.equal(before[n], p)}

    before = snapshot()
    trainer.train_step(batch, epoch=0, step=0)
    changed_first = changed(before)
    last_layer = {n for n in before if "last_layer" in n}
    assert last_layer and not (changed_first & last_layer)
    assert "backbone.blocks.0.attn.qkv.weight" in changed_first
    assert "head.mlp.0.weight" in changed_first

    before = snapshot()
    trainer.train_step(batch, epoch=1, step=0)
    assert last_layer <= changed(before)


def test_non_finite_loss_stops_and_keeps_last_good_state(tmp_path, cache, monkeypatch):
    job = make_job(tmp_path, cache, epochs=2, checkpoint_every=1, max_steps_per_epoch=2)
    real_forward = DINOLoss.forward
    calls = []

    def diverging_forward(self, student_output, teacher_output, teacher_temp):
        calls.append(1)
        loss = real_forward(self, student_output, teacher_output, teacher_temp)
        return loss * float("nan") if len(calls) == 4 else loss  # epoch 2, step 2

    monkeypatch.setattr(DINOLoss, "forward", diverging_forward)
    with pytest.raises(InputError, match=r"non-finite loss \(nan\) at epoch 2, step 2"):
        loop.run(job)
    state = torch.load(job.resume_dir / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert log_epochs(job.out_dir) == [1]
    assert not (job.out_dir / "epoch_0002.safetensors").exists()


def test_kill_between_checkpoint_and_state_redoes_that_epoch_once(tmp_path, cache, monkeypatch):
    job = make_job(tmp_path, cache, epochs=2, checkpoint_every=1, max_steps_per_epoch=1)
    real_save = loop.save_resume_state
    saves = []

    def killed_on_second_save(path, state):
        saves.append(state["epoch"])
        if len(saves) == 2:
            raise KeyboardInterrupt  # stands in for SIGKILL while epoch 2's state is written
        real_save(path, state)

    monkeypatch.setattr(loop, "save_resume_state", killed_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        loop.run(job)
    assert (job.resume_dir / "epochs" / "epoch_0002.safetensors").exists()  # written before
    assert log_epochs(job.resume_dir) == [1, 2]
    monkeypatch.setattr(loop, "save_resume_state", real_save)
    loop.run(job)
    assert log_epochs(job.out_dir) == [1, 2]  # epoch 2 redone, logged once


def test_changed_configuration_sets_old_state_aside_and_restarts(tmp_path, cache, capsys):
    job = make_job(tmp_path, cache, channel="rgb", epochs=1, max_steps_per_epoch=1)
    loop.run(job)
    meta = json.loads((job.out_dir / "epoch_0001.json").read_text())
    assert (meta["channel"], meta["in_chans"], meta["epoch"]) == ("rgb", 3, 1)
    first = load_file(job.out_dir / "epoch_0001.safetensors")

    changed = replace(job, settings=cfg.deep_merge(job.settings, {"seed": 1}))
    capsys.readouterr()
    loop.run(changed)
    assert "is for another configuration" in capsys.readouterr().err
    stale = list(job.resume_dir.glob("stale-*"))
    assert len(stale) == 1 and (stale[0] / "state.pt").is_file()
    assert (stale[0] / "epochs" / "epoch_0001.safetensors").is_file()
    assert log_epochs(job.out_dir) == [1]
    second = load_file(job.out_dir / "epoch_0001.safetensors")
    assert not torch.equal(first["cls_token"], second["cls_token"])  # retrained with seed 1


def test_cli_rejects_bad_settings_with_exit_2(tmp_path, cache, capsys):
    job = make_job(tmp_path, cache)
    args = cli_args(job)
    settings_at = args.index("--settings") + 1

    args[settings_at] = json.dumps({k: v for k, v in job.settings.items() if k != "loss"})
    assert cli.main(args) == 2
    assert "missing key(s) loss" in capsys.readouterr().err
    args[settings_at] = json.dumps(cfg.deep_merge(job.settings, {"optimizer": {"name": "lamb"}}))
    assert cli.main(args) == 2
    assert "key 'optimizer.name'" in capsys.readouterr().err
    args[settings_at] = "{not json"
    assert cli.main(args) == 2
    assert "--settings: not valid JSON" in capsys.readouterr().err
    assert not job.out_dir.exists()


def run_subprocess(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        **kwargs,
    )


@pytest.mark.slow
def test_ddp_state_of_one_process_is_continued_by_two_when_opted_in(tmp_path, cache, monkeypatch):
    """1 -> 2 (DDP's full state.pt): the two ranks continue after the one process's epoch."""
    job = make_job(tmp_path, cache, epochs=3, checkpoint_every=1, resume_at_other_world_size=True)
    stop_after_epoch_one(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        loop.run(job)
    first = load_file(job.out_dir / "epoch_0001.safetensors")

    result = run_subprocess([*TORCHRUN, "-m", "workflow_scripts.train.cli", *cli_args(job)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved by 1 process(es), continued by 2: global batch 4 -> 8" in result.stderr
    lines = [json.loads(line) for line in (job.out_dir / "log.jsonl").read_text().splitlines()]
    # 12 images: 3 steps of 4 on one process, then 1 step of 2 x 4
    assert [(line["epoch"], line["world_size"], line["steps"]) for line in lines] == [
        (1, 1, 3),
        (2, 2, 1),
        (3, 2, 1),
    ]
    assert torch.equal(
        load_file(job.out_dir / "epoch_0001.safetensors")["cls_token"], first["cls_token"]
    )
    last = load_file(job.out_dir / "epoch_0003.safetensors")
    assert not torch.equal(last["cls_token"], first["cls_token"])
    assert json.loads((job.out_dir / "epoch_0003.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("weak_label", ["none", "compound"])
def test_two_process_ddp_ranks_end_identical(tmp_path, cache, weak_label):
    job = make_job(tmp_path, cache, epochs=1, weak_label=weak_label)
    driver = tmp_path / "driver.py"
    # Trainer.fit as the CLI runs it, then every rank saves what it holds for comparison
    driver.write_text(
        textwrap.dedent(f"""
        import json, sys, torch
        from pathlib import Path
        from workflow_scripts.train import distributed, loop
        fields = json.loads(sys.argv[1])
        for key in ("cache_dir", "out_dir", "resume_dir"):
            fields[key] = Path(fields[key])
        job = loop.TrainJob(**fields)
        context = distributed.setup()
        trainer = loop.Trainer(job, context)
        trainer.fit()
        torch.save({{"student": trainer.student.state_dict(),
                     "teacher": trainer.teacher.state_dict(),
                     "center": trainer.loss.center}},
                   Path({str(tmp_path)!r}) / f"rank{{context.rank}}.pt")
        del trainer
        distributed.teardown()
    """)
    )
    job_json = json.dumps(
        {
            **job.__dict__,
            "cache_dir": str(cache),
            "out_dir": str(job.out_dir),
            "resume_dir": str(job.resume_dir),
        }
    )
    result = run_subprocess([*TORCHRUN, str(driver), job_json])
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("student", "teacher"):
        for key, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][key]), (part, key)
    assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    assert ranks[0]["center"].abs().sum() > 0
    # 12 images over 2 ranks of batch 4: one step per epoch each, logged as 8 images per step
    assert log_epochs(job.out_dir) == [1]
    assert json.loads((job.out_dir / "log.jsonl").read_text())["steps"] == 1
    exported = load_file(job.out_dir / "epoch_0001.safetensors")
    teacher = ranks[0]["teacher"]
    for key, value in exported.items():
        assert torch.equal(value, teacher[f"backbone.{key}"]), key


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, cache, capsys):
    reference = make_job(tmp_path / "reference", cache, epochs=8, checkpoint_every=2)
    loop.run(reference)
    assert log_epochs(reference.out_dir) == list(range(1, 9))

    job = replace(
        reference, out_dir=tmp_path / "killed" / "train", resume_dir=tmp_path / "killed" / "resume"
    )
    command = [sys.executable, "-m", "workflow_scripts.train.cli", *cli_args(job)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while 2 not in log_epochs(job.out_dir) and process.poll() is None:
            assert time.monotonic() < deadline, "epoch 2 never finished"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_after = torch.load(job.resume_dir / "state.pt", weights_only=True)["epoch"]
    assert 2 <= killed_after < 8, "the run was not killed mid-way"
    shutil.rmtree(job.out_dir)  # Snakemake deletes a failed job's outputs before the rerun

    capsys.readouterr()
    loop.run(job)  # the rerun, in this process to save an interpreter start
    assert f"resuming after epoch {killed_after}" in capsys.readouterr().err
    assert log_epochs(job.out_dir) == list(range(1, 9))
    reference_log = (reference.out_dir / "log.jsonl").read_text().splitlines()
    resumed_log = (job.out_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in resumed_log] == [
        json.loads(line)["loss"] for line in reference_log
    ]
    for epoch in (2, 4, 6, 8):
        expected = load_file(reference.out_dir / f"epoch_{epoch:04d}.safetensors")
        resumed = load_file(job.out_dir / f"epoch_{epoch:04d}.safetensors")
        assert expected.keys() == resumed.keys()
        for key in expected:
            assert torch.equal(expected[key], resumed[key]), (epoch, key)

    # rerunning a finished job only re-exports its outputs
    shutil.rmtree(job.out_dir)
    loop.run(job)
    assert "resuming after epoch 8" in capsys.readouterr().err
    assert log_epochs(job.out_dir) == list(range(1, 9))
    assert sorted(p.name for p in job.out_dir.glob("epoch_*.safetensors")) == [
        "epoch_0002.safetensors",
        "epoch_0004.safetensors",
        "epoch_0006.safetensors",
        "epoch_0008.safetensors",
    ]
