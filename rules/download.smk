# Optional acquisition of the real BBBC021 (config data.download.enabled, source official). Needs
# internet, so these rules run on the submitting host (e.g. a login node). Each plate zip is
# fetched, resumably, and unpacked into data.official.image_root/{week}/{plate}/; the two tables
# are written last, into {output_dir}/download/ (source_tables(); data.official.image_table and
# moa_table are then not read), and depend on every selected plate, so prepare_metadata, which
# reads the tables, starts only when all images are in place.
DOWNLOAD = config["data"].get("download", {})

if DOWNLOAD.get("enabled", False) and SOURCE == "official":
    from workflow_scripts.data import download as bbbc021_download

    DOWNLOAD_PLATES = bbbc021_download.plates_setting(DOWNLOAD.get("plates", "all"))
    DOWNLOAD_MARKER = os.path.join(image_root(), bbbc021_download.DOWNLOAD_DIR, "{plate}.done")

    localrules:
        download_plate,
        download_tables,

    rule download_plate:
        output:
            DOWNLOAD_MARKER,
        log:
            os.path.join(LOGS, "download", "{plate}.log"),
        benchmark:
            os.path.join(BENCH, "download", "{plate}.tsv")
        wildcard_constraints:
            plate=r"Week\d+_\d+",
        conda:
            "../envs/workflow.yaml"
        params:
            base_url=DOWNLOAD["base_url"],
            image_root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
        shell:
            "python -m workflow_scripts.data.download plate --base-url {params.base_url:q} "
            "--plate {wildcards.plate} --image-root {params.image_root:q} --marker {output:q} "
            "> {log:q} 2>&1"

    rule download_tables:
        input:
            expand(DOWNLOAD_MARKER, plate=DOWNLOAD_PLATES),
        output:
            **source_tables(),
        log:
            os.path.join(LOGS, "download", "tables.log"),
        benchmark:
            os.path.join(BENCH, "download", "tables.tsv")
        conda:
            "../envs/workflow.yaml"
        params:
            image_table_url=DOWNLOAD["image_table_url"],
            moa_table_url=DOWNLOAD["moa_table_url"],
            # a subset: the image table keeps only the rows of the downloaded plates
            plates=(
                ""
                if DOWNLOAD.get("plates", "all") == "all"
                else "--plates " + " ".join(DOWNLOAD_PLATES)
            ),
        shell:
            "python -m workflow_scripts.data.download tables "
            "--image-table-url {params.image_table_url:q} --moa-table-url {params.moa_table_url:q} "
            "--image-table {output.image_table:q} --moa-table {output.moa_table:q} {params.plates} "
            "> {log:q} 2>&1"
