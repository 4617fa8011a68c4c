# Evaluation stage: features per (arch, channel, epoch) -> TVN -> profiles -> NSC / NSCB / mAP.
#
# Cluster job economy (slurm/README.md): the extractions of one (arch, channel) form one group
# job: epoch 0 and one extraction of every trained epoch, which loads libraries, CUDA and the
# cache once; the evaluations of one (arch, channel) form another. Every epoch stays a declared
# output and a group holds only the jobs that must run, so evaluations rerun per epoch.
# `group_slot` (a resource scoped per group by the profile, 1 slot) runs a group's members one
# after another: the group asks for one member's GPU, CPUs and memory and the sum of their
# runtimes. Groups matter only on a cluster (local runs ignore them).
EXTRACT_GROUP = "extract_{arch}_{channel}"
EVALUATE_GROUP = "evaluate_{arch}_{channel}"
# train.seeds: another seed's extractions and evaluations (rules *_seeds, files under seed_S/)
# join the same two groups, so its (arch, channel) still makes one extraction and one evaluation
# submission; only its training jobs are submissions of their own.
EXTRACT_PRETRAINED_SHELL = (
    "python -m workflow_scripts.evaluate.extract --arch {wildcards.arch:q} "
    "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} {params.model} "
    "--model-kwargs {params.model_kwargs:q} --settings {params.settings:q} "
    "--batch-size {resources.extract_batch_size:q} --num-workers {resources.extract_workers} "
    "--epoch {params.epochs} --out {output:q} > {log:q} 2>&1"
)
EXTRACT_TRAINED_SHELL = (
    "python -m workflow_scripts.evaluate.extract --arch {wildcards.arch:q} "
    "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} "
    "--checkpoint {input.checkpoints:q} "
    "--model-kwargs {params.model_kwargs:q} --settings {params.settings:q} "
    "--batch-size {resources.extract_batch_size:q} --num-workers {resources.extract_workers} "
    "--epoch {params.epochs} --out {output:q} > {log:q} 2>&1"
)
COMBINE_SHELL = (
    "python -m workflow_scripts.evaluate.combine --inputs {input.features:q} "
    "--names {params.names:q} --out {output:q} > {log:q} 2>&1"
)
# {label} is filled per rule (str.format keeps the doubled braces of the other fields single)
EVALUATE_SHELL = (
    "python -m workflow_scripts.evaluate.evaluate --features {{input.features:q}} "
    "--settings {{params.settings:q}} --out-dir {{params.out_dir:q}} "
    "--label {label} > {{log:q}} 2>&1"
)


rule extract_pretrained:
    input:
        cache=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
        model=lambda w: weights_inputs(w.arch),
        rerun=RERUN_STAMPS["extract"],
        code=code("evaluate.extract"),
    # Epoch 0: the backbone before fine-tuning; it does not wait for (or rerun with) training.
    output:
        FEATURES.replace("{epoch}", epoch_tag(0)),
    log:
        out("logs", "extract", "{arch}", "{channel}", "epoch_0000.log"),
    benchmark:
        out("benchmarks", "extract", "{arch}", "{channel}", "epoch_0000.tsv")
    wildcard_constraints:
        channel="|".join(TRAIN_CHANNELS),
    group:
        EXTRACT_GROUP
    conda:
        "../envs/pytorch-cuda.yaml"
    threads: 4
    resources:
        **extract_resources(1),
    params:
        settings=as_json(EXTRACT_SETTINGS),
        model_kwargs=lambda w: as_json(arch_entry(w.arch)["model_kwargs"]),
        model=pretrained_model_arg,
        epochs=0,
        cache_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        EXTRACT_PRETRAINED_SHELL


# One rule per architecture (as training): its output list is that architecture's trained epochs.
for _arch in ARCHS:
    _slug = re.sub(r"\W", "_", _arch)
    _epochs = train_epochs(_arch)

    rule:
        name:
            f"extract_trained_{_slug}"
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            checkpoints=expand(CHECKPOINT, epoch=_epochs, allow_missing=True),
            metas=expand(CHECKPOINT_META, epoch=_epochs, allow_missing=True),
            rerun=RERUN_STAMPS["extract"],
            code=code("evaluate.extract"),
        output:
            expand(FEATURES, epoch=_epochs, allow_missing=True),
        log:
            out("logs", "extract", "{arch}", "{channel}", "trained_epochs.log"),
        benchmark:
            out("benchmarks", "extract", "{arch}", "{channel}", "trained_epochs.tsv")
        wildcard_constraints:
            arch=re.escape(_arch),
            channel="|".join(TRAIN_CHANNELS),
        group:
            EXTRACT_GROUP
        conda:
            "../envs/pytorch-cuda.yaml"
        threads: 4
        resources:
            **extract_resources(len(_epochs)),
        params:
            settings=as_json(EXTRACT_SETTINGS),
            model_kwargs=as_json(arch_entry(_arch)["model_kwargs"]),
            epochs=" ".join(str(int(e)) for e in _epochs),
            cache_dir=lambda w, input: os.path.dirname(input.meta),
        shell:
            EXTRACT_TRAINED_SHELL

    if not extra_seeds(_arch):
        continue

    rule:
        name:
            f"extract_trained_{_slug}_seeds"
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            checkpoints=expand(CHECKPOINT_SEED, epoch=_epochs, allow_missing=True),
            metas=expand(CHECKPOINT_META_SEED, epoch=_epochs, allow_missing=True),
            rerun=RERUN_STAMPS["extract_seed"],
            code=code("evaluate.extract"),
        output:
            expand(FEATURES_SEED, epoch=_epochs, allow_missing=True),
        log:
            out("logs", "extract", "{arch}", "{channel}", SEED_DIR, "trained_epochs.log"),
        benchmark:
            out("benchmarks", "extract", "{arch}", "{channel}", SEED_DIR, "trained_epochs.tsv")
        wildcard_constraints:
            arch=re.escape(_arch),
            channel="|".join(TRAIN_CHANNELS),
            seed="|".join(str(s) for s in extra_seeds(_arch)),
        group:
            EXTRACT_GROUP
        conda:
            "../envs/pytorch-cuda.yaml"
        threads: 4
        resources:
            **extract_resources(len(_epochs)),
        params:
            settings=as_json(EXTRACT_SETTINGS),
            model_kwargs=as_json(arch_entry(_arch)["model_kwargs"]),
            epochs=" ".join(str(int(e)) for e in _epochs),
            cache_dir=lambda w, input: os.path.dirname(input.meta),
        shell:
            EXTRACT_TRAINED_SHELL


# Epoch 0 of another seed: only with random init (weights: none), where the seed makes another
# network; pretrained weights are one backbone for every seed, extracted once (rule above).
RANDOM_INIT_SEEDED_ARCHS = [a for a in SEEDED_ARCHS if weights_file(a) is None]
if RANDOM_INIT_SEEDED_ARCHS:

    rule extract_pretrained_seeds:
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            rerun=RERUN_STAMPS["extract_seed"],
            code=code("evaluate.extract"),
        output:
            FEATURES_SEED.replace("{epoch}", epoch_tag(0)),
        log:
            out("logs", "extract", "{arch}", "{channel}", SEED_DIR, "epoch_0000.log"),
        benchmark:
            out("benchmarks", "extract", "{arch}", "{channel}", SEED_DIR, "epoch_0000.tsv")
        wildcard_constraints:
            arch="|".join(re.escape(a) for a in RANDOM_INIT_SEEDED_ARCHS),
            channel="|".join(TRAIN_CHANNELS),
        group:
            EXTRACT_GROUP
        conda:
            "../envs/pytorch-cuda.yaml"
        threads: 4
        resources:
            **extract_resources(1),
        params:
            settings=as_json(EXTRACT_SETTINGS),
            model_kwargs=lambda w: as_json(arch_entry(w.arch)["model_kwargs"]),
            model=pretrained_model_arg,
            epochs=0,
            cache_dir=lambda w, input: os.path.dirname(input.meta),
        shell:
            EXTRACT_PRETRAINED_SHELL


# Attention maps (ViTs): epoch 0 and the last epoch on a few fixed fields. A member of the
# extraction group: it runs in the (arch, channel)'s extraction job, no SLURM job of its own.
rule attention_maps:
    input:
        cache=CACHE_TABLE,
        meta=CACHE_META,
        arrays=CACHE_ARRAYS,
        model=lambda w: weights_inputs(w.arch),
        checkpoint=lambda w: CHECKPOINT.format(
            arch=w.arch, channel=w.channel, epoch=last_epoch_tag(w.arch)
        ),
        checkpoint_meta=lambda w: CHECKPOINT_META.format(
            arch=w.arch, channel=w.channel, epoch=last_epoch_tag(w.arch)
        ),
        rerun=RERUN_STAMPS["attention"],
        code=code("evaluate.attention"),
    output:
        ATTENTION_MAPS,
    log:
        out("logs", "attention", "{arch}", "{channel}.log"),
    benchmark:
        out("benchmarks", "attention", "{arch}", "{channel}.tsv")
    wildcard_constraints:
        arch="|".join(re.escape(a) for a in ATTENTION_ARCHS) or "(?!)",
        channel="|".join(TRAIN_CHANNELS),
    group:
        EXTRACT_GROUP
    conda:
        "../envs/pytorch-cuda.yaml"
    threads: 4
    resources:
        # start-up + one epoch's share of the group's runtime: two forward passes per field
        **extract_resources(1),
    params:
        model_kwargs=lambda w: as_json(arch_entry(w.arch)["model_kwargs"]),
        model=pretrained_model_arg,
        cache_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "python -m workflow_scripts.evaluate.attention --arch {wildcards.arch:q} "
        "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} {params.model} "
        "--checkpoint {input.checkpoint:q} --model-kwargs {params.model_kwargs:q} "
        "--out {output:q} > {log:q} 2>&1"


# Seconds of CPU work: not worth a SLURM job (SLURM profile).
localrules:
    combine_channel_features,


rule combine_channel_features:
    input:
        features=expand(FEATURES, channel=DATA_CHANNELS, allow_missing=True),
        rerun=RERUN_STAMPS["extract"].replace("{channel}", cfg.COMBINED),
        code=code("evaluate.combine"),
    # WS-DINO's "combined" profile: the per-channel features of each image side by side.
    output:
        out("features", "{arch}", "combined", "epoch_{epoch}.parquet"),
    log:
        out("logs", "combine", "{arch}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "combine", "{arch}", "epoch_{epoch}.tsv")
    conda:
        "../envs/workflow.yaml"
    params:
        names=DATA_CHANNELS,
    shell:
        COMBINE_SHELL


rule evaluate_features:
    input:
        features=FEATURES,
        rerun=RERUN_STAMPS["evaluate"],
        code=code("evaluate.evaluate"),
    output:
        metrics=METRICS,
        predictions=os.path.join(EVAL_DIR, "predictions.csv"),
        confusion=os.path.join(EVAL_DIR, "confusion.csv"),
        profiles=PROFILES,
    log:
        out("logs", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.log"),
    benchmark:
        out("benchmarks", "evaluate", "{arch}", "{channel}", "epoch_{epoch}.tsv")
    group:
        EVALUATE_GROUP
    conda:
        "../envs/workflow.yaml"
    threads: 2
    resources:
        group_slot=1,
    params:
        settings=as_json(SCORING_SETTINGS),
        out_dir=lambda w, output: os.path.dirname(output.metrics),
    shell:
        EVALUATE_SHELL.format(label="{wildcards.arch}/{wildcards.channel}/{wildcards.epoch}")


# Another seed's combined features and evaluations (files under seed_S/; the same groups).
if SEEDED_ARCHS:

    localrules:
        combine_channel_features_seeds,

    rule combine_channel_features_seeds:
        input:
            features=expand(FEATURES_SEED, channel=DATA_CHANNELS, allow_missing=True),
            rerun=RERUN_STAMPS["extract_seed"].replace("{channel}", cfg.COMBINED),
            code=code("evaluate.combine"),
        output:
            out("features", "{arch}", "combined", SEED_DIR, "epoch_{epoch}.parquet"),
        log:
            out("logs", "combine", "{arch}", SEED_DIR, "epoch_{epoch}.log"),
        benchmark:
            out("benchmarks", "combine", "{arch}", SEED_DIR, "epoch_{epoch}.tsv")
        wildcard_constraints:
            arch="|".join(re.escape(a) for a in SEEDED_ARCHS),
        conda:
            "../envs/workflow.yaml"
        params:
            names=DATA_CHANNELS,
        shell:
            COMBINE_SHELL

    rule evaluate_features_seeds:
        input:
            features=FEATURES_SEED,
            rerun=RERUN_STAMPS["evaluate_seed"],
            code=code("evaluate.evaluate"),
        output:
            metrics=METRICS_SEED,
            predictions=os.path.join(EVAL_DIR_SEED, "predictions.csv"),
            confusion=os.path.join(EVAL_DIR_SEED, "confusion.csv"),
            profiles=PROFILES_SEED,
        log:
            out("logs", "evaluate", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}.log"),
        benchmark:
            out("benchmarks", "evaluate", "{arch}", "{channel}", SEED_DIR, "epoch_{epoch}.tsv")
        wildcard_constraints:
            arch="|".join(re.escape(a) for a in SEEDED_ARCHS),
        group:
            EVALUATE_GROUP
        conda:
            "../envs/workflow.yaml"
        threads: 2
        resources:
            group_slot=1,
        params:
            settings=as_json(SCORING_SETTINGS),
            out_dir=lambda w, output: os.path.dirname(output.metrics),
        shell:
            EVALUATE_SHELL.format(
                label="{wildcards.arch}/{wildcards.channel}/seed_{wildcards.seed}/{wildcards.epoch}"
            )
