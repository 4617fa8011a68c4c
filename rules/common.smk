# Config access, output paths, wildcard constraints and code dependencies shared by all rules.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # so `workflow_scripts` imports without installation

from workflow_scripts import config as cfg
from workflow_scripts.code_deps import relative_module_files
from workflow_scripts.errors import InputError

try:
    cfg.check_meaning(config)
except InputError as err:
    raise WorkflowError(f"config error: {err}") from None

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


def train_launcher(arch):
    """One process per GPU through torchrun; plain python for CPU or a single GPU."""
    n = gpus(arch)
    if n > 1:
        return f"torchrun --standalone --nproc-per-node={n}"
    return "python"


# ------------------------------------------------------------------ data sources
SOURCE = config["data"]["source"]
DEMO_DIR = out("demo_data")


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
    return (
        "--source official --image-table {input.image_table:q} --moa-table {input.moa_table:q} "
        "--image-root {params.image_root:q}"
    )


def image_root():
    if SOURCE == "demo":
        return os.path.join(DEMO_DIR, "images")
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


def extract_inputs(wildcards):
    """Epoch 0 is the pretrained backbone; other epochs read the training checkpoint."""
    if int(wildcards.epoch) == 0:
        return weights_inputs(wildcards.arch)
    return [CHECKPOINT.format(**wildcards), CHECKPOINT_META.format(**wildcards)]


def extract_model_arg(wildcards):
    """Epoch 0 sees images as this architecture's training does; checkpoints record it."""
    if int(wildcards.epoch) == 0:
        settings = arch_train(wildcards.arch)
        return (
            f"--weights {weights_arg(wildcards)} --init-seed {settings['seed']} "
            f"--input-standardization {settings['input_standardization']} "
            f"--interpolation {settings['interpolation']}"
        )
    return f"--checkpoint {CHECKPOINT.format(**wildcards)}"


def all_metrics():
    return [
        path
        for arch in ARCHS
        for path in expand(METRICS, arch=arch, channel=EVAL_CHANNELS, epoch=eval_epochs(arch))
    ]
