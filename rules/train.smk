# Training stage: DINO fine-tuning, one job per (architecture, channel); outputs = evaluated epochs.


# Login node: needs internet, which GPU nodes may not have (SLURM profile).
localrules:
    fetch_weights,


rule fetch_weights:
    input:
        code=code("model.fetch_weights"),
    # Login node (internet) only: GPU jobs then read the local file, offline.
    # Between-workflow cache (rules/data.smk): the key holds the command as written and the
    # params, not wildcards or paths, so the architecture must be a param (else all would share
    # one entry) and weights_dir stays out of it. No benchmark: timing in the log (timed).
    output:
        os.path.join(config["weights_dir"], "{arch}.safetensors"),
    log:
        os.path.join(LOGS, "fetch_weights", "{arch}.log"),
    cache: "omit-software"
    conda:
        "../envs/pytorch-cuda.yaml"
    params:
        arch="{arch}",
    shell:
        "python -m workflow_scripts.timed python -m workflow_scripts.model.fetch_weights "
        "--arch {params.arch:q} --out {output:q} > {log:q} 2>&1"


TRAIN_SHELL = (
    "{params.launcher} -m workflow_scripts.train.cli --arch {params.arch:q} "
    "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} "
    "--weights {params.weights:q} --model-kwargs {params.model_kwargs:q} "
    "--settings {params.settings:q} --out-dir {params.out_dir:q} "
    "--resume-dir {params.resume_dir:q} {params.strategy} --gpus {resources.gpus_per_node} "
    "--allow-cpu-fallback {resources.allow_cpu_fallback} > {log:q} 2>&1"
)


# One rule per architecture: its epoch list (an output list) may differ from the others', and
# its params carry only its own settings, so editing one architecture retrains only that one.
# train.seeds: a second rule per architecture trains its other seeds ({seed} wildcard), one job
# (one SLURM submission) per seed and channel, under seed_S/ folders.
for _arch in ARCHS:
    _slug = re.sub(r"\W", "_", _arch)

    rule:
        name:
            f"train_{_slug}"
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            weights=weights_inputs(_arch),
            rerun=RERUN_STAMPS["train"].replace("{arch}", _arch),
            code=code("train.cli"),
        output:
            checkpoints=expand(
                CHECKPOINT, arch=_arch, epoch=train_epochs(_arch), allow_missing=True
            ),
            metas=expand(CHECKPOINT_META, arch=_arch, epoch=train_epochs(_arch), allow_missing=True),
            log_jsonl=expand(TRAIN_LOG, arch=_arch, allow_missing=True),
        log:
            out("logs", "train", _arch, "{channel}.log"),
        benchmark:
            out("benchmarks", "train", _arch, "{channel}.tsv")
        wildcard_constraints:
            channel="|".join(TRAIN_CHANNELS),
        conda:
            "../envs/pytorch-cuda.yaml"
        threads: cluster.training_threads(config, _arch)
        resources:
            **cluster.training_request(config, _arch),
            # a resource, not a param: switching it reruns no training
            allow_cpu_fallback=int(config.get("allow_cpu_fallback", False)),
        params:
            arch=_arch,
            settings=as_json(arch_train(_arch)),
            model_kwargs=as_json(arch_entry(_arch)["model_kwargs"]),
            weights=weights_file(_arch) or "none",
            launcher=cluster.train_launcher(config, _arch),
            strategy=cluster.strategy_args(config, _arch),
            cache_dir=lambda w, input: os.path.dirname(input.meta),
            out_dir=lambda w, output: os.path.dirname(output.log_jsonl[0]),
            resume_dir=lambda w, a=_arch: out("resume", a, w.channel),
        shell:
            TRAIN_SHELL

    if not extra_seeds(_arch):
        continue

    rule:
        name:
            f"train_{_slug}_seeds"
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            weights=weights_inputs(_arch),
            rerun=RERUN_STAMPS["train_seed"].replace("{arch}", _arch),
            code=code("train.cli"),
        output:
            checkpoints=expand(
                CHECKPOINT_SEED, arch=_arch, epoch=train_epochs(_arch), allow_missing=True
            ),
            metas=expand(
                CHECKPOINT_META_SEED, arch=_arch, epoch=train_epochs(_arch), allow_missing=True
            ),
            log_jsonl=expand(TRAIN_LOG_SEED, arch=_arch, allow_missing=True),
        log:
            out("logs", "train", _arch, SEED_DIR, "{channel}.log"),
        benchmark:
            out("benchmarks", "train", _arch, SEED_DIR, "{channel}.tsv")
        wildcard_constraints:
            channel="|".join(TRAIN_CHANNELS),
            seed="|".join(str(s) for s in extra_seeds(_arch)),
        conda:
            "../envs/pytorch-cuda.yaml"
        threads: cluster.training_threads(config, _arch)
        resources:
            **cluster.training_request(config, _arch),
            allow_cpu_fallback=int(config.get("allow_cpu_fallback", False)),
        params:
            arch=_arch,
            settings=lambda w, a=_arch: as_json(arch_train(a, int(w.seed))),
            model_kwargs=as_json(arch_entry(_arch)["model_kwargs"]),
            weights=weights_file(_arch) or "none",
            launcher=cluster.train_launcher(config, _arch),
            strategy=cluster.strategy_args(config, _arch),
            cache_dir=lambda w, input: os.path.dirname(input.meta),
            out_dir=lambda w, output: os.path.dirname(output.log_jsonl[0]),
            resume_dir=lambda w, a=_arch: out("resume", a, w.channel, f"seed_{w.seed}"),
        shell:
            TRAIN_SHELL
