# Evaluation stage: features per (arch, channel, epoch) -> TVN -> profiles -> NSC / NSCB / mAP.
rule extract_features:
    output:
        FEATURES,
    input:
        cache=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
        model=extract_inputs,
        code=code("evaluate.extract"),
    params:
        settings=as_json(EXTRACT_SETTINGS),
        model_kwargs=lambda w: as_json(arch_entry(w.arch)["model_kwargs"]),
        model=extract_model_arg,
        cache_dir=lambda w, input: os.path.dirname(input.meta),
    wildcard_constraints:
        channel="|".join(TRAIN_CHANNELS),
    threads: 4
    resources:
        gpu=lambda w: 1 if gpus(w.arch) else 0,
        mem_mb=32000,
        runtime=RESOURCES["extract_runtime_min"],
        # Speed, not results: as resources (no rerun trigger looks at them, unlike params) a
        # change reruns no extraction; `--set-resources extract_features:extract_batch_size=N`
        # overrides them per run. Executors ignore resource names they do not know.
        extract_batch_size=EVAL_SETTINGS["batch_size"],
        extract_workers=EVAL_SETTINGS["num_workers"],
    conda:
        "../envs/pytorch-cuda.yaml"
    log:
        out("logs", "extract", "{arch}", "{channel}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "extract", "{arch}", "{channel}", "epoch_{epoch}.tsv")
    shell:
        "python -m workflow_scripts.evaluate.extract --arch {wildcards.arch:q} "
        "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} {params.model} "
        "--model-kwargs {params.model_kwargs:q} --settings {params.settings:q} "
        "--batch-size {resources.extract_batch_size} --num-workers {resources.extract_workers} "
        "--epoch {wildcards.epoch} --out {output:q} > {log} 2>&1"


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    combine_channel_features,


rule combine_channel_features:
    # WS-DINO's "combined" profile: the per-channel features of each image side by side.
    output:
        out("features", "{arch}", "combined", "epoch_{epoch}.parquet"),
    input:
        features=expand(FEATURES, channel=DATA_CHANNELS, allow_missing=True),
        code=code("evaluate.combine"),
    params:
        names=DATA_CHANNELS,
    conda:
        "../envs/workflow.yaml"
    log:
        out("logs", "combine", "{arch}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "combine", "{arch}", "epoch_{epoch}.tsv")
    shell:
        "python -m workflow_scripts.evaluate.combine --inputs {input.features:q} "
        "--names {params.names} --out {output:q} > {log} 2>&1"


rule evaluate_features:
    output:
        metrics=METRICS,
        predictions=os.path.join(EVAL_DIR, "predictions.csv"),
        confusion=os.path.join(EVAL_DIR, "confusion.csv"),
    input:
        features=FEATURES,
        code=code("evaluate.evaluate"),
    params:
        settings=as_json({k: EVAL_SETTINGS[k] for k in ("tvn", "aggregation", "map")}),
        out_dir=lambda w, output: os.path.dirname(output.metrics),
    threads: 2
    conda:
        "../envs/workflow.yaml"
    log:
        out("logs", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.tsv")
    shell:
        "python -m workflow_scripts.evaluate.evaluate --features {input.features:q} "
        "--settings {params.settings:q} --out-dir {params.out_dir:q} "
        "--label {wildcards.arch}/{wildcards.channel}/{wildcards.epoch} > {log} 2>&1"
