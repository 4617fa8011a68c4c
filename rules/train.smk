# Training stage: DINO fine-tuning, one job per (architecture, channel); outputs = evaluated epochs.


# Login node: needs internet, which GPU nodes may not have (SLURM profile).
localrules:
    fetch_weights,


rule fetch_weights:
    # Login node (internet) only: GPU jobs then read the local file, offline.
    output:
        os.path.join(config["weights_dir"], "{arch}.safetensors"),
    input:
        code=code("train.fetch_weights"),
    conda:
        "../envs/pytorch-cuda.yaml"
    log:
        os.path.join(LOGS, "fetch_weights", "{arch}.log"),
    benchmark:
        os.path.join(BENCH, "fetch_weights", "{arch}.tsv")
    shell:
        "python -m workflow_scripts.train.fetch_weights --arch {wildcards.arch:q} "
        "--out {output:q} > {log} 2>&1"


# One rule per architecture: its epoch list (an output list) may differ from the others', and
# its params carry only its own settings, so editing one architecture retrains only that one.
for _arch in ARCHS:
    _slug = re.sub(r"\W", "_", _arch)
    _n_gpus = gpus(_arch)

    rule:
        name:
            f"train_{_slug}"
        output:
            checkpoints=expand(CHECKPOINT, arch=_arch, epoch=train_epochs(_arch), allow_missing=True),
            metas=expand(CHECKPOINT_META, arch=_arch, epoch=train_epochs(_arch), allow_missing=True),
            log_jsonl=expand(TRAIN_LOG, arch=_arch, allow_missing=True),
        input:
            cache=CACHE_TABLE,
            meta=CACHE_META,
            arrays=CACHE_ARRAYS,
            weights=weights_inputs(_arch),
            code=code("train.cli"),
        params:
            arch=_arch,
            settings=as_json(arch_train(_arch)),
            model_kwargs=as_json(arch_entry(_arch)["model_kwargs"]),
            weights=weights_file(_arch) or "none",
            launcher=train_launcher(_arch),
            cache_dir=lambda w, input: os.path.dirname(input.meta),
            out_dir=lambda w, output: os.path.dirname(output.log_jsonl[0]),
            resume_dir=lambda w, a=_arch: out("resume", a, w.channel),
        wildcard_constraints:
            channel="|".join(TRAIN_CHANNELS),
        # CPU runs (demo, tests): one thread per job beats oversubscribed cores for small models
        threads: _n_gpus * RESOURCES["cpus_per_gpu"] if _n_gpus else 1
        resources:
            gpu=_n_gpus,
            tasks_per_gpu=0,
            mem_mb=max(1, _n_gpus) * RESOURCES["mem_mb_per_gpu"] if _n_gpus else 8000,
            runtime=RESOURCES["train_runtime_min"],
        conda:
            "../envs/pytorch-cuda.yaml"
        log:
            out("logs", "train", _arch, "{channel}.log"),
        benchmark:
            out("benchmarks", "train", _arch, "{channel}.tsv")
        shell:
            "{params.launcher} -m workflow_scripts.train.cli --arch {params.arch:q} "
            "--channel {wildcards.channel} --cache-dir {params.cache_dir:q} "
            "--weights {params.weights:q} --model-kwargs {params.model_kwargs:q} "
            "--settings {params.settings:q} --out-dir {params.out_dir:q} "
            "--resume-dir {params.resume_dir:q} > {log} 2>&1"
