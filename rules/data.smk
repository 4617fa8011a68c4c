# Data stage: (demo | download) -> prepare metadata -> validate -> illumination-corrected image cache.
SOURCE = config["data"]["source"]
DEMO_DIR = out("demo_data")


def source_tables():
    """The two tables the prepare rule reads, per data source."""
    if SOURCE == "demo":
        return {
            "image_table": os.path.join(DEMO_DIR, "BBBC021_v1_image.csv"),
            "moa_table": os.path.join(DEMO_DIR, "BBBC021_v1_moa.csv"),
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
    root = DEMO_DIR + "/images" if SOURCE == "demo" else config["data"]["official"]["image_root"]
    return f"--source official --image-table {{input.image_table:q}} --moa-table {{input.moa_table:q}} --image-root {root!r}"


# Fail at planning time, naming the key, when the real data is not where config.yaml says.
if SOURCE != "demo" and not config["data"].get("download", {}).get("enabled", False):
    _missing = {k: v for k, v in source_tables().items() if not os.path.exists(v)}
    if SOURCE == "official" and not os.path.isdir(config["data"]["official"]["image_root"]):
        _missing["image_root"] = config["data"]["official"]["image_root"]
    if _missing:
        raise WorkflowError(
            "data not found: "
            + "; ".join(f"config key 'data.{SOURCE}.{k}' -> {v}" for k, v in _missing.items())
            + ". Edit config.yaml (or run the demo: --configfile config/demo.yaml)."
        )


if SOURCE == "demo":

    rule generate_demo_data:
        output:
            image_table=os.path.join(DEMO_DIR, "BBBC021_v1_image.csv"),
            moa_table=os.path.join(DEMO_DIR, "BBBC021_v1_moa.csv"),
        input:
            code=code("data"),
        params:
            settings=as_json(config["data"].get("demo", {})),
            shape=config["data"]["image_shape"],
        log:
            os.path.join(LOGS, "generate_demo_data.log"),
        benchmark:
            os.path.join(BENCH, "generate_demo_data.tsv")
        shell:
            "{PYTHON} -m workflow_scripts.data.demo --settings {params.settings:q} "
            "--image-shape {params.shape} --out-dir {DEMO_DIR:q} > {log} 2>&1"


rule prepare_metadata:
    output:
        PREPARED_TABLE,
    input:
        **source_tables(),
        code=code("data"),
    params:
        channels=DATA_CHANNELS,
    log:
        os.path.join(LOGS, "prepare_metadata.log"),
    benchmark:
        os.path.join(BENCH, "prepare_metadata.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.data.metadata " + source_args() + " "
        "--channels {params.channels} --out {output:q} > {log} 2>&1"


rule validate_images:
    output:
        table=VALIDATED_TABLE,
        report=VALIDATION_REPORT,
        report_md=VALIDATION_REPORT_MD,
    input:
        table=PREPARED_TABLE,
        code=code("data"),
    params:
        channels=DATA_CHANNELS,
        shape=config["data"]["image_shape"],
    log:
        os.path.join(LOGS, "validate_images.log"),
    benchmark:
        os.path.join(BENCH, "validate_images.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.data.validate --table {input.table:q} "
        "--channels {params.channels} --image-shape {params.shape} "
        "--out {output.table:q} --report {output.report:q} --report-md {output.report_md:q} > {log} 2>&1"


rule build_image_cache:
    output:
        table=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
    input:
        table=VALIDATED_TABLE,
        code=code("data"),
    params:
        settings=as_json(config["preprocess"]),
        channels=DATA_CHANNELS,
    threads: 4
    log:
        os.path.join(LOGS, "build_image_cache.log"),
    benchmark:
        os.path.join(BENCH, "build_image_cache.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.data.cache --table {input.table:q} "
        "--channels {params.channels} --settings {params.settings:q} "
        "--workers {threads} --out-dir {CACHE_DIR:q} > {log} 2>&1"
