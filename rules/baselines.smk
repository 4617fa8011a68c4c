# External baselines: profile tables (CellProfiler wells, another model's embeddings) scored by
# the same evaluation CLI and settings as the DINOv3 runs, and shown beside them in the summary.
# (BASELINES and the paths: rules/common.smk)


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    evaluate_baseline,
    handcrafted_profiles,


rule evaluate_baseline:
    input:
        table=lambda w: BASELINES[w.baseline]["table"],
        rerun=RERUN_STAMPS["baseline"],
        code=code("evaluate.evaluate"),
    output:
        metrics=BASELINE_METRICS,
        predictions=os.path.join(BASELINE_DIR, "predictions.csv"),
        confusion=os.path.join(BASELINE_DIR, "confusion.csv"),
        profiles=os.path.join(BASELINE_DIR, "profiles.parquet"),
    log:
        out("logs", "evaluate_baseline", "{baseline}.log"),
    benchmark:
        out("benchmarks", "evaluate_baseline", "{baseline}.tsv")
    wildcard_constraints:
        baseline="|".join(re.escape(name) for name in BASELINES) or "(?!)",
    conda:
        "../envs/workflow.yaml"
    threads: 2
    params:
        settings=as_json(SCORING_SETTINGS),
        feature_columns=lambda w: BASELINES[w.baseline]["feature_columns"],
        metadata_map=metadata_map_arg,
        out_dir=lambda w, output: os.path.dirname(output.metrics),
    shell:
        "python -m workflow_scripts.evaluate.evaluate --features {input.table:q} "
        "--feature-columns {params.feature_columns:q} --metadata-map {params.metadata_map:q} "
        "--settings {params.settings:q} --out-dir {params.out_dir:q} "
        "--label {wildcards.baseline:q}/baseline/0000 > {log:q} 2>&1"


rule handcrafted_profiles:
    input:
        cache=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
        code=code("evaluate.handcrafted"),
    # the demo's baseline: intensity and texture statistics of the cached images
    output:
        HANDCRAFTED_PROFILES,
    log:
        out("logs", "handcrafted_profiles.log"),
    benchmark:
        out("benchmarks", "handcrafted_profiles.tsv")
    conda:
        "../envs/workflow.yaml"
    params:
        cache_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "python -m workflow_scripts.evaluate.handcrafted --cache-dir {params.cache_dir:q} "
        "--out {output:q} > {log:q} 2>&1"
