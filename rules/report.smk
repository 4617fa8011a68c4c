# Summary across every (architecture, channel, epoch): table, plots, best epochs, HTML report.


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    summarize,


rule summarize:
    output:
        table=report(SUMMARY_TABLE, caption="../report/summary_table.rst", category="Summary"),
        best=report(
            out("summary", "best_epochs.csv"),
            caption="../report/best_epochs.rst",
            category="Summary",
        ),
        figures=report(
            directory(out("summary", "figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        report=report(SUMMARY_REPORT, caption="../report/report_html.rst", category="Summary"),
    input:
        metrics=all_metrics(),
        validation=VALIDATION_REPORT,
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
        "--validation-report {input.validation:q} --out-dir {params.out_dir:q} > {log} 2>&1"
