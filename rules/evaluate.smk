# Evaluation stage: features per (arch, channel, epoch) -> TVN -> profiles -> NSC / NSCB / mAP.
EVAL_SETTINGS = config["evaluate"]


def extract_inputs(wildcards):
    """Epoch 0 is the pretrained backbone; other epochs read the training checkpoint."""
    if int(wildcards.epoch) == 0:
        return weights_input(wildcards)
    return [CHECKPOINT.format(**wildcards), CHECKPOINT_META.format(**wildcards)]


def extract_model_arg(wildcards):
    if int(wildcards.epoch) == 0:
        return f"--weights {weights_arg(wildcards)}"
    return "--checkpoint " + CHECKPOINT.format(**wildcards)


rule extract_features:
    output:
        FEATURES,
    input:
        cache=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
        model=extract_inputs,
        code=code("evaluate", "train", "data"),
    params:
        settings=as_json({k: EVAL_SETTINGS[k] for k in ("crop_grid", "input_size", "embedding", "batch_size", "num_workers")}),
        model_kwargs=lambda w: as_json(arch_entry(w.arch)["model_kwargs"]),
        model=extract_model_arg,
    wildcard_constraints:
        channel="|".join(TRAIN_CHANNELS),
    threads: 4
    resources:
        gpu=lambda w: 1 if gpus(w.arch) else 0,
        mem_mb=32000,
        runtime=RESOURCES["extract_runtime_min"],
    log:
        out("logs", "extract", "{arch}", "{channel}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "extract", "{arch}", "{channel}", "epoch_{epoch}.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.evaluate.extract --arch {wildcards.arch:q} "
        "--channel {wildcards.channel} --cache-dir {CACHE_DIR:q} {params.model} "
        "--model-kwargs {params.model_kwargs:q} --settings {params.settings:q} "
        "--epoch {wildcards.epoch} --out {output:q} > {log} 2>&1"


rule combine_channel_features:
    # WS-DINO's "combined" profile: the per-channel features of each image side by side.
    output:
        out("features", "{arch}", "combined", "epoch_{epoch}.parquet"),
    input:
        features=expand(FEATURES, channel=DATA_CHANNELS, allow_missing=True),
        code=code("evaluate"),
    log:
        out("logs", "combine", "{arch}", "epoch_{epoch}.log"),
    shell:
        "{PYTHON} -m workflow_scripts.evaluate.combine --inputs {input.features:q} "
        "--names {DATA_CHANNELS} --out {output:q} > {log} 2>&1"


rule evaluate_features:
    output:
        metrics=METRICS,
        predictions=os.path.join(EVAL_DIR, "predictions.csv"),
        confusion=os.path.join(EVAL_DIR, "confusion.csv"),
    input:
        features=FEATURES,
        code=code("evaluate"),
    params:
        settings=as_json({k: EVAL_SETTINGS[k] for k in ("tvn", "aggregation", "map")}),
        out_dir=EVAL_DIR,
    threads: 2
    log:
        out("logs", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.evaluate.evaluate --features {input.features:q} "
        "--settings {params.settings:q} --out-dir {params.out_dir:q} "
        "--label {wildcards.arch}/{wildcards.channel}/{wildcards.epoch} > {log} 2>&1"
