"""GPU-side rules that can be checked on CPU: which GPU a process takes, the BatchNorm head
across processes, and the prototype layer's precision under autocast."""

import pytest
import torch
from test_train_run import make_cache, make_job
from torch import nn

from workflow_scripts.errors import InputError
from workflow_scripts.train import distributed, loop
from workflow_scripts.train.ema import make_teacher, update_teacher
from workflow_scripts.train.head import DINOHead, synchronize_batch_norm

TEACHER_TEMP = 0.04


# ---------------------------------------------------------------- device
def test_device_is_the_local_rank_when_all_gpus_are_visible():
    assert distributed.cuda_device_index(3, 4, {}) == 3  # torchrun on a 4-GPU node
    assert distributed.cuda_device_index(0, 1, {}) == 0


def test_device_is_the_only_visible_gpu_under_per_task_binding():
    # srun --gpus-per-task=1: task 3 of a node sees its own GPU as cuda:0
    assert distributed.cuda_device_index(3, 1, {"CUDA_VISIBLE_DEVICES": "3"}) == 0


def test_device_mismatch_names_the_visible_gpus():
    with pytest.raises(InputError, match=r"local rank 3.*2 GPUs.*CUDA_VISIBLE_DEVICES=2,3"):
        distributed.cuda_device_index(3, 2, {"CUDA_VISIBLE_DEVICES": "2,3"})


def test_setup_sets_a_visible_device(monkeypatch):
    """setup() with one visible GPU and SLURM_LOCALID-style local rank 5 (one process)."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for key in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "5")
    context = distributed.setup()
    assert context.device == torch.device("cuda", 0) and chosen == [torch.device("cuda", 0)]


# ---------------------------------------------------------------- BatchNorm head
def bn_head() -> DINOHead:
    torch.manual_seed(0)
    return DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4, use_bn=True)


def test_single_process_or_no_batch_norm_keeps_the_model():
    head = bn_head()
    assert synchronize_batch_norm(head, 1, "cuda") is head
    plain = DINOHead(8, out_dim=16, hidden_dim=12, bottleneck_dim=4)
    assert synchronize_batch_norm(plain, 4, "cpu") is plain


def test_several_cpu_processes_with_batch_norm_are_refused():
    with pytest.raises(InputError, match="train.head.use_bn"):
        synchronize_batch_norm(bn_head(), 2, "cpu")


def test_several_gpu_processes_get_sync_batch_norm_with_the_same_state():
    head = bn_head()
    state = {key: value.clone() for key, value in head.state_dict().items()}
    synced = synchronize_batch_norm(head, 2, "cuda")
    norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    assert synced.state_dict().keys() == state.keys()  # checkpoints and resume states load
    for key, value in synced.state_dict().items():
        torch.testing.assert_close(value, state[key])
    # the teacher (eval mode: no synchronisation) runs on CPU and copies the student's statistics
    teacher = make_teacher(synced)
    for m in synced.modules():
        if isinstance(m, nn.SyncBatchNorm):
            m.running_mean.add_(1.0)
    update_teacher(synced, teacher, 0.99)
    teacher_norm = next(m for m in teacher.modules() if isinstance(m, nn.SyncBatchNorm))
    torch.testing.assert_close(teacher_norm.running_mean, torch.ones(12))
    assert teacher(torch.rand(3, 8)).shape == (3, 16)


def test_trainer_refuses_a_batch_norm_head_in_several_cpu_processes(tmp_path):
    job = make_job(tmp_path, make_cache(tmp_path / "cache"), head={"use_bn": True})
    two_ranks = distributed.DistributedContext(
        rank=0, world_size=2, local_rank=0, device=torch.device("cpu")
    )
    with pytest.raises(InputError, match="use_bn"):
        loop.Trainer(job, two_ranks)
    alone = distributed.DistributedContext(
        rank=0, world_size=1, local_rank=0, device=torch.device("cpu")
    )
    trainer = loop.Trainer(job, alone)  # one process: BatchNorm as configured
    assert any(isinstance(m, nn.BatchNorm1d) for m in trainer.student.modules())


# ---------------------------------------------------------------- head precision
def real_size_head(fp32: bool = True) -> tuple[DINOHead, torch.Tensor]:
    torch.manual_seed(0)
    head = DINOHead(
        64, out_dim=8192, hidden_dim=128, bottleneck_dim=256, norm_last_layer=False, fp32=fp32
    )
    return head, torch.randn(32, 64)


@torch.no_grad()
def test_head_runs_in_fp32_under_bf16_autocast():
    head, x = real_size_head()
    reference = head(x)  # no autocast: fp32 throughout
    embedding = x.bfloat16()  # what the backbone hands over under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(embedding)
        head.fp32 = False
        bf16_logits = head(embedding)
    assert logits.dtype == torch.float32 and bf16_logits.dtype == torch.bfloat16
    # exactly the fp32 head on the bf16 embedding
    head.fp32 = True
    torch.testing.assert_close(logits, head(embedding.float()), rtol=0, atol=0)
    fp32_error = ((logits - reference).abs() / TEACHER_TEMP).mean()
    bf16_error = ((bf16_logits.float() - reference).abs() / TEACHER_TEMP).mean()
    assert fp32_error < bf16_error / 2, (fp32_error, bf16_error)


@torch.no_grad()
def test_head_without_autocast_is_unchanged():
    head, x = real_size_head()
    expected = head.last_layer(nn.functional.normalize(head.mlp(x), dim=-1))
    torch.testing.assert_close(head(x), expected, rtol=0, atol=0)
    unchanged, _ = real_size_head(fp32=False)
    torch.testing.assert_close(unchanged(x), expected, rtol=0, atol=0)
