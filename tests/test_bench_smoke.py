"""The training-step benchmark runs the real Trainer end to end for both configurations, and the
analytic FLOP arithmetic agrees with torch's FlopCounterMode."""

import json

import pytest

from workflow_scripts import config as cfg

REPO = cfg.REPO_DIR

import bench_train_step  # noqa: E402
import flops  # noqa: E402

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


@pytest.mark.slow
def test_train_step_benchmark_quick_measures_both_configurations(tmp_path):
    out = tmp_path / "bench.json"
    assert (
        bench_train_step.main(
            ["--quick", "--device", "cpu", "--json", str(out), "--tmpdir", str(tmp_path)]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert set(results["configs"]) == {"seed", "tuned"}
    for row in results["configs"].values():
        assert row["images_per_s"] > 0 and row["step_time_s"] > 0
        assert 0 <= row["data_wait_fraction"] < 1
        assert row["peak_memory_mb"] > 0
        assert row["losses_finite"]
        # on CPU the real step's FlopCounterMode count is the analytic model FLOP exactly
        assert row["flop_counter_per_image"] == results["model_flop_per_image"]
    seed, tuned = results["configs"]["seed"], results["configs"]["tuned"]
    assert (seed["batch_size"], seed["num_workers"], seed["precision"]) == (16, 1, "fp32")
    # lr scaled linearly from the recipe's (the demo's lr at the demo's batch) to the tuned batch
    demo = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])["train"]
    recipe_batch = demo["batch_size_per_gpu"]
    assert tuned["batch_size"] == 8
    assert tuned["peak_lr"] == pytest.approx(seed["peak_lr"] * 8 / recipe_batch)
    assert results["speedup_images_per_s"] == pytest.approx(
        tuned["images_per_s"] / seed["images_per_s"]
    )
    assert list(tmp_path.iterdir()) == [out]  # the temporary fields and cache are gone


def test_analytic_flops_match_flop_counter_for_crops_and_head():
    settings = cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])["train"]
    settings = cfg.deep_merge(
        settings, {"global_crops": {"size": 48}, "local_crops": {"number": 3}}
    )
    analytic = flops.analytic_step_flops("vit_small_patch16_dinov3.lvd1689m", TINY, settings)
    counted = flops.meta_counted_step_flops("vit_small_patch16_dinov3.lvd1689m", TINY, settings)
    assert analytic.total == counted
    # backward is twice the forward except the patch embedding's input gradient
    assert analytic.total < 3 * analytic.student_forward + analytic.teacher_forward


def test_union_length_counts_overlaps_once():
    assert bench_train_step.union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert bench_train_step.union_length([]) == 0.0


def test_rehearsal_sampler_attributes_memory_to_the_stage_of_a_threaded_job():
    """Snakemake starts jobs from threads, through a shell, some under workflow_scripts.timed:
    the sampler finds them all and counts 200 MB of anonymous memory against the right stage
    (and the shell, whose command line names every module, against none)."""
    import subprocess
    import sys
    import textwrap

    import bench_rehearsal

    allocate = "import numpy as np, time; a = np.ones(25_000_000); time.sleep(3)"
    job = (
        f"python -m workflow_scripts.timed python -c '{allocate}' -m workflow_scripts.data.cache; "
        "true -m workflow_scripts.summary.cli"
    )
    launcher = textwrap.dedent(
        f"""
        import subprocess, threading
        thread = threading.Thread(target=subprocess.run, args=(["bash", "-c", {job!r}],))
        thread.start(); thread.join()
        """
    )
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO)
    sampler = bench_rehearsal.MemorySampler(process.pid, 0.2)
    sampler.start()
    process.wait()
    sampler.stop.set()
    sampler.join()
    stages = sampler.per_stage()
    assert set(stages) == {"illumination + cache"}
    assert 190 < stages["illumination + cache"]["anon_mb"] < 400
