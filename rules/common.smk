# Paths between stages, config accessors, wildcard constraints and code dependencies shared by
# all rules. The configuration is checked before this file is read (Snakefile: config_check).
import json
import os
import re
import shlex
import sys

sys.path.insert(0, workflow.basedir)  # so `workflow_scripts` imports without installation

from workflow_scripts import config as cfg
from workflow_scripts import output_lock
from workflow_scripts import training_seeds
from workflow_scripts.cluster import resources as cluster
from workflow_scripts.code_deps import relative_module_files
from workflow_scripts.data import manifest as raw_manifest
from workflow_scripts.errors import InputError  # onstart's lock error
from workflow_scripts.evaluate import crops as cfg_crops
from workflow_scripts import stale_outputs

OUT = config["output_dir"]
DATA_CHANNELS = list(config["data"]["channels"])
ARCHS = cfg.architecture_names(config)
TRAIN_CHANNELS = cfg.training_channels(config)
EVAL_CHANNELS = cfg.evaluation_channels(config)
# attention maps need attention blocks: the ViTs of the DINOv3 family (timm vit_*), not ConvNeXt
ATTENTION_ARCHS = [a for a in ARCHS if a.startswith("vit_")]


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
    seed=r"-?\d+",


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
PROFILES = out("eval", "{arch}", "{channel}", "epoch_{epoch}", "profiles.parquet")
ATTENTION_MAPS = out("attention", "{arch}", "{channel}", "maps.npz")
SUMMARY_DIR = out("summary")
SUMMARY_TABLE = out("summary", "summary.csv")
SUMMARY_REPORT = out("summary", "report.html")
LOGS = out("logs")
BENCH = out("benchmarks")
# another training seed than train.seed (train.seeds): the same files one folder deeper
# (workflow_scripts/training_seeds.py); train.seed's run keeps the paths above
SEED_DIR = "seed_{seed}"
CHECKPOINT_SEED = out("train", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}.safetensors")
CHECKPOINT_META_SEED = out("train", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}.json")
TRAIN_LOG_SEED = out("train", "{arch}", "{channel}", SEED_DIR, "log.jsonl")
FEATURES_SEED = out("features", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}.parquet")
EVAL_DIR_SEED = out("eval", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}")
METRICS_SEED = os.path.join(EVAL_DIR_SEED, "metrics.json")
PROFILES_SEED = os.path.join(EVAL_DIR_SEED, "profiles.parquet")
# An empty stamp per job kind, an input of its jobs: rewritten at start when one of the job's
# outputs was made with other settings than the configuration's (an output_dir moved or copied
# has no Snakemake records) or cannot be read, so the job reruns (workflow_scripts/stale_outputs.py)
RERUN_STAMPS = stale_outputs.stamp_templates(OUT)


# ------------------------------------------------------------------ one run per output_dir
def prepare_output_dir():
    """Start-up of the main process, once the configuration is checked (Snakefile)."""
    # a run killed with -9 left its locks: clear them so the plain command runs again
    if output_lock.recover_after_crash(OUT, os.path.join(os.getcwd(), ".snakemake")):
        print(f"note: removed the stale lock of a run on {OUT} that is gone", file=sys.stderr)
    # raw TIFFs replaced since the last run: rewrite the manifest, so what reads them reruns
    if raw_manifest.refresh(RAW_MANIFEST):
        print(f"note: raw images changed since {RAW_MANIFEST} was written", file=sys.stderr)
    # outputs made with other settings, or unreadable: rewrite their jobs' stamps
    stamps, findings = stale_outputs.find(config, stage_outputs(), RERUN_STAMPS)
    for line in stale_outputs.notes(findings):
        print(line, file=sys.stderr)
    stale_outputs.refresh(stamps, findings)


def stage_outputs():
    """The outputs the start-up pass reads (stale_outputs.py), by kind."""
    return {
        "validated_table": VALIDATED_TABLE,
        "validation_report": VALIDATION_REPORT,
        "cache_meta": CACHE_META,
        "cache_table": CACHE_TABLE,
        "cache_arrays": CACHE_ARRAYS,
        "checkpoint": CHECKPOINT,  # (a key, not Snakemake's `checkpoint` directive)
        "checkpoint_meta": CHECKPOINT_META,
        "features": FEATURES,
        "metrics": METRICS,
        "checkpoint_seed": CHECKPOINT_SEED,
        "checkpoint_meta_seed": CHECKPOINT_META_SEED,
        "features_seed": FEATURES_SEED,
        "metrics_seed": METRICS_SEED,
        "attention_maps": ATTENTION_MAPS,
        "attention_archs": ATTENTION_ARCHS,  # (the architectures with attention maps)
        "baseline_metrics": BASELINE_METRICS,
    }


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


def arch_train(arch, seed=None):
    """One fine-tuning's train settings: `seeds` left out, `seed` = `seed` (default train.seed)."""
    return training_seeds.run_settings(cfg.train_settings(config, arch), seed)


def arch_seeds(arch):
    """All training seeds of an architecture, train.seed first."""
    return training_seeds.seeds(cfg.train_settings(config, arch))


def extra_seeds(arch):
    """The seeds after train.seed: each a fine-tuning under seed_S/ folders."""
    return training_seeds.extra_seeds(cfg.train_settings(config, arch))


SEEDED_ARCHS = [a for a in ARCHS if extra_seeds(a)]


def train_epochs(arch):
    return [epoch_tag(e) for e in cfg.evaluated_epochs(arch_train(arch))]


def eval_epochs(arch):
    return [
        epoch_tag(e)
        for e in cfg.evaluated_epochs(
            arch_train(arch), include_pretrained=config["evaluate"]["pretrained_baseline"]
        )
    ]


def seed_eval_epochs(arch):
    """Evaluated epochs of another seed's run: its trained epochs, and epoch 0 only with
    random init (pretrained weights are the same backbone for every seed: one epoch 0)."""
    own_epoch0 = config["evaluate"]["pretrained_baseline"] and weights_file(arch) is None
    return [epoch_tag(e) for e in cfg.evaluated_epochs(arch_train(arch), own_epoch0)]


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
    return cluster.gpus(config, arch)


# ------------------------------------------------------------------ data sources
SOURCE = config["data"]["source"]
DEMO_DIR = out("demo_data")
DEMO_IMAGES = os.path.join(DEMO_DIR, "images")


# layout official: the demo renders BBBC021's own fields, listed by the official tables
DEMO_LAYOUT_OFFICIAL = (
    SOURCE == "demo" and config["data"].get("demo", {}).get("layout") == "official"
)


def demo_layout_tables():
    """The official tables whose plates, wells and sites the demo renders (layout official)."""
    if not DEMO_LAYOUT_OFFICIAL:
        return {}
    return {
        "official_image_table": config["data"]["official"]["image_table"],
        "official_moa_table": config["data"]["official"]["moa_table"],
    }


def demo_layout_args():
    if not DEMO_LAYOUT_OFFICIAL:
        return ""
    return (
        "--official-image-table {input.official_image_table:q} "
        "--official-moa-table {input.official_moa_table:q} "
    )


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


DOWNLOADING = SOURCE == "official" and config["data"].get("download", {}).get("enabled", False)


# ------------------------------------------------------------------ evaluation inputs
EVAL_SETTINGS = config["evaluate"]
# what an extraction depends on: the crop mode's own keys, embedding, crop_median
EXTRACT_SETTINGS = cfg_crops.extraction_settings(EVAL_SETTINGS)
# what scoring a feature table depends on: the same for the runs and the baselines
SCORING_SETTINGS = cfg.scoring_settings(config)


def pretrained_model_arg(wildcards):
    """Epoch 0 sees images as this architecture's training does (checkpoints record it); with
    random init it is the network the training of its seed starts from."""
    seed = int(wildcards.seed) if wildcards.get("seed") is not None else None
    settings = arch_train(wildcards.arch, seed)
    # several arguments in one param, so each value is shell-quoted here (paths may hold
    # spaces, quotes or `$(...)`)
    return (
        f"--weights {shlex.quote(weights_arg(wildcards))} --init-seed {settings['seed']} "
        f"--input-standardization {shlex.quote(settings['input_standardization'])} "
        f"--interpolation {shlex.quote(settings['interpolation'])}"
    )


def extract_resources(n_epochs):
    """An extraction job's resources (rules/evaluate.smk: group_slot = one member at a time)."""
    return dict(
        gpu=lambda w: 1 if gpus(w.arch) else 0,
        mem_mb=lambda w: cluster.extract_mem_mb(config, w.arch),
        runtime=cluster.extract_runtime(config, n_epochs),
        group_slot=1,
        # Speed, not results: as resources (no rerun trigger looks at them, unlike params) a
        # change reruns no extraction; `--set-resources <rule>:extract_batch_size=N` (or auto)
        # overrides them per run. Executors ignore resource names they do not know.
        extract_batch_size=EVAL_SETTINGS["batch_size"],
        extract_workers=EVAL_SETTINGS["num_workers"],
    )


def all_metrics():
    """metrics.json of every evaluation: train.seed's runs, then the other seeds'."""
    return [
        path
        for arch in ARCHS
        for path in expand(METRICS, arch=arch, channel=EVAL_CHANNELS, epoch=eval_epochs(arch))
    ] + [
        path
        for arch in SEEDED_ARCHS
        for path in expand(
            METRICS_SEED,
            arch=arch,
            channel=EVAL_CHANNELS,
            seed=extra_seeds(arch),
            epoch=seed_eval_epochs(arch),
        )
    ]


def all_predictions():
    """predictions.csv beside every metrics.json (the summary's error bars read them)."""
    return [os.path.join(os.path.dirname(path), "predictions.csv") for path in all_metrics()]


def all_train_logs():
    return expand(TRAIN_LOG, arch=ARCHS, channel=TRAIN_CHANNELS) + [
        path
        for arch in SEEDED_ARCHS
        for path in expand(
            TRAIN_LOG_SEED, arch=arch, channel=TRAIN_CHANNELS, seed=extra_seeds(arch)
        )
    ]


def last_epoch_tag(arch):
    return train_epochs(arch)[-1]


def mapped_profiles():
    """The summary's t-SNE maps: epoch 0 (when evaluated) and the last epoch of every run of
    train.seed (the first training seed: the maps leave the other seeds out)."""
    return [
        path
        for arch in ARCHS
        for epoch in [epoch_tag(0)] * config["evaluate"]["pretrained_baseline"]
        + [last_epoch_tag(arch)]
        for path in expand(PROFILES, arch=arch, channel=EVAL_CHANNELS, epoch=epoch)
    ]


def last_checkpoint_metas():
    """The last epoch's checkpoint JSON of every (arch, channel)'s first training seed (its
    train settings: the weak label, which the other seeds share)."""
    return [
        path
        for arch in ARCHS
        for path in expand(
            CHECKPOINT_META, arch=arch, channel=TRAIN_CHANNELS, epoch=last_epoch_tag(arch)
        )
    ]


def all_attention_maps():
    """Attention maps of the first training seed's runs (rule attention_maps)."""
    return expand(ATTENTION_MAPS, arch=ATTENTION_ARCHS, channel=TRAIN_CHANNELS)


# ------------------------------------------------------------------ baselines, report
BASELINES = {entry["name"]: entry for entry in cfg.baselines(config)}
BASELINE_DIR = out("eval", "baselines", "{baseline}")
BASELINE_METRICS = os.path.join(BASELINE_DIR, "metrics.json")
HANDCRAFTED_PROFILES = out("baselines", "handcrafted_profiles.csv")


def all_baseline_metrics():
    return expand(BASELINE_METRICS, baseline=list(BASELINES))


def all_baseline_predictions():
    return expand(os.path.join(BASELINE_DIR, "predictions.csv"), baseline=list(BASELINES))


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
