# Data stage: (demo | download) -> prepare metadata -> validate -> illumination-corrected image cache.

if SOURCE == "demo":

    # Seconds of CPU work: not worth a SLURM job (SLURM profile).
    localrules:
        generate_demo_data,

    rule generate_demo_data:
        output:
            image_table=os.path.join(DEMO_DIR, "BBBC021_v1_image.csv"),
            moa_table=os.path.join(DEMO_DIR, "BBBC021_v1_moa.csv"),
        input:
            code=code("data.demo"),
        params:
            settings=as_json(config["data"].get("demo", {})),
            shape=config["data"]["image_shape"],
            out_dir=lambda w, output: os.path.dirname(output.image_table),
        threads: 2
        conda:
            "../envs/workflow.yaml"
        log:
            os.path.join(LOGS, "generate_demo_data.log"),
        benchmark:
            os.path.join(BENCH, "generate_demo_data.tsv")
        shell:
            "python -m workflow_scripts.data.demo --settings {params.settings:q} "
            "--image-shape {params.shape} --workers {threads} --out-dir {params.out_dir:q} "
            "> {log:q} 2>&1"


# Seconds of CPU work each: not worth a SLURM job (SLURM profile).
localrules:
    prepare_metadata,


rule prepare_metadata:
    output:
        table=PREPARED_TABLE,
        manifest=RAW_MANIFEST,
    input:
        **source_tables(),
        code=sorted(set(code("data.metadata") + code("data.manifest"))),
    params:
        channels=DATA_CHANNELS,
        image_root=image_root(),
    conda:
        "../envs/workflow.yaml"
    log:
        os.path.join(LOGS, "prepare_metadata.log"),
    benchmark:
        os.path.join(BENCH, "prepare_metadata.tsv")
    shell:
        f"python -m workflow_scripts.data.metadata {source_args()} "
        "--channels {params.channels:q} --out {output.table:q} > {log:q} 2>&1 && "
        "python -m workflow_scripts.data.manifest --table {output.table:q} "
        "--out {output.manifest:q} >> {log:q} 2>&1"


rule validate_images:
    output:
        table=VALIDATED_TABLE,
        report=VALIDATION_REPORT,
        report_md=VALIDATION_REPORT_MD,
    input:
        table=PREPARED_TABLE,
        manifest=RAW_MANIFEST,  # changed raw images rerun validation and everything after it
        code=code("data.validate"),
    params:
        channels=DATA_CHANNELS,
        shape=config["data"]["image_shape"],
    conda:
        "../envs/workflow.yaml"
    log:
        os.path.join(LOGS, "validate_images.log"),
    benchmark:
        os.path.join(BENCH, "validate_images.tsv")
    shell:
        "python -m workflow_scripts.data.validate --table {input.table:q} "
        "--channels {params.channels:q} --image-shape {params.shape} "
        "--out {output.table:q} --report {output.report:q} --report-md {output.report_md:q} "
        "> {log:q} 2>&1"


rule build_image_cache:
    output:
        table=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
    input:
        table=VALIDATED_TABLE,
        manifest=RAW_MANIFEST,
        code=code("data.cache"),
    params:
        settings=as_json(config["preprocess"]),
        channels=DATA_CHANNELS,
        out_dir=lambda w, output: os.path.dirname(output.meta),
    threads: 4
    conda:
        "../envs/workflow.yaml"
    log:
        os.path.join(LOGS, "build_image_cache.log"),
    benchmark:
        os.path.join(BENCH, "build_image_cache.tsv")
    shell:
        "python -m workflow_scripts.data.cache --table {input.table:q} "
        "--channels {params.channels:q} --settings {params.settings:q} "
        "--workers {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"
