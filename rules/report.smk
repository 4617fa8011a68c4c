# Summary across every (architecture, channel, epoch): table, plots, best epochs, HTML report.


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    summarize,


rule summarize:
    output:
        table=SUMMARY_TABLE,
        report=SUMMARY_REPORT,
    input:
        metrics=all_metrics(),
        validation=VALIDATION_REPORT,
        train_logs=expand(TRAIN_LOG, arch=ARCHS, channel=TRAIN_CHANNELS),
        code=code("evaluate.summary"),
    params:
        out_dir=lambda w, output: os.path.dirname(output.table),
    conda:
        "../envs/workflow.yaml"
    log:
        os.path.join(LOGS, "summarize.log"),
    benchmark:
        os.path.join(BENCH, "summarize.tsv")
    shell:
        "python -m workflow_scripts.evaluate.summary --metrics {input.metrics:q} "
        "--validation-report {input.validation:q} --out-dir {params.out_dir:q} "
        "--train-logs {input.train_logs:q} > {log} 2>&1"
