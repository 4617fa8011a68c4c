"""config.yaml: schema validation, meaning checks, per-architecture settings, planning errors."""

import copy
import subprocess
import sys

import pytest
import yaml
from hang_guard import HANG_GUARD_S

from workflow_scripts import config as cfg
from workflow_scripts import config_check
from workflow_scripts.errors import InputError
from workflow_scripts.model.kwargs import check_model_kwargs

REPO = cfg.REPO_DIR


def check(config: dict) -> None:
    """The schema, then every settings rule (what `snakemake -n` checks before files and models)."""
    cfg.check_schema(config)
    config_check.check(config, files=False, models=False)


@pytest.fixture
def demo_config():
    return cfg.load([REPO / "config.yaml", REPO / "config" / "demo.yaml"])


def test_default_and_demo_configs_validate(demo_config):
    default = cfg.load([REPO / "config.yaml"])
    assert default["data"]["source"] == "official"
    assert default["train"]["head"]["out_dim"] == 65536
    assert demo_config["data"]["source"] == "demo"
    # the overlay replaces the architecture list instead of appending to it
    assert cfg.architecture_names(demo_config) == ["vit_small_patch16_dinov3.lvd1689m"]


def test_model_list_matches_installed_timm():
    timm = pytest.importorskip("timm")
    assert sorted(cfg.known_models()) == sorted(timm.list_pretrained("*dinov3*"))


def test_unknown_architecture_names_key_and_valid_models(demo_config):
    bad = copy.deepcopy(demo_config)
    bad["architectures"][0]["name"] = "vit_giant_patch16_dinov3.lvd1689m"
    with pytest.raises(InputError) as err:
        check(bad)
    message = str(err.value)
    assert "architectures.0.name" in message
    assert "vit_giant_patch16_dinov3" in message
    assert "vit_base_patch16_dinov3.lvd1689m" in message  # the list of valid names


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c["train"]["optimizer"].update(lr=-1.0), "train.optimizer.lr"),
        (lambda c: c["train"]["global_crops"].update(size=100), "train.global_crops.size"),
        (lambda c: c["evaluate"]["tvn"].update(scope="per_plate"), "evaluate.tvn.scope"),
        (lambda c: c["data"].update(channels=["DAPI", "GFP"]), "data.channels.1"),
        (lambda c: c.update(unexpected_key=1), "<top level>"),
        (lambda c: c["train"]["local_crops"].update(scale=[0.08, 0.04]), "train.local_crops.scale"),
        (lambda c: c["train"]["optimizer"].update(min_lr=1.0), "train.optimizer.min_lr"),
        (lambda c: c["architectures"].append(dict(c["architectures"][0])), "architectures.1.name"),
        # warm-ups longer than the run (demo: 4 epochs)
        (
            lambda c: c["train"]["optimizer"].update(warmup_epochs=5),
            "train.optimizer.warmup_epochs",
        ),
        (
            lambda c: c["train"]["loss"].update(warmup_teacher_temp_epochs=5),
            "train.loss.warmup_teacher_temp_epochs",
        ),
        (lambda c: c.update(allow_cpu_fallback="yes"), "allow_cpu_fallback"),
        (lambda c: c["evaluate"].update(crops="tiles"), "evaluate.crops"),
        (
            lambda c: c["evaluate"]["seed_windows"].update(boxes=[[0, 0, 300]]),
            "evaluate.seed_windows.boxes.0",
        ),
        (lambda c: c["evaluate"].update(crop_median="mean"), "evaluate.crop_median"),
        (
            lambda c: c["baselines"][0].update(name="vit_small_patch16_dinov3.lvd1689m"),
            "baselines.0.name",
        ),
        (lambda c: c["baselines"][0]["metadata_map"].update(MoA="moa"), "baselines.0.metadata_map"),
        (lambda c: c["train"].update(seeds=[1, 2]), "train.seeds"),  # without train.seed 0
        (lambda c: c["train"].update(seeds=[0, 0]), "train.seeds"),
        (
            lambda c: c["evaluate"].update(normalization={"scope": "well"}),
            "evaluate.normalization.scope",
        ),
        (
            lambda c: c["evaluate"].update(bootstrap={"confidence": 1.0}),
            "evaluate.bootstrap.confidence",
        ),
    ],
)
def test_invalid_settings_name_the_key(demo_config, mutate, key):
    bad = copy.deepcopy(demo_config)
    mutate(bad)
    with pytest.raises(InputError, match=f"config key '{key}'"):
        check(bad)


def test_architecture_overrides_reach_only_that_architecture(demo_config):
    config = copy.deepcopy(demo_config)
    second = {
        "name": "vit_small_plus_patch16_dinov3.lvd1689m",
        "weights": "none",
        "train": {"epochs": 6, "optimizer": {"lr": 2.0e-4}},
    }
    config["architectures"].append(second)
    check(config)
    first = cfg.train_settings(config, "vit_small_patch16_dinov3.lvd1689m")
    other = cfg.train_settings(config, second["name"])
    assert first == config["train"]
    assert other["optimizer"]["lr"] == 2.0e-4
    assert other["optimizer"]["min_lr"] == config["train"]["optimizer"]["min_lr"]  # deep merge
    assert cfg.evaluated_epochs(other) == [2, 4, 6]


def test_evaluated_epochs_include_last_and_pretrained():
    settings = {"epochs": 12, "checkpoint_every": 5}
    assert cfg.evaluated_epochs(settings) == [5, 10, 12]
    assert cfg.evaluated_epochs(settings, include_pretrained=True) == [0, 5, 10, 12]


def test_channels_per_mode(demo_config):
    assert cfg.training_channels(demo_config) == ["DAPI", "Tubulin", "Actin", "rgb"]
    assert cfg.evaluation_channels(demo_config)[-1] == "combined"
    rgb_only = dict(demo_config, channel_modes=["rgb"])
    assert cfg.evaluation_channels(rgb_only) == ["rgb"]


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        cfg.load([tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match=r"broken.yaml: line 2, column 1: expected ','"):
        cfg.load([broken])


# ------------------------------------------------------------------ issue 23: YAML and output_dir
def test_a_key_given_twice_is_refused_naming_file_and_line(tmp_path):
    """Case 3: two `data:` sections dropped the official tables (the last one won)."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("data:\n  source: official\ntrain:\n  epochs: 2\ndata:\n  x: 1\n")
    with pytest.raises(InputError) as err:
        cfg.load([REPO / "config.yaml", overlay])
    assert str(err.value) == (
        f"{overlay}: line 5, column 1: key 'data' is given twice (first on line 1); YAML would "
        "silently keep only the last one"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  epochs: 2\n  seed: 1\n  epochs: 3\n")
    with pytest.raises(InputError, match=r"nested.yaml: line 4, column 3: key 'epochs' is given"):
        config_check.config_files([tmp_path / "absent.yaml", nested])
    anchors = tmp_path / "anchors.yaml"  # a merge key overrides on purpose: allowed
    anchors.write_text("base: &b {lr: 1}\nother:\n  <<: *b\n  lr: 2\n")
    assert cfg.read_yaml(anchors)["other"] == {"lr": 2}


def test_every_yaml_file_of_the_repository_has_unique_keys():
    shipped = [
        *REPO.glob("config*.yaml"),
        *REPO.glob("config/**/*.yaml"),
        *REPO.glob("envs/*.yaml"),
    ]
    shipped += [REPO / "schemas" / "config.schema.yaml", cfg.PACKAGE_DIR / "dinov3_models.yaml"]
    shipped += config_check.profile_files(REPO)
    for path in shipped:
        cfg.read_yaml(path)
    assert len(shipped) > 8


def test_a_tab_is_named_with_file_and_line(tmp_path, capsys):
    """Case 10: Snakemake's "Config file is not valid JSON or YAML" named neither. Snakemake
    parses a --configfile before the workflow runs: the checker CLI names the overlay."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 2\n\tseed: 1\n")
    with pytest.raises(InputError) as err:
        cfg.load([overlay])
    assert str(err.value) == (
        f"{overlay}: line 3, column 1: a tab character; YAML indents with spaces only"
    )
    status = config_check.main([str(REPO / "config.yaml"), str(overlay), "--no-models"])
    assert status == 2
    assert capsys.readouterr().err == f"error: {err.value}\n"


def test_the_config_checker_accepts_the_demo(capsys):
    argv = [str(REPO / "config.yaml"), str(REPO / "config" / "demo.yaml"), "--no-models"]
    assert config_check.main(argv) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def output_dir_config(path) -> dict:
    return {"output_dir": str(path)}


def test_output_dir_that_is_a_file_is_named(tmp_path):
    """Case 7: NotADirectoryError with stack frames before."""
    (tmp_path / "file").write_text("x")
    for output_dir, what in (("file", "is a file"), ("file/sub", "lies under")):
        with pytest.raises(InputError, match=f"config key 'output_dir' -> .*{output_dir} {what}"):
            config_check.output_dir_is_a_folder(output_dir_config(tmp_path / output_dir))
    config_check.output_dir_is_a_folder(output_dir_config(tmp_path / "new" / "folder"))


def test_output_dir_inside_the_checkout_must_be_a_folder_of_its_own(tmp_path):
    """Case 14: `output_dir: .` mixed outputs with the tracked files."""
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    (checkout / "benchmarks" / "README.md").write_text("x")
    for output_dir in (checkout, tmp_path):
        with pytest.raises(InputError, match="is the checkout"):
            config_check.output_dir_outside_checkout(output_dir_config(output_dir), checkout)
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    subprocess.run(["git", "-C", str(checkout), "add", "benchmarks"], check=True)
    with pytest.raises(InputError, match=r"holds files of the repository \(benchmarks/README.md\)"):
        config_check.output_dir_outside_checkout(
            output_dir_config(checkout / "benchmarks"), checkout
        )
    for fine in (checkout / "results" / "demo", tmp_path / "elsewhere"):
        config_check.output_dir_outside_checkout(output_dir_config(fine), checkout)


def test_weights_that_name_a_folder_are_refused_naming_the_key(tmp_path):
    """Case 12: "weights file not found" although the path exists."""
    (tmp_path / "model.safetensors").write_bytes(b"")
    config = {
        "architectures": [{"name": "a", "weights": "none"}, {"name": "b", "weights": str(tmp_path)}]
    }
    with pytest.raises(InputError) as err:
        config_check.weights_files(config)
    assert str(err.value).startswith(
        f"config key 'architectures.1.weights' -> {tmp_path} is a folder (it holds model."
    )


def _snakemake(*args, cwd=REPO):
    """Run snakemake; returns (exit status, stdout + stderr): it logs errors to either."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    return result.returncode, result.stdout + result.stderr


def test_dry_run_with_default_config_names_missing_data_path():
    status, output = _snakemake("-n")
    assert status != 0
    assert "config key 'data.official.image_root' -> /path/to/BBBC021/images" in output


def test_dry_run_rejects_unknown_architecture_at_start(tmp_path):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(yaml.safe_dump({"architectures": [{"name": "vit_nope_patch16_dinov3"}]}))
    status, output = _snakemake("-n", "--configfile", "config/demo.yaml", str(overlay))
    assert status != 0
    assert "unknown architecture 'vit_nope_patch16_dinov3'" in output


def test_workflow_lint_is_clean():
    status, output = _snakemake("--lint", "--configfile", "config/demo.yaml")
    assert status == 0, output
    assert "Congratulations" in output


def test_every_rule_has_log_benchmark_and_conda():
    import re

    for smk in sorted((REPO / "rules").glob("*.smk")):
        # split at rule headers ("rule name:" or an anonymous "rule:" with a name: directive)
        blocks = re.split(r"\n\s*rule\s*\w*:\n", smk.read_text())[1:]
        for block in blocks:
            body = block.split("\nrule ")[0]
            # Snakemake forbids benchmark: in a between-workflow cached rule; its timing goes
            # into the log through workflow_scripts.timed instead
            timing = "workflow_scripts.timed" if "cache:" in body else "benchmark:"
            for directive in ("log:", timing, "conda:"):
                assert directive in body, f"{smk.name}: a rule lacks {directive}\n{body[:200]}"


def test_model_kwargs_typo_is_named_while_planning(demo_config):
    bad = copy.deepcopy(demo_config)
    bad["architectures"][0]["model_kwargs"] = {"depht": 2, "embed_dim": 64, "num_heads": 2}
    with pytest.raises(InputError, match=r"config key 'architectures\.0\.model_kwargs': .*depht"):
        check_model_kwargs(bad)
    check_model_kwargs(demo_config)  # the demo's own kwargs build


def test_dry_run_names_model_kwargs_typo_and_schema_key(tmp_path):
    typo = tmp_path / "typo.yaml"
    arch = {
        "name": "vit_small_patch16_dinov3.lvd1689m",
        "weights": "none",
        "gpus": 0,
        "model_kwargs": {"depht": 2},
    }
    typo.write_text(yaml.safe_dump({"architectures": [arch]}))
    status, output = _snakemake("-n", "--configfile", "config/demo.yaml", str(typo))
    assert status != 0
    assert "config key 'architectures.0.model_kwargs'" in output and "depht" in output
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump({"train": {"optimizer": {"lr": -1.0}}}))
    status, output = _snakemake("-n", "--configfile", "config/demo.yaml", str(schema))
    assert status != 0
    assert "config key 'train.optimizer.lr'" in output  # as README promises


def test_gpus_without_cuda_stop_the_training_job_unless_cpu_is_allowed(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from workflow_scripts.train import cli as train_cli

    argv = [
        "--arch",
        "vit_small_patch16_dinov3.lvd1689m",
        "--channel",
        "DAPI",
        "--cache-dir",
        str(tmp_path / "no_cache"),
        "--weights",
        "none",
        "--settings",
        "{}",
        "--out-dir",
        str(tmp_path / "out"),
        "--resume-dir",
        str(tmp_path / "resume"),
        "--gpus",
        "2",
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "'architectures[].gpus' is 2 but this training job sees no CUDA device" in err
    assert "allow_cpu_fallback" in err
    # allowed: the job goes on (and stops at the next problem, the empty settings)
    assert train_cli.main(argv + ["--allow-cpu-fallback", "1"]) == 2
    assert "no CUDA device" not in capsys.readouterr().err


def test_baseline_table_paths_expand_output_dir(demo_config):
    (entry,) = cfg.baselines(demo_config)
    assert entry["table"] == f"{demo_config['output_dir']}/baselines/handcrafted_profiles.csv"
    assert entry["feature_columns"] == "^Image_"
    assert cfg.baselines({"output_dir": "x", "baselines": [{"name": "cp", "table": "t.csv"}]}) == [
        {"name": "cp", "table": "t.csv", "feature_columns": "^feat_", "metadata_map": {}}
    ]


def test_training_seeds_keep_the_first_run_as_a_single_run(demo_config):
    from workflow_scripts import training_seeds

    settings = dict(demo_config["train"])
    assert training_seeds.seeds(settings) == [0] and training_seeds.extra_seeds(settings) == []
    assert training_seeds.run_settings(settings) == settings  # no list: unchanged
    listed = {**settings, "seeds": [2, 0, 5]}
    assert training_seeds.seeds(listed) == [0, 2, 5]  # train.seed first: today's paths
    assert training_seeds.extra_seeds(listed) == [2, 5]
    assert training_seeds.run_settings(listed) == settings  # the first run's settings as before
    assert training_seeds.run_settings(listed, 5) == {**settings, "seed": 5}
    # an architecture's override of train.seed must be in the list it inherits
    config = copy.deepcopy(demo_config)
    config["train"]["seeds"] = [0, 1]
    config["architectures"][0]["train"] = {"seed": 3}
    with pytest.raises(
        InputError, match=r"train.seeds' \(architecture vit_small.*train.seed \(3\)"
    ):
        check(config)
    config["architectures"][0]["train"] = {"seed": 3, "seeds": [3, 4]}
    check(config)
