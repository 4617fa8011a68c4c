# Summary across every (architecture, channel, epoch): table, plots, best epochs, HTML report.


def all_metrics():
    return [
        path
        for arch in ARCHS
        for path in expand(METRICS, arch=arch, channel=EVAL_CHANNELS, epoch=eval_epochs(arch))
    ]


rule summarize:
    output:
        table=SUMMARY_TABLE,
        report=SUMMARY_REPORT,
    input:
        metrics=all_metrics(),
        validation=VALIDATION_REPORT,
        code=code("evaluate"),
    params:
        out_dir=SUMMARY_DIR,
    log:
        os.path.join(LOGS, "summarize.log"),
    benchmark:
        os.path.join(BENCH, "summarize.tsv")
    shell:
        "{PYTHON} -m workflow_scripts.evaluate.summary --metrics {input.metrics:q} "
        "--validation-report {input.validation:q} --out-dir {params.out_dir:q} > {log} 2>&1"
