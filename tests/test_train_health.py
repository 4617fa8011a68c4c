"""Training-health statistics (workflow_scripts.train.health) against independent formulas, and
their place in a real training run's log.jsonl and training log."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from scipy.stats import ortho_group
from test_train_run import cache, make_job, one_torch_thread  # noqa: F401 (fixtures)
from torch.nn import functional as F

from workflow_scripts.train import health, loop
from workflow_scripts.train.loss import DINOLoss


def test_entropy_matches_scipy():
    probs = torch.softmax(torch.randn(5, 40, dtype=torch.float64) * 3, dim=-1)
    probs[0] = 0
    probs[0, 3] = 1  # one-hot: 0 log 0 = 0
    expected = [scipy_stats.entropy(row) for row in probs.numpy()]
    assert health.entropy(probs).numpy() == pytest.approx(expected, abs=1e-12)


def test_effective_rank_of_known_singular_values():
    rng = np.random.default_rng(0)
    n, d = 40, 12
    singular = np.array([5.0, 2.0, 1.0, 1.0, 0.5] + [0.0] * 7)
    u = ortho_group.rvs(n, random_state=1)[:, :d]
    u -= u.mean(axis=0)  # centred columns keep the singular values after centring
    u, _ = np.linalg.qr(u)
    matrix = u @ np.diag(singular) @ ortho_group.rvs(d, random_state=2)
    matrix += rng.normal(size=d)  # a constant offset per column: removed by the centring
    p = singular[singular > 0] / singular.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert health.effective_rank(torch.from_numpy(matrix)) == pytest.approx(expected, rel=1e-9)
    # r equal singular values -> r; identical rows -> 0
    flat = u[:, :3] @ ortho_group.rvs(d, random_state=3)[:3]
    assert health.effective_rank(torch.from_numpy(flat)) == pytest.approx(3.0, rel=1e-9)
    assert health.effective_rank(torch.ones(8, 4)) == 0.0


def test_embedding_spread_matches_numpy():
    values = np.random.default_rng(0).normal(3.0, 0.5, size=(20, 7))
    std, relative = health.embedding_spread(torch.from_numpy(values))
    assert std == pytest.approx(values.std(axis=0).mean(), rel=1e-12)
    assert relative == pytest.approx(std / np.sqrt((values**2).mean()), rel=1e-12)


def test_loss_splits_into_teacher_entropy_plus_kl():
    """DINOLoss - mean teacher entropy = mean over loss pairs of KL(teacher_i || student_v)."""
    torch.manual_seed(0)
    n_global, n_local, batch, k, temp = 2, 3, 6, 50, 0.04
    student = torch.randn((n_global + n_local) * batch, k)
    teacher = torch.randn(n_global * batch, k)
    loss_fn = DINOLoss(k, n_global, n_local, student_temp=0.1, center_momentum=0.9)
    loss_fn.center.normal_()
    meter = health.HealthMeter(torch.nn.Identity(), k)
    meter.observe_teacher(teacher, loss_fn.center, temp)
    targets = health.teacher_probabilities(teacher, loss_fn.center, temp).chunk(n_global)
    log_probs = F.log_softmax(student / 0.1, dim=-1).chunk(n_global + n_local)
    kls = [
        F.kl_div(log_probs[v], targets[i], reduction="batchmean")
        for i in range(n_global)
        for v in range(n_global + n_local)
        if v != i
    ]
    meter.observe_loss(float(loss_fn(student, teacher, temp)))
    out = meter.epoch_stats(loss_fn.center)
    assert out["teacher_kl"] == pytest.approx(float(torch.stack(kls).mean()), rel=1e-5)
    assert out["center_norm"] == pytest.approx(float(loss_fn.center.norm()))


def meter_stats(teacher_output: torch.Tensor, temp: float = 0.04) -> dict:
    meter = health.HealthMeter(torch.nn.Identity(), teacher_output.shape[1])
    center = torch.zeros(1, teacher_output.shape[1])
    meter.observe_teacher(teacher_output, center, temp)
    meter.observe_loss(10.0)
    return meter.epoch_stats(center)


def test_collapse_verdicts():
    k = 256
    torch.manual_seed(0)
    healthy = meter_stats(torch.randn(32, k) * 0.2)  # distinct, moderately peaked rows
    assert healthy["collapse"] is None and healthy["teacher_mutual_info"] > 0.5
    # near-uniform but crop-dependent (the demo's first epochs): not a collapse
    flat = meter_stats(torch.randn(32, k) * 0.02)
    assert flat["teacher_entropy"] > 0.95 * math.log(k) and flat["collapse"] is None
    uniform = meter_stats(torch.randn(32, k) * 1e-5)
    assert uniform["collapse"] == "uniform"
    assert uniform["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-4)
    peak = torch.zeros(32, k)
    peak[:, 7] = 5.0  # every crop on prototype 7
    assert meter_stats(peak)["collapse"] == "one-hot"
    same = torch.randn(1, k).repeat(32, 1) * 0.2  # one non-trivial distribution for every crop
    constant = meter_stats(same)
    assert constant["collapse"] == "constant" and abs(constant["teacher_mutual_info"]) < 1e-6


def test_meter_reads_the_backbone_output_through_a_hook():
    backbone = torch.nn.Linear(6, 5)
    meter = health.HealthMeter(backbone, 16)
    inputs = torch.randn(9, 6)
    embeddings = backbone(inputs).detach()
    meter.observe_teacher(torch.randn(9, 16), torch.zeros(1, 16), 0.1)
    meter.observe_loss(3.0)
    out = meter.epoch_stats(torch.zeros(1, 16))
    assert out["cls_std"] == pytest.approx(health.embedding_spread(embeddings)[0], rel=1e-6)
    assert out["cls_effective_rank"] == pytest.approx(health.effective_rank(embeddings), rel=1e-6)
    meter.close()
    backbone(inputs)
    assert meter._embeddings is None  # hook removed


HEALTH_KEYS = {
    "teacher_entropy",
    "teacher_batch_entropy",
    "teacher_mutual_info",
    "teacher_kl",
    "center_norm",
    "cls_std",
    "cls_relative_std",
    "cls_effective_rank",
    "collapse",
}


def test_training_log_has_health_and_warns_on_a_uniform_teacher(tmp_path, cache, capsys):
    # a teacher temperature of 1000 makes the teacher's targets uniform: a forced collapse
    job = make_job(
        tmp_path,
        cache,
        epochs=1,
        max_steps_per_epoch=2,
        loss={"teacher_temp": 1000.0, "warmup_teacher_temp": 1000.0},
    )
    loop.run(job)
    line = json.loads((job.out_dir / "log.jsonl").read_text().splitlines()[0])
    assert HEALTH_KEYS <= set(line)
    assert line["collapse"] == "uniform"
    assert line["teacher_entropy"] == pytest.approx(
        math.log(job.settings["head"]["out_dim"]), rel=1e-3
    )
    assert "WARNING: epoch 1 looks collapsed (uniform teacher" in capsys.readouterr().err
