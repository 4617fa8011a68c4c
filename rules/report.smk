# Summary across every (architecture, channel, epoch): table, plots, best epochs, HTML report.


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    summarize,


rule summarize:
    input:
        metrics=all_metrics(),
        baselines=all_baseline_metrics(),
        validation=VALIDATION_REPORT,
        train_logs=expand(TRAIN_LOG, arch=ARCHS, channel=TRAIN_CHANNELS),
        checkpoint_metas=last_checkpoint_metas(),
        profiles=mapped_profiles(),
        attention_maps=all_attention_maps(),
        code=code("summary.cli"),
    output:
        table=report(SUMMARY_TABLE, caption="../report/summary_table.rst", category="Summary"),
        best=report(
            out("summary", "best_epochs.csv"),
            caption="../report/best_epochs.rst",
            category="Summary",
        ),
        figures=report(
            directory(out("summary", "figures")),
            patterns=["{name}.png", "{name}.jpg"],
            caption="../report/figures.rst",
            category="Figures",
        ),
        report=report(SUMMARY_REPORT, caption="../report/report_html.rst", category="Summary"),
    log:
        os.path.join(LOGS, "summarize.log"),
    benchmark:
        os.path.join(BENCH, "summarize.tsv")
    conda:
        "../envs/workflow.yaml"
    params:
        out_dir=lambda w, output: os.path.dirname(output.table),
        # epoch 0's name in the report: random init where weights: none
        weights=",".join(
            f"{a}={'none' if arch_entry(a)['weights'] == 'none' else 'pretrained'}" for a in ARCHS
        ),
        pixel_scales=as_json(pixel_scale_statements()),
    shell:
        "python -m workflow_scripts.summary.cli --metrics {input.metrics:q} "
        "--validation-report {input.validation:q} --out-dir {params.out_dir:q} "
        "--baseline-metrics {input.baselines:q} --weights {params.weights:q} "
        "--pixel-scales {params.pixel_scales:q} --train-logs {input.train_logs:q} "
        "--checkpoint-metas {input.checkpoint_metas:q} --profiles {input.profiles:q} "
        "--attention-maps {input.attention_maps:q} > {log:q} 2>&1"
