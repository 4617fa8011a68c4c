"""Every rule a loaded configuration must meet beyond its JSON schema, checked once at start.

The Snakefile calls `check(config, ...)` once, before any rule is defined, so a wrong setting
stops `snakemake -n` with one message naming its key (`config key 'train.optimizer.min_lr'
(architecture A): exceeds lr`). Each rule is a function of the configuration (and, where it
looks outside, of what it looks at) that raises InputError, so each is testable without
Snakemake. Three kinds, cheapest first:

- settings: what the values mean together (model names, ranges, warm-ups, channel modes,
  baseline names, evaluation windows on the cached field, launchers);
- files: what must exist before any job runs (the official tables and image root, baseline
  tables, weights files, the between-workflow cache folder when --cache is on) and the
  output_dir (a writable folder of its own, not the checkout);
- models: built on the meta device (torch, timm): model_kwargs that build, and a GPU training
  that fits resources.gpu_mem_gb under its strategy. What they count is cached on disk
  (count_cache.py): a configuration checked before is checked again without torch.

A module of its own, imported by the Snakefile and the planner CLI only: workflow_scripts.config
is imported by the training and cache code, whose rules would otherwise list these checks (and
what they import) among their code inputs and rerun when a check changes.

Before all of these, `config_files` reads every YAML file the run is configured by with a loader
that refuses a key given twice (PyYAML and Snakemake keep the last one silently) and names file
and line of a syntax error. Snakemake parses `--configfile` files itself before the Snakefile
runs, so a syntax error there stops Snakemake with its own message, which names no file: run
`python -m workflow_scripts.config_check CONFIG...` to find it (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from workflow_scripts import config as config_module
from workflow_scripts import training_seeds
from workflow_scripts.errors import InputError, cli
from workflow_scripts.evaluate import crops as evaluation_crops_module

Rule = Callable[[dict], None]


# ------------------------------------------------------------------ config files
# Profiles of this checkout: the workflow profile Snakemake applies to every run, and the SLURM
# profile users edit (`--profile slurm`). Snakemake reads them; their keys must be unique too.
PROFILE_FILES = ("profiles/default/config.yaml", "slurm/config.yaml")


def config_files(paths: Iterable[str | os.PathLike]) -> None:
    """Each existing file parses as YAML with no key given twice in a mapping (two `data:`
    sections would drop the first silently); errors name the file and line."""
    for path in paths:
        if os.path.isfile(path):
            config_module.read_yaml(path)


def profile_files(checkout: str | os.PathLike) -> list[Path]:
    return [Path(checkout) / name for name in PROFILE_FILES]


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


def weights_files(config: dict) -> None:
    """A weights path names a file, not a folder (`hub` and `none` are not paths)."""
    for i, entry in enumerate(config["architectures"]):
        weights = entry.get("weights", "hub")
        if weights in ("hub", "none") or not os.path.isdir(weights):
            continue
        found = sorted(
            p.name for p in Path(weights).iterdir() if p.suffix in (".safetensors", ".pth")
        )
        hint = f" (it holds {', '.join(found[:3])})" if found else ""
        raise InputError(
            f"config key 'architectures.{i}.weights' -> {weights} is a folder{hint}; give the "
            "weights file itself, e.g. weights: path/to/file.safetensors"
        )


def _output_dir(config: dict) -> str:
    return config["output_dir"]


def output_dir_is_a_folder(config: dict) -> None:
    """output_dir, and every folder above it that exists, is a folder, not a file."""
    path = Path(os.path.abspath(_output_dir(config)))
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            what = "is a file" if part == path else f"lies under {part}, which is a file"
            raise InputError(
                f"config key 'output_dir' -> {_output_dir(config)} {what}, not a folder; "
                "choose another output_dir"
            )
        if part.exists():
            return


def output_dir_writable(config: dict) -> None:
    """Files can be created in output_dir (or, before the first run, in the nearest folder
    above it that exists): a read-only mount or a folder without write permission fails at
    start, not in the first job."""
    path = Path(os.path.abspath(_output_dir(config)))
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise InputError(
            f"config key 'output_dir' -> {_output_dir(config)}: cannot write in {existing} "
            f"({reason}); choose an output_dir on a writable file system"
        ) from None


def output_dir_outside_checkout(config: dict, checkout: str | os.PathLike) -> None:
    """output_dir is not the checkout, a folder holding it, or (in a git clone) a folder of
    tracked files: outputs would mix with the repository (`output_dir: .`). A folder of its own
    inside the checkout (results/, ignored by git) is fine."""
    path = Path(os.path.realpath(_output_dir(config)))
    root = Path(os.path.realpath(checkout))
    if path == root or path in root.parents:
        raise InputError(
            f"config key 'output_dir' -> {_output_dir(config)} is the checkout {root}"
            f"{'' if path == root else ' or a folder holding it'}: outputs would mix with the "
            "repository's files; choose a folder of its own, e.g. results/"
        )
    if root not in path.parents:
        return
    tracked = tracked_files(root, path)
    if tracked:
        raise InputError(
            f"config key 'output_dir' -> {_output_dir(config)} holds files of the repository "
            f"({', '.join(tracked[:3])}{', ...' if len(tracked) > 3 else ''}): outputs would mix "
            "with them; choose a folder of its own, e.g. results/"
        )


def tracked_files(checkout: Path, folder: Path) -> list[str]:
    """Files git tracks under `folder` of a checkout; empty without git or outside a clone."""
    if not (checkout / ".git").exists():
        return []
    try:
        listed = subprocess.run(
            ["git", "-C", str(checkout), "ls-files", "-z", "--", str(folder.relative_to(checkout))],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [name for name in listed.stdout.split("\0") if name] if listed.returncode == 0 else []


OUTPUT_DIR_RULES: tuple[Rule, ...] = (output_dir_is_a_folder, output_dir_writable)


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
    checkout: str | os.PathLike | None = None,
) -> None:
    """Every rule, cheapest first; the first broken one raises InputError naming its key.
    `files=False` skips the file-system rules (the planner CLI needs no data), `models=False`
    the meta-device builds (Snakemake's job processes re-parse the Snakefile: the main process
    has checked them). `cache_environ`: the environment, when --cache is on. `checkout`: the
    repository the run uses (the Snakefile's folder), which output_dir must stay out of."""
    for rule in SETTINGS_RULES:
        rule(config)
    if files:
        for rule in OUTPUT_DIR_RULES:
            rule(config)
        if checkout is not None:
            output_dir_outside_checkout(config, checkout)
        data_paths(config)
        baseline_tables(config, written_by_workflow)
        weights_files(config)
        if cache_environ is not None:
            cache_location(cache_environ)
    if models:
        for rule in MODEL_RULES:
            rule(config)


@cli
def main(argv: list[str] | None = None) -> int:
    """Check config files as `snakemake -n` does, naming the file and line of a YAML error
    even in an overlay (Snakemake's own message for a `--configfile` names no file)."""
    parser = argparse.ArgumentParser(
        description="Check config files (later ones overlay earlier ones) as the workflow does "
        "at start: YAML syntax and duplicate keys (file and line), the schema, and every rule "
        "of workflow_scripts/config_check.py."
    )
    parser.add_argument("configs", nargs="+", help="config.yaml, then overlays")
    parser.add_argument(
        "--no-models", action="store_true", help="skip the model builds (no torch import)"
    )
    args = parser.parse_args(argv)
    config_files(args.configs)
    config = config_module.load(args.configs)
    # a baseline table under {output_dir} is written by a rule of the workflow (the demo's)
    written = tuple(
        entry["table"]
        for raw, entry in zip(config.get("baselines") or [], config_module.baselines(config))
        if "{output_dir}" in raw["table"]
    )
    check(
        config,
        models=not args.no_models,
        written_by_workflow=written,
        checkout=config_module.REPO_DIR,
    )
    print(f"ok: {', '.join(args.configs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
