"""What each job asks of the cluster: GPUs, tasks, launcher, memory, runtime (rules read these).

Plain arithmetic on the configuration, apart from the rules so that it is unit-tested: a
training job of `gpus` GPUs per node on `nodes` nodes runs one process per GPU, through torchrun
on one node or srun (one SLURM task per GPU) on several; `strategy: auto` trains with DDP when
the memory estimate (train/memory.py) fits resources.gpu_mem_gb, else with FSDP. Extraction jobs
ask for the configured host memory or, for a GPU architecture's large weights, more
(evaluate/extraction_plan.py). The estimates count on the meta device (torch) unless the count
cache holds them (count_cache.py), so only GPU architectures call them.
"""

from __future__ import annotations

from workflow_scripts import config as config_module
from workflow_scripts.errors import InputError

CPU_TRAINING_MEM_MB = 8000  # a CPU training job (the demo, tests)


def gpus(config: dict, arch: str) -> int:
    """GPUs per node of the architecture's training job (0: CPU)."""
    return int(config_module.architecture(config, arch)["gpus"])


def nodes(config: dict, arch: str) -> int:
    return int(config_module.architecture(config, arch).get("nodes", 1))


def world_size(config: dict, arch: str) -> int:
    return max(1, gpus(config, arch)) * nodes(config, arch)


def srun_launch(config: dict, arch: str) -> bool:
    """Several nodes (or launcher: srun): one SLURM task per GPU, started by srun inside the
    job; the executor plugin's multi-task route (resources mpi/tasks/nodes)."""
    launcher = config_module.architecture(config, arch).get("launcher", "auto")
    return launcher == "srun" or (launcher == "auto" and nodes(config, arch) > 1)


def train_launcher(config: dict, arch: str) -> str:
    """The command that starts the training processes: one per GPU through torchrun; plain
    python for CPU or a single GPU; several nodes: srun, one task per GPU (rendezvous from
    SLURM's variables: train/distributed.py)."""
    n = gpus(config, arch)
    if srun_launch(config, arch):
        m = nodes(config, arch)
        return (
            f"srun --nodes={m} --ntasks={n * m} --ntasks-per-node={n} --kill-on-bad-exit=1 python"
        )
    if n > 1:
        return f"torchrun --standalone --nproc-per-node={n}"
    return "python"


def training_strategy(config: dict, arch: str) -> str:
    """ddp or fsdp for this architecture's training job. CPU jobs (gpus 0) are not planned:
    `auto` is DDP there (a single process unless launched otherwise)."""
    entry = config_module.architecture(config, arch)
    requested = entry.get("strategy", "auto")
    if requested != "auto":
        return requested
    if gpus(config, arch) == 0:
        return "ddp"
    from workflow_scripts.train.memory import plan_architecture  # torch unless cached

    return plan_architecture(config, arch).strategy


def strategy_args(config: dict, arch: str) -> str:
    """The train CLI's strategy options."""
    args = f"--strategy {training_strategy(config, arch)}"
    if config_module.architecture(config, arch).get("activation_checkpointing", False):
        args += " --activation-checkpointing"
    return args


def check_fits(config: dict) -> None:
    """InputError, with the numbers, for the first GPU architecture that cannot fit."""
    for index, entry in enumerate(config["architectures"]):
        if int(entry.get("gpus", 1)) == 0:
            continue
        from workflow_scripts.train.memory import plan_architecture

        plan = plan_architecture(config, entry["name"])
        if not plan.fits:
            raise InputError(
                f"config key 'architectures.{index}' ({plan.arch}, {plan.params_m} M "
                f"parameters): needs about {plan.chosen_gb:.1f} GB per GPU with {plan.strategy} "
                f"over {plan.world_size} GPU(s) (ddp {plan.ddp_gb:.1f} GB, fsdp "
                f"{plan.fsdp_gb:.1f} GB, of which activations {plan.activations_gb:.1f} GB); "
                f"resources.gpu_mem_gb is {plan.gpu_mem_gb:g}. Add gpus or nodes, set "
                f"activation_checkpointing: true, or lower train.batch_size_per_gpu"
            )


def training_request(config: dict, arch: str) -> dict:
    """The training rule's SLURM resources: several tasks (srun) take the executor plugin's
    multi-task route with GPUs as `--gres=gpu:G`, which SLURM counts per node (`--gpus` counts
    per job and may put them all on one node); otherwise `gpu: N`."""
    n, res = gpus(config, arch), config["resources"]
    if srun_launch(config, arch):
        request = dict(
            mpi="srun",
            tasks=n * nodes(config, arch),
            nodes=nodes(config, arch),
            cpus_per_task=res["cpus_per_gpu"],
            gres=f"gpu:{n}",
        )
    else:
        request = dict(gpu=n)
    return dict(
        **request,
        gpus_per_node=n,
        tasks_per_gpu=0,
        mem_mb=n * res["mem_mb_per_gpu"] if n else CPU_TRAINING_MEM_MB,
        runtime=res["train_runtime_min"],
    )


def training_threads(config: dict, arch: str) -> int:
    """CPU runs (demo, tests): one thread per job beats oversubscribed cores for small models."""
    n = gpus(config, arch)
    return n * config["resources"]["cpus_per_gpu"] if n else 1


def extract_runtime(config: dict, n_epochs: int) -> int:
    """Minutes for one extraction job of n epochs: start-up, then each epoch's pass."""
    res = config["resources"]
    return res["extract_runtime_min"] + n_epochs * res["extract_epoch_runtime_min"]


def extract_mem_mb(config: dict, arch: str) -> int:
    """Host memory of an extraction job: the configured value, or more where a GPU
    architecture's weights need it (CPU architectures are not sized: that needs torch)."""
    configured = config["resources"]["extract_mem_mb"]
    if not gpus(config, arch):
        return configured
    from workflow_scripts.evaluate import extraction_plan  # torch unless cached: GPU jobs only

    kwargs = config_module.architecture(config, arch)["model_kwargs"]
    return max(configured, extraction_plan.host_mem_mb(arch, kwargs))
