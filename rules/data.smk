# Data stage: (demo | download) -> prepare metadata -> validate -> illumination-corrected image cache.
#
# Between-workflow cache (README "Sharing the data stage between experiments"): every rule here
# depends only on inputs and data/preprocess settings, never on the experiment, so each has
# `cache: "omit-software"`; with `--cache` and $SNAKEMAKE_OUTPUT_CACHE a second output_dir takes
# the outputs from the cache. Snakemake keys an entry by the rule's shell command as written, its
# params, the checksums of its source inputs (the code files) and the keys of upstream jobs, not
# by output paths: so no param here may hold an output path (it contains output_dir; folders are
# derived in the shell instead), and every output is named (a multi-output rule must name all).
# Snakemake rejects `benchmark:` in a cached rule: `workflow_scripts.timed` writes the timing as
# the last line of the log instead.

if SOURCE == "demo":

    # Seconds of CPU work: not worth a SLURM job (SLURM profile).
    localrules:
        generate_demo_data,

    rule generate_demo_data:
        input:
            **demo_layout_tables(),
            code=code("data.demo"),
        output:
            image_table=os.path.join(DEMO_DIR, "BBBC021_v1_image.csv"),
            moa_table=os.path.join(DEMO_DIR, "BBBC021_v1_moa.csv"),
            images=directory(DEMO_IMAGES),
        log:
            os.path.join(LOGS, "generate_demo_data.log"),
        cache: "omit-software"
        conda:
            "../envs/workflow.yaml"
        threads: 2
        params:
            settings=as_json(config["data"].get("demo", {})),
            shape=config["data"]["image_shape"],
        shell:
            "python -m workflow_scripts.timed python -m workflow_scripts.data.demo "
            "--settings {params.settings:q} --image-shape {params.shape} --workers {threads} "
            f"{demo_layout_args()}"
            '--out-dir "$(dirname {output.image_table:q})" > {log:q} 2>&1'


# Seconds of CPU work each: not worth a SLURM job (SLURM profile).
localrules:
    prepare_metadata,


rule prepare_metadata:
    input:
        **source_tables(),
        **source_images(),
        code=sorted(set(code("data.metadata") + code("data.manifest"))),
    output:
        table=PREPARED_TABLE,
        manifest=RAW_MANIFEST,
    log:
        os.path.join(LOGS, "prepare_metadata.log"),
    cache: "omit-software"
    conda:
        "../envs/workflow.yaml"
    params:
        **source_image_params(),
        channels=DATA_CHANNELS,
    shell:
        "python -m workflow_scripts.timed "
        f"python -m workflow_scripts.data.metadata {source_args()} "
        "--channels {params.channels:q} --out {output.table:q} > {log:q} 2>&1 && "
        "python -m workflow_scripts.data.manifest --table {output.table:q} "
        "--out {output.manifest:q} >> {log:q} 2>&1"


rule validate_images:
    input:
        table=PREPARED_TABLE,
        manifest=RAW_MANIFEST,  # changed raw images rerun validation and everything after it
        rerun=RERUN_STAMPS["validation"],
        code=code("data.validate"),
    output:
        table=VALIDATED_TABLE,
        report=VALIDATION_REPORT,
        report_md=VALIDATION_REPORT_MD,
    log:
        os.path.join(LOGS, "validate_images.log"),
    cache: "omit-software"
    conda:
        "../envs/workflow.yaml"
    params:
        channels=DATA_CHANNELS,
        shape=config["data"]["image_shape"],
    shell:
        "python -m workflow_scripts.timed python -m workflow_scripts.data.validate "
        "--table {input.table:q} "
        "--channels {params.channels:q} --image-shape {params.shape} "
        "--out {output.table:q} --report {output.report:q} --report-md {output.report_md:q} "
        "> {log:q} 2>&1"


rule build_image_cache:
    input:
        table=VALIDATED_TABLE,
        manifest=RAW_MANIFEST,
        rerun=RERUN_STAMPS["cache"],
        code=code("data.cache"),
    output:
        **{f"array_{ch}": path for ch, path in zip(DATA_CHANNELS, CACHE_ARRAYS)},
        table=CACHE_TABLE,
        meta=CACHE_META,
        # one name per array: the between-workflow cache needs every output named
    log:
        os.path.join(LOGS, "build_image_cache.log"),
    cache: "omit-software"
    conda:
        "../envs/workflow.yaml"
    threads: 4
    params:
        settings=as_json(config["preprocess"]),
        channels=DATA_CHANNELS,
    shell:
        "python -m workflow_scripts.timed python -m workflow_scripts.data.cache "
        "--table {input.table:q} --channels {params.channels:q} --settings {params.settings:q} "
        '--workers {threads} --out-dir "$(dirname {output.meta:q})" > {log:q} 2>&1'
