# Config access, output paths, wildcard constraints and code dependencies shared by all rules.
import json
import os
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # so `workflow_scripts` imports without installation

from workflow_scripts import config as cfg
from workflow_scripts import output_lock
from workflow_scripts import output_cache
from workflow_scripts.code_deps import relative_module_files
from workflow_scripts.data import manifest as raw_manifest
from workflow_scripts.errors import InputError
from workflow_scripts.train.model_kwargs import check_model_kwargs
from workflow_scripts.evaluate import crops as cfg_crops

try:
    cfg.check_meaning(config)
    if workflow.is_main_process:  # jobs re-parse this file: checked once, by the main process
        check_model_kwargs(config)
    cfg_crops.check_config(config)
except InputError as err:
    raise WorkflowError(f"config error: {err}") from None

# Between-workflow cache (--cache, rules/data.smk): fail now, naming the variable, rather than
# at the first cached job (Snakemake only warns when the location is unset).
if workflow.workflow_settings.cache is not None:
    try:
        output_cache.check_location(os.environ)
    except InputError as err:
        raise WorkflowError(f"between-workflow cache: {err}") from None

OUT = config["output_dir"]
RESOURCES = config["resources"]  # schema: required, defaults in config.yaml
DATA_CHANNELS = list(config["data"]["channels"])
ARCHS = cfg.architecture_names(config)
TRAIN_CHANNELS = cfg.training_channels(config)
EVAL_CHANNELS = cfg.evaluation_channels(config)


def out(*parts):
    return os.path.join(OUT, *parts)


def as_json(obj):
    """Settings handed to a CLI on its command line; params changes trigger reruns."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def code(module):
    """Source files the rule's CLI module runs (it and its package imports, transitively).
    Snakemake does not track imported modules; as inputs, an edited module reruns exactly the
    rules that execute it. Relative paths: moving the checkout reruns nothing."""
    return relative_module_files(f"workflow_scripts.{module}", start=os.getcwd())


wildcard_constraints:
    arch="|".join(re.escape(a) for a in ARCHS),
    channel="|".join(EVAL_CHANNELS),
    epoch=r"\d{4}",


# ------------------------------------------------------------------ paths between stages
PREPARED_TABLE = out("data", "images_prepared.parquet")
RAW_MANIFEST = out("data", "raw_images.tsv")  # size + mtime of every raw TIFF (data/manifest.py)
VALIDATED_TABLE = out("data", "images.parquet")
VALIDATION_REPORT = out("data", "validation_report.json")
VALIDATION_REPORT_MD = out("data", "validation_report.md")
CACHE_DIR = out("cache")
CACHE_TABLE = out("cache", "images.parquet")
CACHE_META = out("cache", "meta.json")
CACHE_ARRAYS = expand(out("cache", "{ch}.npy"), ch=DATA_CHANNELS)
CHECKPOINT = out("train", "{arch}", "{channel}", "epoch_{epoch}.safetensors")
CHECKPOINT_META = out("train", "{arch}", "{channel}", "epoch_{epoch}.json")
TRAIN_LOG = out("train", "{arch}", "{channel}", "log.jsonl")
RESUME_DIR = out("resume", "{arch}", "{channel}")  # not an output: survives reruns
FEATURES = out("features", "{arch}", "{channel}", "epoch_{epoch}.parquet")
EVAL_DIR = out("eval", "{arch}", "{channel}", "epoch_{epoch}")
METRICS = out("eval", "{arch}", "{channel}", "epoch_{epoch}", "metrics.json")
SUMMARY_DIR = out("summary")
SUMMARY_TABLE = out("summary", "summary.csv")
SUMMARY_REPORT = out("summary", "report.html")
LOGS = out("logs")
BENCH = out("benchmarks")


# ------------------------------------------------------------------ one run per output_dir
if workflow.is_main_process:
    # a run killed with -9 left its locks: clear them so the plain command runs again
    if output_lock.recover_after_crash(OUT, os.path.join(os.getcwd(), ".snakemake")):
        print(f"note: removed the stale lock of a run on {OUT} that is gone", file=sys.stderr)
    # raw TIFFs replaced since the last run: rewrite the manifest, so what reads them reruns
    if raw_manifest.refresh(RAW_MANIFEST):
        print(f"note: raw images changed since {RAW_MANIFEST} was written", file=sys.stderr)


onstart:
    try:
        output_lock.acquire(OUT, os.getcwd())
    except InputError as err:
        raise WorkflowError(f"error: {err}") from None


onsuccess:
    output_lock.release(OUT)


onerror:
    output_lock.release(OUT)


def epoch_tag(epoch):
    return f"{int(epoch):04d}"


def arch_entry(arch):
    return cfg.architecture(config, arch)


def arch_train(arch):
    return cfg.train_settings(config, arch)


def train_epochs(arch):
    return [epoch_tag(e) for e in cfg.evaluated_epochs(arch_train(arch))]


def eval_epochs(arch):
    return [
        epoch_tag(e)
        for e in cfg.evaluated_epochs(
            arch_train(arch), include_pretrained=config["evaluate"]["pretrained_baseline"]
        )
    ]


def weights_file(arch):
    """Local weights file for an architecture: fetched hub weights, a user file, or none."""
    weights = arch_entry(arch)["weights"]
    if weights == "none":
        return None
    if weights == "hub":
        return os.path.join(config["weights_dir"], f"{arch}.safetensors")
    return weights


def weights_inputs(arch):
    """The weights file as an input list: empty for random init."""
    path = weights_file(arch)
    return [path] if path else []


def weights_arg(wildcards):
    path = weights_file(wildcards.arch)
    return path if path else "none"


def gpus(arch):
    return int(arch_entry(arch)["gpus"])


def train_strategy(arch):
    """ddp or fsdp (memory_plan.py: `auto` = DDP when its estimate fits resources.gpu_mem_gb)."""
    entry = arch_entry(arch)
    if entry.get("strategy", "auto") != "auto" or not gpus(arch):
        return entry.get("strategy", "auto").replace("auto", "ddp")
    from workflow_scripts.train import memory_plan  # imports torch: only for GPU jobs

    return memory_plan.training_strategy(config, arch)


def train_strategy_args(arch):
    args = f"--strategy {train_strategy(arch)}"
    if arch_entry(arch).get("activation_checkpointing", False):
        args += " --activation-checkpointing"
    return args


# Refuse at planning time (snakemake -n), with the numbers, a GPU training that cannot fit.
if any(gpus(a) for a in ARCHS):
    from workflow_scripts.train import memory_plan

    try:
        memory_plan.check_fits(config)
    except InputError as err:
        raise WorkflowError(f"config error: {err}") from None


def nodes(arch):
    return int(arch_entry(arch).get("nodes", 1))


def srun_launch(arch):
    """Several nodes (or launcher: srun): one SLURM task per GPU, started by srun inside the
    job; the executor plugin's multi-task route (resources mpi/tasks/nodes)."""
    launcher = arch_entry(arch).get("launcher", "auto")
    return launcher == "srun" or (launcher == "auto" and nodes(arch) > 1)


for _arch in ARCHS:
    if srun_launch(_arch) and not gpus(_arch):
        raise WorkflowError(
            f"config error: architecture {_arch}: nodes > 1 / launcher srun needs gpus >= 1 "
            f"(one task per GPU)"
        )


def train_launcher(arch):
    """One process per GPU through torchrun; plain python for CPU or a single GPU; several
    nodes: srun, one task per GPU (rendezvous from SLURM's variables: distributed.py)."""
    n = gpus(arch)
    if srun_launch(arch):
        m = nodes(arch)
        return (
            f"srun --nodes={m} --ntasks={n * m} --ntasks-per-node={n} "
            f"--kill-on-bad-exit=1 python"
        )
    if n > 1:
        return f"torchrun --standalone --nproc-per-node={n}"
    return "python"


# ------------------------------------------------------------------ data sources
SOURCE = config["data"]["source"]
DEMO_DIR = out("demo_data")
DEMO_IMAGES = os.path.join(DEMO_DIR, "images")


def source_tables():
    """The two tables the prepare rule reads, per data source. Downloaded tables go to the
    output folder, never over data.official.*_table (by default a shared read-only copy)."""
    if SOURCE == "demo":
        return {
            "image_table": os.path.join(DEMO_DIR, "BBBC021_v1_image.csv"),
            "moa_table": os.path.join(DEMO_DIR, "BBBC021_v1_moa.csv"),
        }
    if DOWNLOADING:
        return {
            "image_table": out("download", "BBBC021_v1_image.csv.gz"),
            "moa_table": out("download", "BBBC021_v1_moa.csv"),
        }
    if SOURCE == "official":
        return {
            "image_table": config["data"]["official"]["image_table"],
            "moa_table": config["data"]["official"]["moa_table"],
        }
    return {
        "annotated": config["data"]["seed_csv"]["annotated"],
        "dmso": config["data"]["seed_csv"]["dmso"],
    }


def source_args():
    if SOURCE == "seed_csv":
        return "--source seed_csv --annotated {input.annotated:q} --dmso {input.dmso:q}"
    # the demo's image folder is an input (see source_images), a real image root a param
    root = "input" if SOURCE == "demo" else "params"
    return (
        "--source official --image-table {input.image_table:q} --moa-table {input.moa_table:q} "
        f"--image-root {{{root}.image_root:q}}"
    )


def source_images():
    """The demo's image folder is an output of generate_demo_data, so it is an input of
    prepare_metadata; its path (under output_dir) then stays out of the between-workflow cache
    key, which holds the generating job's key instead."""
    return {"image_root": DEMO_IMAGES} if SOURCE == "demo" else {}


def source_image_params():
    """A real image root is a param: part of the cache key (the table records its paths)."""
    return {} if SOURCE == "demo" else {"image_root": image_root()}


def image_root():
    if SOURCE == "demo":
        return DEMO_IMAGES
    return config["data"].get("official", {}).get("image_root", "")


# Fail at planning time, naming the key, when the real data is not where config.yaml says.
DOWNLOADING = SOURCE == "official" and config["data"].get("download", {}).get("enabled", False)
if SOURCE != "demo" and not DOWNLOADING:
    _missing = {k: v for k, v in source_tables().items() if not os.path.exists(v)}
    if SOURCE == "official" and not os.path.isdir(image_root()):
        _missing["image_root"] = image_root()
    if _missing:
        _where = "; ".join(f"config key 'data.{SOURCE}.{k}' -> {v}" for k, v in _missing.items())
        raise WorkflowError(
            f"data not found: {_where}. Edit config.yaml (or run the demo: --configfile config/demo.yaml)."
        )


# ------------------------------------------------------------------ evaluation inputs
EVAL_SETTINGS = config["evaluate"]
# what an extraction depends on: the crop mode's own keys, embedding, crop_median
EXTRACT_SETTINGS = cfg_crops.extraction_settings(EVAL_SETTINGS)
# what scoring a feature table depends on: the same for the runs and the baselines
SCORING_SETTINGS = {
    k: EVAL_SETTINGS.get(k, {}) for k in ("normalization", "tvn", "aggregation", "map")
}


def pretrained_model_arg(wildcards):
    """Epoch 0 sees images as this architecture's training does (checkpoints record it)."""
    settings = arch_train(wildcards.arch)
    # several arguments in one param, so each value is shell-quoted here (paths may hold
    # spaces, quotes or `$(...)`)
    return (
        f"--weights {shlex.quote(weights_arg(wildcards))} --init-seed {settings['seed']} "
        f"--input-standardization {shlex.quote(settings['input_standardization'])} "
        f"--interpolation {shlex.quote(settings['interpolation'])}"
    )


def extract_runtime(n_epochs):
    """Minutes for one extraction job of n epochs: start-up, then each epoch's pass."""
    return RESOURCES["extract_runtime_min"] + n_epochs * RESOURCES["extract_epoch_runtime_min"]


def extract_mem_mb(arch):
    """Host memory of an extraction job: the configured value, or more where a GPU
    architecture's weights need it (CPU architectures are not sized: that needs torch)."""
    configured = RESOURCES["extract_mem_mb"]
    if not gpus(arch):
        return configured
    from workflow_scripts.evaluate import extraction_memory  # imports torch: GPU jobs only

    return max(configured, extraction_memory.host_mem_mb(arch, arch_entry(arch)["model_kwargs"]))


def extract_resources(n_epochs):
    """An extraction job's resources (rules/evaluate.smk: group_slot = one member at a time)."""
    return dict(
        gpu=lambda w: 1 if gpus(w.arch) else 0,
        mem_mb=lambda w: extract_mem_mb(w.arch),
        runtime=extract_runtime(n_epochs),
        group_slot=1,
        # Speed, not results: as resources (no rerun trigger looks at them, unlike params) a
        # change reruns no extraction; `--set-resources <rule>:extract_batch_size=N` (or auto)
        # overrides them per run. Executors ignore resource names they do not know.
        extract_batch_size=EVAL_SETTINGS["batch_size"],
        extract_workers=EVAL_SETTINGS["num_workers"],
    )


def all_metrics():
    return [
        path
        for arch in ARCHS
        for path in expand(METRICS, arch=arch, channel=EVAL_CHANNELS, epoch=eval_epochs(arch))
    ]


# ------------------------------------------------------------------ baselines, report
BASELINES = {entry["name"]: entry for entry in cfg.baselines(config)}
BASELINE_DIR = out("eval", "baselines", "{baseline}")
BASELINE_METRICS = os.path.join(BASELINE_DIR, "metrics.json")
HANDCRAFTED_PROFILES = out("baselines", "handcrafted_profiles.csv")

# Tables the workflow does not write must exist: name the config key before any job runs.
_missing = {
    i: entry["table"]
    for i, entry in enumerate(BASELINES.values())
    if entry["table"] != HANDCRAFTED_PROFILES and not os.path.exists(entry["table"])
}
if _missing:
    raise WorkflowError(
        "baseline table not found: "
        + "; ".join(f"config key 'baselines.{i}.table' -> {path}" for i, path in _missing.items())
    )


def all_baseline_metrics():
    return expand(BASELINE_METRICS, baseline=list(BASELINES))


def metadata_map_arg(wildcards):
    mapping = BASELINES[wildcards.baseline]["metadata_map"]
    return ",".join(f"{ours}={theirs}" for ours, theirs in mapping.items())


def pixel_scale_statements():
    """Per architecture: raw-field pixels per model pixel of training and evaluation crops."""
    image_shape = config["data"]["image_shape"]
    resize_factor = config["preprocess"]["resize_factor"]
    return {
        a: cfg_crops.describe_scales(
            cfg_crops.pixel_scales(image_shape, resize_factor, arch_train(a), EVAL_SETTINGS)
        )
        for a in ARCHS
    }
