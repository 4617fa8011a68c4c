"""Every rule a loaded configuration must meet beyond its JSON schema, checked once at start.

The Snakefile calls `check(config, ...)` once, before any rule is defined, so a wrong setting
stops `snakemake -n` with one message naming its key (`config key 'train.optimizer.min_lr'
(architecture A): exceeds lr`). Each rule is a function of the configuration (and, where it
looks outside, of what it looks at) that raises InputError, so each is testable without
Snakemake. Three kinds, cheapest first:

- settings: what the values mean together (model names, ranges, warm-ups, channel modes,
  baseline names, evaluation windows on the cached field, launchers);
- files: what must exist before any job runs (the official tables and image root, baseline
  tables, the between-workflow cache folder when --cache is on);
- models: built on the meta device (torch, timm): model_kwargs that build, and a GPU training
  that fits resources.gpu_mem_gb under its strategy. What they count is cached on disk
  (count_cache.py): a configuration checked before is checked again without torch.

A module of its own, imported by the Snakefile and the planner CLI only: workflow_scripts.config
is imported by the training and cache code, whose rules would otherwise list these checks (and
what they import) among their code inputs and rerun when a check changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from workflow_scripts import config as config_module
from workflow_scripts import training_seeds
from workflow_scripts.errors import InputError
from workflow_scripts.evaluate import crops as evaluation_crops_module

Rule = Callable[[dict], None]


# ------------------------------------------------------------------ settings
def architecture_names(config: dict) -> None:
    """Every architecture a known timm DINOv3 model, each listed once."""
    valid = config_module.known_models()
    seen = set()
    for i, entry in enumerate(config["architectures"]):
        name = entry["name"]
        if name not in valid:
            raise InputError(
                f"config key 'architectures.{i}.name': unknown architecture '{name}'. "
                f"Valid DINOv3 models: {', '.join(valid)}"
            )
        if name in seen:
            raise InputError(f"config key 'architectures.{i}.name': '{name}' is listed twice")
        seen.add(name)


def training_ranges(config: dict) -> None:
    """Per architecture (its overrides applied): crop scale and ratio ranges, min_lr <= lr, and
    warm-ups no longer than the run."""
    for name in config_module.architecture_names(config):
        settings = config_module.train_settings(config, name)
        for crop_key in ("global_crops", "local_crops"):
            lo, hi = settings[crop_key]["scale"]
            if lo > hi:
                raise InputError(
                    f"config key 'train.{crop_key}.scale' (architecture {name}): "
                    f"lower bound {lo} exceeds upper bound {hi}"
                )
            ratio = settings[crop_key].get("ratio", [1, 1])
            if ratio[0] > ratio[1]:
                raise InputError(
                    f"config key 'train.{crop_key}.ratio' (architecture {name}): "
                    f"lower bound {ratio[0]} exceeds upper bound {ratio[1]}"
                )
        if settings["optimizer"]["min_lr"] > settings["optimizer"]["lr"]:
            raise InputError(
                f"config key 'train.optimizer.min_lr' (architecture {name}): exceeds lr"
            )
        for key, value in (
            ("optimizer.warmup_epochs", settings["optimizer"].get("warmup_epochs")),
            (
                "loss.warmup_teacher_temp_epochs",
                settings.get("loss", {}).get("warmup_teacher_temp_epochs"),
            ),
        ):
            if value is not None and value > settings["epochs"]:
                raise InputError(
                    f"config key 'train.{key}' (architecture {name}): warm-up of {value} epochs "
                    f"is longer than the run (train.epochs {settings['epochs']})"
                )


def seed_lists(config: dict) -> None:
    """Per architecture (its overrides applied): train.seeds, when given, holds train.seed."""
    for name in config_module.architecture_names(config):
        training_seeds.check(config_module.train_settings(config, name), f" (architecture {name})")


def baseline_names(config: dict) -> None:
    """A baseline's name is neither an architecture's nor an earlier baseline's."""
    seen = set(config_module.architecture_names(config))
    for i, entry in enumerate(config.get("baselines") or []):
        if entry["name"] in seen:
            raise InputError(
                f"config key 'baselines.{i}.name': '{entry['name']}' is already the name of an "
                "architecture or an earlier baseline"
            )
        seen.add(entry["name"])


def channel_modes(config: dict) -> None:
    modes = config["channel_modes"]
    if config_module.PER_CHANNEL_MODE not in modes and config_module.RGB not in modes:
        raise InputError("config key 'channel_modes': choose per_channel and/or rgb")
    if config_module.RGB in modes and len(config["data"]["channels"]) != 3:
        raise InputError("config key 'channel_modes': rgb needs exactly 3 entries in data.channels")


def evaluation_windows(config: dict) -> None:
    """The evaluation crops fit the cached field (data.image_shape x preprocess.resize_factor)."""
    evaluation_crops_module.check_config(config)


def launchers(config: dict) -> None:
    """Several nodes or launcher srun start one SLURM task per GPU: they need GPUs."""
    from workflow_scripts.cluster import resources  # no torch: the launcher arithmetic only

    for i, entry in enumerate(config["architectures"]):
        name = entry["name"]
        if resources.srun_launch(config, name) and not resources.gpus(config, name):
            raise InputError(
                f"config key 'architectures.{i}': architecture {name}: nodes > 1 / launcher "
                "srun needs gpus >= 1 (one task per GPU)"
            )


def download_plates(config: dict) -> None:
    """data.download.plates: "all" or BBBC021 plate names (when the download is on)."""
    download = config["data"].get("download", {})
    if download.get("enabled") and config["data"]["source"] == "official":
        from workflow_scripts.data.download import plates_setting

        plates_setting(download.get("plates", "all"))


def demo_settings(config: dict) -> None:
    """data.demo (source demo): known keys, valid values, the keys of its layout only."""
    if config["data"]["source"] == "demo":
        from workflow_scripts.data import demo_design

        demo_design.settings_with_defaults(config["data"].get("demo", {}))


SETTINGS_RULES: tuple[Rule, ...] = (
    architecture_names,
    training_ranges,
    seed_lists,
    baseline_names,
    channel_modes,
    evaluation_windows,
    launchers,
    download_plates,
    demo_settings,
)


# ------------------------------------------------------------------ files
def data_paths(config: dict) -> None:
    """The official tables and image root (or the seed CSVs) exist, unless the demo generates
    them or the download rules fetch them."""
    data = config["data"]
    source = data["source"]
    if source == "demo" and data.get("demo", {}).get("layout") == "official":
        # the rehearsal renders the fields these tables list
        tables = {k: data["official"][k] for k in ("image_table", "moa_table")}
        missing = {k: path for k, path in tables.items() if not os.path.isfile(path)}
        if missing:
            where = "; ".join(f"config key 'data.official.{k}' -> {v}" for k, v in missing.items())
            raise InputError(f"data not found: {where} (read by data.demo.layout: official)")
        return
    if source == "demo" or (source == "official" and data.get("download", {}).get("enabled")):
        return
    section = data.get(source, {})
    keys = ("image_table", "moa_table") if source == "official" else ("annotated", "dmso")
    missing = {key: section.get(key, "") for key in keys}
    missing = {key: path for key, path in missing.items() if not os.path.exists(path)}
    if source == "official" and not os.path.isdir(section.get("image_root", "")):
        missing["image_root"] = section.get("image_root", "")
    if missing:
        where = "; ".join(f"config key 'data.{source}.{k}' -> {v}" for k, v in missing.items())
        raise InputError(
            f"data not found: {where}. Edit config.yaml (or run the demo: --configfile "
            "config/demo.yaml)."
        )


def baseline_tables(config: dict, written_by_workflow: tuple[str, ...] = ()) -> None:
    """Every baseline table exists, except those a rule of this workflow writes."""
    missing = {
        i: entry["table"]
        for i, entry in enumerate(config_module.baselines(config))
        if entry["table"] not in written_by_workflow and not os.path.exists(entry["table"])
    }
    if missing:
        raise InputError(
            "baseline table not found: "
            + "; ".join(
                f"config key 'baselines.{i}.table' -> {path}" for i, path in missing.items()
            )
        )


def cache_location(environ: Mapping[str, str]) -> None:
    """With --cache: $SNAKEMAKE_OUTPUT_CACHE is an absolute, writable folder (output_cache.py)."""
    from workflow_scripts import output_cache

    try:
        output_cache.check_location(environ)
    except InputError as err:
        raise InputError(f"between-workflow cache: {err}") from None


# ------------------------------------------------------------------ models (torch)
def model_kwargs(config: dict) -> None:
    """Each architecture builds with its model_kwargs (meta device: no memory, no weights)."""
    from workflow_scripts.model.kwargs import check_model_kwargs

    check_model_kwargs(config)


def gpu_memory(config: dict) -> None:
    """Each GPU training fits resources.gpu_mem_gb under the strategy it will run."""
    from workflow_scripts.cluster.resources import check_fits

    check_fits(config)


MODEL_RULES: tuple[Rule, ...] = (model_kwargs, gpu_memory)


def check(
    config: dict,
    *,
    files: bool = True,
    models: bool = True,
    written_by_workflow: tuple[str, ...] = (),
    cache_environ: Mapping[str, str] | None = None,
) -> None:
    """Every rule, cheapest first; the first broken one raises InputError naming its key.
    `files=False` skips the file-system rules (the planner CLI needs no data), `models=False`
    the meta-device builds (Snakemake's job processes re-parse the Snakefile: the main process
    has checked them). `cache_environ`: the environment, when --cache is on."""
    for rule in SETTINGS_RULES:
        rule(config)
    if files:
        data_paths(config)
        baseline_tables(config, written_by_workflow)
        if cache_environ is not None:
            cache_location(cache_environ)
    if models:
        for rule in MODEL_RULES:
            rule(config)
