"""A change reruns exactly the jobs it affects: Snakemake's plans on the demo workflow.

Each scenario takes a workdir where the demo (two tiny architectures) has already "run", changes
one thing and asserts the exact set of outputs Snakemake plans to rewrite (`--summary`, a dry run).

The finished state is made with `snakemake --touch --forceall` (workflow_copy.mark_up_to_date)
rather than a real run: Snakemake decides reruns from its recorded provenance (params, code,
set of input files, software environment) and from mtimes, which touching records exactly as a
run does; no rule reads file contents while planning (no checkpoints). A real demo run takes
minutes; tests/test_slurm.py checks that after a real run a second one plans nothing.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from slurm_plan import local_rules, parse_plan, submissions  # noqa: E402
from workflow_copy import (
    DEMO_CONFIG,
    PlannedOutput,
    copy_repo,
    demo_config,
    extract_trained_rule,
    is_extraction,
    mark_up_to_date,
    snakemake,
    summary,
    train_rule,
    write_overlay,
)

from workflow_scripts import config as cfg
from workflow_scripts import training_seeds

OUTPUT_DIR = "results/rerun"
DEMO_ARCH = demo_config()["architectures"][0]["name"]
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
SECOND_ARCH = "vit_small_plus_patch16_dinov3.lvd1689m"
THIRD_ARCH = "vit_base_patch16_dinov3.lvd1689m"
EVALUATION_RULES = {"combine_channel_features", "evaluate_features", "summarize"}
TRAIN_CHANNELS = ["DAPI", "Tubulin", "Actin", "rgb"]  # config.yaml's channel_modes
EVAL_CHANNELS = TRAIN_CHANNELS + ["combined"]
TRAINED_EPOCHS = [2, 4]  # the demo: 4 epochs, a checkpoint every 2


def tiny_arch(name: str, **extra) -> dict:
    return {"name": name, "weights": "none", "gpus": 0, "model_kwargs": dict(TINY), **extra}


def base_overlay() -> dict:
    """The demo with a second architecture; output_dir inside the workdir copy."""
    archs = copy.deepcopy(demo_config()["architectures"]) + [tiny_arch(SECOND_ARCH)]
    return {"output_dir": OUTPUT_DIR, "architectures": archs}


def config_args(workdir: Path, overlay: dict, name: str) -> list[str]:
    path = write_overlay(workdir / f"{name}.yaml", overlay)
    return ["--configfile", DEMO_CONFIG, str(path)]


def plan(workdir: Path, overlay: dict, name: str, *extra: str) -> list[PlannedOutput]:
    return summary(workdir, OUTPUT_DIR, *config_args(workdir, overlay, name), *extra)


def pending(rows: list[PlannedOutput]) -> set[str]:
    return {row.path for row in rows if row.pending}


def paths(rows: list[PlannedOutput], keep) -> set[str]:
    return {row.path for row in rows if keep(row)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A repo copy whose demo outputs (two architectures) are all up to date."""
    workdir = copy_repo(tmp_path_factory.mktemp("reruns") / "repo")
    mark_up_to_date(workdir, OUTPUT_DIR, *config_args(workdir, base_overlay(), "base"))
    return workdir


@pytest.mark.parametrize("profile", [[], ["--profile", "slurm"]], ids=["local", "slurm-profile"])
def test_nothing_changed_plans_nothing(finished, profile):
    rows = plan(finished, base_overlay(), "unchanged", *profile)
    assert {row.arch for row in rows} >= {DEMO_ARCH, SECOND_ARCH}
    assert pending(rows) == set()


def test_moving_the_checkout_plans_nothing(finished, tmp_path):
    # users move or re-clone project folders; code inputs are relative, so nothing reruns
    moved = tmp_path / "moved"
    shutil.copytree(finished, moved, symlinks=True)  # copy2 keeps the mtimes
    rows = plan(moved, base_overlay(), "unchanged")
    assert rows and pending(rows) == set()


def test_adding_an_architecture_plans_only_its_jobs_and_the_summary(finished):
    overlay = base_overlay()
    overlay["architectures"].append(tiny_arch(THIRD_ARCH))
    rows = plan(finished, overlay, "add_arch")
    expected = paths(rows, lambda r: r.arch == THIRD_ARCH or r.rule == "summarize")
    assert pending(rows) == expected
    assert {r.rule for r in rows if r.pending and r.arch == THIRD_ARCH} == {
        train_rule(THIRD_ARCH),
        "extract_pretrained",
        extract_trained_rule(THIRD_ARCH),
        "attention_maps",
        "combine_channel_features",
        "evaluate_features",
    }


@pytest.mark.parametrize("profile", [[], ["--profile", "slurm"]], ids=["local", "slurm-profile"])
def test_evaluation_setting_reruns_evaluation_only(finished, profile):
    overlay = {**base_overlay(), "evaluate": {"tvn": {"scope": "per_batch"}}}
    rows = plan(finished, overlay, "tvn_scope", *profile)
    # the demo's baseline is scored with the same settings
    rerun = ("evaluate_features", "evaluate_baseline", "summarize")
    assert pending(rows) == paths(rows, lambda r: r.rule in rerun)
    assert {r.status for r in rows if r.rule == "evaluate_features"} == {"params changed"}


def test_extraction_setting_reruns_extraction_and_evaluation_not_training(finished):
    overlay = {**base_overlay(), "evaluate": {"crops": "grid"}}
    rows = plan(finished, overlay, "crops")
    rerun = paths(rows, lambda r: r.rule in EVALUATION_RULES or is_extraction(r.rule))
    assert pending(rows) == rerun
    assert {r.status for r in rows if is_extraction(r.rule)} == {"params changed"}


def test_grid_settings_rerun_nothing_while_the_seed_windows_are_used(finished):
    # the default crops are the seed's windows: the grid's tiles and resize size cannot change them
    overlay = {**base_overlay(), "evaluate": {"input_size": 32, "crop_grid": [1, 1]}}
    rows = plan(finished, overlay, "grid_keys")
    assert rows and pending(rows) == set()


def test_extraction_speed_settings_rerun_nothing(finished):
    # batch size and loader workers change how fast features come, not what they are
    overlay = {**base_overlay(), "evaluate": {"batch_size": 7, "num_workers": 1}}
    rows = plan(finished, overlay, "extract_speed")
    assert rows and pending(rows) == set()


def test_interpolation_override_reruns_the_epoch0_extraction_too(finished):
    # epoch 0 resizes its crops as the architecture's training does
    overlay = base_overlay()
    overlay["architectures"][1]["train"] = {"interpolation": "bilinear"}
    rows = plan(finished, overlay, "interpolation")
    expected = paths(rows, lambda r: r.rule == "summarize" or r.arch == SECOND_ARCH)
    assert pending(rows) == expected
    assert any(r.rule == "extract_pretrained" and r.epoch == 0 and r.pending for r in rows)


def test_training_override_of_one_architecture_retrains_only_it(finished):
    overlay = base_overlay()
    overlay["architectures"][1]["train"] = {"optimizer": {"lr": 5.0e-5}}
    rows = plan(finished, overlay, "train_override")
    retrained = train_rule(SECOND_ARCH)
    # Epoch 0 is the pretrained backbone: its features do not depend on training.
    expected = paths(
        rows,
        lambda r: (
            r.rule == "summarize"
            or (r.arch == SECOND_ARCH and (r.rule == retrained or r.epoch != 0))
        ),
    )
    assert pending(rows) == expected
    assert {r.status for r in rows if r.rule == retrained} == {"params changed"}
    assert any(r.arch == DEMO_ARCH and not r.pending for r in rows)


def edited_plan(workdir: Path, relative_module: str) -> list[PlannedOutput]:
    """The plan after appending a comment to one module (restored afterwards, mtime included)."""
    module = workdir / relative_module
    original, stat = module.read_text(), module.stat()
    try:
        module.write_text(original + "# edited by test_reruns\n")
        return plan(workdir, base_overlay(), "code_edit")
    finally:  # leave the shared workdir as it was: same text, same mtime
        module.write_text(original)
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_the_metrics_module_reruns_evaluation_not_extraction(finished):
    rows = edited_plan(finished, "workflow_scripts/evaluate/metrics.py")
    # only evaluate.evaluate imports metrics (it scores runs and baselines); the summary follows
    rerun = {"evaluate_features", "evaluate_baseline", "summarize"}
    assert pending(rows) == paths(rows, lambda r: r.rule in rerun)
    assert {r.status for r in rows if r.rule == "evaluate_features"} == {"updated input files"}


def test_editing_a_module_extraction_imports_reruns_extraction_not_training(finished):
    rows = edited_plan(finished, "workflow_scripts/data/crops.py")
    # the crop resizing is shared by training and extraction: both rerun, the data stage does not
    # (and the attention maps, which load their models with extraction's code)
    rerun_rules = EVALUATION_RULES | {train_rule(DEMO_ARCH), train_rule(SECOND_ARCH)}
    rerun_rules |= {"attention_maps"}
    assert pending(rows) == paths(rows, lambda r: r.rule in rerun_rules or is_extraction(r.rule))
    rows = edited_plan(finished, "workflow_scripts/evaluate/extract.py")
    rerun_rules = EVALUATION_RULES | {"attention_maps"}
    rerun = paths(rows, lambda r: r.rule in rerun_rules or is_extraction(r.rule))
    assert pending(rows) == rerun


def test_editing_figure_code_reruns_only_the_summary(finished):
    for module in ("embedding_maps.py", "attention_maps.py"):
        rows = edited_plan(finished, f"workflow_scripts/summary/{module}")
        assert pending(rows) == paths(rows, lambda r: r.rule == "summarize"), module


def test_weak_label_retrains_and_reruns_the_attention_maps_not_epoch0(finished):
    overlay = {**base_overlay(), "train": {"weak_label": "compound"}}
    rows = plan(finished, overlay, "weak_label")
    trained = {train_rule(DEMO_ARCH), train_rule(SECOND_ARCH)}
    assert {r.rule for r in rows if r.pending} == trained | {
        extract_trained_rule(DEMO_ARCH),
        extract_trained_rule(SECOND_ARCH),
        "attention_maps",
        "combine_channel_features",
        "evaluate_features",
        "summarize",
    }
    assert not any(r.pending and r.epoch == 0 for r in rows)


def cluster_plan(
    workdir: Path, overlay: dict, name: str, *extra: str
) -> tuple[dict[str, list[str]], list[str]]:
    """The SLURM profile's dry run: ({group job: its members' rules}, [jobs outside groups])."""
    args = config_args(workdir, overlay, name)
    result = snakemake(workdir, "--dry-run", "--profile", "slurm", *args, *extra)
    groups, ungrouped = parse_plan(result.stdout + result.stderr)
    return {group: sorted(rules) for group, rules in groups.items()}, ungrouped


def test_cluster_plan_has_one_extraction_and_one_evaluation_job_per_arch_and_channel(finished):
    # another crop mode reruns every extraction and evaluation: each (arch, channel) gets one
    # extraction group (epoch 0 + one job of all trained epochs) and one evaluation group
    overlay = {**base_overlay(), "evaluate": {"crops": "grid"}}
    groups, ungrouped = cluster_plan(finished, overlay, "crops_cluster")
    expected = {}
    for arch in (DEMO_ARCH, SECOND_ARCH):
        for channel in TRAIN_CHANNELS:
            members = ["extract_pretrained", extract_trained_rule(arch)]
            expected[f"extract_{arch}_{channel}"] = sorted(members)
        for channel in EVAL_CHANNELS:
            n_epochs = 1 + len(TRAINED_EPOCHS)
            expected[f"evaluate_{arch}_{channel}"] = ["evaluate_features"] * n_epochs
    assert groups == expected
    assert not [rule for rule in ungrouped if is_extraction(rule) or rule == "evaluate_features"]


def test_submission_counter_counts_groups_and_cluster_rules_not_local_rules(finished):
    # benchmarks/slurm_plan.py, which gives README its counts: one retrained architecture
    overlay = base_overlay()
    overlay["architectures"][1]["train"] = {"optimizer": {"lr": 5.0e-5}}
    args = config_args(finished, overlay, "train_override_count")
    result = snakemake(finished, "--dry-run", "--profile", "slurm", *args)
    assert {"combine_channel_features", "summarize", "fetch_weights"} <= local_rules()
    assert submissions(result.stdout + result.stderr, local_rules()) == {
        "extract (group)": len(TRAIN_CHANNELS),
        "evaluate (group)": len(EVAL_CHANNELS),
        train_rule(SECOND_ARCH): len(TRAIN_CHANNELS),
    }


def test_cluster_plan_after_retraining_one_arch_leaves_its_epoch0_out(finished):
    overlay = base_overlay()
    overlay["architectures"][1]["train"] = {"optimizer": {"lr": 5.0e-5}}
    groups, ungrouped = cluster_plan(finished, overlay, "train_override_cluster")
    trained = sorted(["attention_maps", extract_trained_rule(SECOND_ARCH)])
    evaluations = ["evaluate_features"] * len(TRAINED_EPOCHS)
    expected = {f"extract_{SECOND_ARCH}_{c}": trained for c in TRAIN_CHANNELS}
    expected |= {f"evaluate_{SECOND_ARCH}_{c}": evaluations for c in EVAL_CHANNELS}
    assert groups == expected
    assert sorted(set(ungrouped)) == sorted(
        {train_rule(SECOND_ARCH), "combine_channel_features", "summarize", "all"}
    )


def test_cluster_plan_reruns_one_forced_evaluation_alone(finished):
    metrics = Path(OUTPUT_DIR) / "eval" / DEMO_ARCH / "Actin" / "epoch_0002" / "metrics.json"
    groups, ungrouped = cluster_plan(finished, base_overlay(), "forced", "--forcerun", str(metrics))
    assert groups == {f"evaluate_{DEMO_ARCH}_Actin": ["evaluate_features"]}
    assert sorted(ungrouped) == ["all", "summarize"]


# ------------------------------------------------------------------ issue 23, cases 4 and 15
MOVED_DIR = "results/moved"
SCORING_KEYS = ("normalization", "tvn", "aggregation", "map")


def record_settings(workdir: Path, output_dir: str, overlay: dict) -> None:
    """Write into the placeholder checkpoint JSONs and metrics what a real run records there
    (train settings, model_kwargs; scoring settings), keeping every file's mtime."""
    path = write_overlay(workdir / "recorded.yaml", overlay)
    config = cfg.load([workdir / "config.yaml", workdir / DEMO_CONFIG, path])
    out = workdir / output_dir
    records = {}
    for arch in cfg.architecture_names(config):
        checkpoint = {
            "train_settings": training_seeds.run_settings(cfg.train_settings(config, arch)),
            "model_kwargs": cfg.architecture(config, arch)["model_kwargs"],
        }
        records.update({p: checkpoint for p in out.glob(f"train/{arch}/*/epoch_*.json")})
    # the evaluate rules' --settings (rules/common.smk), as the evaluation CLI records them
    scoring = {
        "settings": {k: config["evaluate"].get(k, {}) for k in SCORING_KEYS},
    }
    records.update({p: scoring for p in out.glob("eval/**/metrics.json")})
    assert records
    for record_path, record in records.items():
        stat = record_path.stat()
        record_path.write_text(json.dumps(record))
        os.utime(record_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def moved(finished, tmp_path) -> Path:
    """A copy of the finished workdir whose outputs record their settings, and a copy of its
    output_dir (as `cp -a` makes it: mtimes kept) of which Snakemake has no records."""
    workdir = tmp_path / "repo"
    shutil.copytree(finished, workdir, symlinks=True)
    record_settings(workdir, OUTPUT_DIR, base_overlay())
    shutil.copytree(workdir / OUTPUT_DIR, workdir / MOVED_DIR, symlinks=True)
    return workdir


def moved_plan(workdir: Path, overlay: dict, name: str) -> list[PlannedOutput]:
    overlay = {**overlay, "output_dir": MOVED_DIR}
    return summary(workdir, MOVED_DIR, *config_args(workdir, overlay, name))


@pytest.mark.slow
def test_a_copied_output_dir_reruns_what_a_changed_setting_affects(moved):
    """Case 4: Snakemake has no records of a moved output_dir: a changed lr reran nothing."""
    assert pending(moved_plan(moved, base_overlay(), "moved_unchanged")) == set()
    overlay = base_overlay()
    overlay["architectures"][1]["train"] = {"optimizer": {"lr": 5.0e-5}}
    rows = moved_plan(moved, overlay, "moved_lr")
    expected = paths(
        rows,
        lambda r: (
            r.rule == "summarize"
            or (r.arch == SECOND_ARCH and (r.rule == train_rule(SECOND_ARCH) or r.epoch != 0))
        ),
    )
    assert pending(rows) == expected
    # in place, where Snakemake has the records, the stamps rerun nothing more than it does
    assert pending(plan(moved, overlay, "in_place_lr")) == expected


def test_a_copied_output_dir_rescores_after_an_evaluation_setting_changed(moved):
    overlay = {**base_overlay(), "evaluate": {"tvn": {"scope": "per_batch"}}}
    rows = moved_plan(moved, overlay, "moved_tvn")
    rerun = ("evaluate_features", "evaluate_baseline", "summarize")
    assert pending(rows) == paths(rows, lambda r: r.rule in rerun)


@pytest.mark.slow
def test_a_truncated_feature_table_is_extracted_again(finished, tmp_path):
    """Case 15: every rerun failed reading it ("cannot be read as a table")."""
    workdir = tmp_path / "repo"
    shutil.copytree(finished, workdir, symlinks=True)
    features = workdir / OUTPUT_DIR / "features" / DEMO_ARCH / "DAPI" / "epoch_0002.parquet"
    stat = features.stat()
    features.write_bytes(features.read_bytes()[: stat.st_size // 2])  # a copy cut short
    os.utime(features, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    args = config_args(workdir, base_overlay(), "truncated")
    note = snakemake(workdir, "-n", "--cores", "1", *args).stderr
    assert f"note: {OUTPUT_DIR}/features/{DEMO_ARCH}/DAPI/epoch_0002.parquet cannot be read" in note
    rows = summary(workdir, OUTPUT_DIR, *args)
    redo = {r.path for r in rows if r.pending and is_extraction(r.rule)}
    assert redo == {
        f"features/{DEMO_ARCH}/DAPI/epoch_{epoch:04d}.parquet" for epoch in [0, *TRAINED_EPOCHS]
    }
    assert not any(r.pending for r in rows if r.rule.startswith("train_"))


def cut_short(path: Path, data: bytes | None = None) -> None:
    """A copy cut short (or `data` written instead), its modification time kept."""
    stat = path.stat()
    path.write_bytes(path.read_bytes()[: stat.st_size // 2] if data is None else data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_truncated_attention_maps_and_predictions_rerun_only_their_jobs(finished, tmp_path):
    """Case 15 for the outputs the summary reads: an attention-map .npz and a predictions.csv
    with fewer complete rows than its metrics.json has queries (it still parses)."""
    workdir = tmp_path / "repo"
    shutil.copytree(finished, workdir, symlinks=True)
    out = workdir / OUTPUT_DIR
    cut_short(out / "attention" / DEMO_ARCH / "DAPI" / "maps.npz", b"PK\x03\x04 cut short")
    run = out / "eval" / DEMO_ARCH / "Tubulin" / "epoch_0002"
    queries = {"n_treatments_nsc": 3, "n_treatments_nscb": 2}
    cut_short(run / "metrics.json", json.dumps(queries).encode())
    cut_short(run / "predictions.csv", b"protocol,treatment\nnsc,a@1\nnsc,b@1\nnsc,c")
    args = config_args(workdir, base_overlay(), "truncated_summary_inputs")
    note = snakemake(workdir, "-n", "--cores", "1", *args).stderr
    assert f"{run.relative_to(workdir)}/predictions.csv is incomplete (2 complete rows" in note
    rows = summary(workdir, OUTPUT_DIR, *args)
    assert pending(rows) == paths(
        rows,
        lambda r: (
            r.rule == "summarize"
            or (r.rule == "attention_maps" and r.path.startswith(f"attention/{DEMO_ARCH}/DAPI/"))
            or (r.rule == "evaluate_features" and r.path.startswith(f"eval/{DEMO_ARCH}/Tubulin/"))
        ),
    )


@pytest.mark.slow
def test_another_seeds_truncated_checkpoint_retrains_that_seed_only(finished, tmp_path):
    """Another training seed's outputs (seed_S/) are read at start too, with stamps of their
    own: a truncated seed-1 checkpoint reruns seed 1's training of that channel and what
    follows from it, not train.seed's run."""
    workdir = tmp_path / "repo"
    shutil.copytree(finished, workdir, symlinks=True)
    overlay = {**base_overlay(), "train": {"seeds": [0, 1]}}
    mark_up_to_date(workdir, OUTPUT_DIR, *config_args(workdir, overlay, "two_seeds_done"))
    seed_dir = workdir / OUTPUT_DIR / "train" / DEMO_ARCH / "DAPI" / "seed_1"
    cut_short(seed_dir / "epoch_0002.safetensors", b"\x10\x00")
    rows = plan(workdir, overlay, "two_seeds_truncated")
    assert {r.rule for r in rows if r.pending} == {
        seeds_rule(train_rule(DEMO_ARCH)),
        seeds_rule(extract_trained_rule(DEMO_ARCH)),
        "combine_channel_features_seeds",
        "evaluate_features_seeds",
        "summarize",
    }
    retrained = paths(rows, lambda r: r.pending and r.rule == seeds_rule(train_rule(DEMO_ARCH)))
    assert retrained and all(p.startswith(f"train/{DEMO_ARCH}/DAPI/seed_1/") for p in retrained)


def seeds_rule(rule: str) -> str:
    """The rule that runs another training seed's jobs of `rule` (rules/*.smk: *_seeds)."""
    return f"{rule}_seeds"


@pytest.mark.parametrize("profile", [[], ["--profile", "slurm"]], ids=["local", "slurm-profile"])
def test_listing_only_the_training_seed_plans_nothing(finished, profile):
    # train.seeds: [train.seed] is one run, the same as no list: same paths, params and code
    overlay = {**base_overlay(), "train": {"seeds": [0]}}
    rows = plan(finished, overlay, "one_seed", *profile)
    assert rows and pending(rows) == set()


def test_another_seed_plans_only_its_own_jobs_and_the_summary(finished):
    overlay = {**base_overlay(), "train": {"seeds": [0, 1]}}
    rows = plan(finished, overlay, "two_seeds")
    new = paths(rows, lambda r: "/seed_1/" in r.path)
    assert new and pending(rows) == new | paths(rows, lambda r: r.rule == "summarize")
    assert all(r.status == "missing" for r in rows if r.path in new)
    assert {r.rule for r in rows if r.pending} == {
        *(seeds_rule(train_rule(a)) for a in (DEMO_ARCH, SECOND_ARCH)),
        *(seeds_rule(extract_trained_rule(a)) for a in (DEMO_ARCH, SECOND_ARCH)),
        "extract_pretrained_seeds",  # the demo's random init: another seed, another network
        "combine_channel_features_seeds",
        "evaluate_features_seeds",
        "summarize",
    }
    summary_outputs = {r.path for r in rows if r.rule == "summarize"}
    assert "summary/seeds.csv" in summary_outputs and "summary/comparisons.csv" in summary_outputs


def test_another_seed_adds_only_its_training_submissions_on_a_cluster(finished):
    # its extractions and evaluations join the groups of their (architecture, channel)
    overlay = {**base_overlay(), "train": {"seeds": [0, 1]}}
    args = config_args(finished, overlay, "two_seeds_cluster")
    result = snakemake(finished, "--dry-run", "--profile", "slurm", *args)
    groups, _ = parse_plan(result.stdout + result.stderr)
    expected = {}
    for arch in (DEMO_ARCH, SECOND_ARCH):
        for channel in TRAIN_CHANNELS:
            members = ["extract_pretrained_seeds", seeds_rule(extract_trained_rule(arch))]
            expected[f"extract_{arch}_{channel}"] = sorted(members)
        for channel in EVAL_CHANNELS:
            n_epochs = 1 + len(TRAINED_EPOCHS)
            expected[f"evaluate_{arch}_{channel}"] = ["evaluate_features_seeds"] * n_epochs
    assert {group: sorted(rules) for group, rules in groups.items()} == expected
    assert submissions(result.stdout + result.stderr, local_rules()) == {
        "extract (group)": 2 * len(TRAIN_CHANNELS),
        "evaluate (group)": 2 * len(EVAL_CHANNELS),
        seeds_rule(train_rule(DEMO_ARCH)): len(TRAIN_CHANNELS),
        seeds_rule(train_rule(SECOND_ARCH)): len(TRAIN_CHANNELS),
    }
