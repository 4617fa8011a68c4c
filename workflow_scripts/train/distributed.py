"""Process-group setup for data-parallel training on one or several GPUs (or CPU processes).

Launchers understood, checked in this order:

1. torchrun (`torchrun` / `python -m torch.distributed.run`, what rules/train.smk uses for
   gpus > 1 on one node): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT come from
   torchrun.
2. srun with several tasks (several nodes, one task per GPU): rank = SLURM_PROCID, world size =
   SLURM_NTASKS, local rank = SLURM_LOCALID. MASTER_ADDR is taken from the environment if set,
   else it is the first host of `scontrol show hostnames $SLURM_JOB_NODELIST`; MASTER_PORT is
   taken from the environment if set, else 20000 + SLURM_JOB_ID % 10000 (the same on every
   task of a job without any communication).
3. Anything else: a single process, no process group at all.

Backend: nccl when CUDA is available (one GPU per process), gloo on CPU. The GPU is chosen among
those the process can see: cuda:LOCAL_RANK when all of the node's GPUs are visible (torchrun), the
only one when the launcher binds one GPU per task (srun --gpus-per-task=1, --gpu-bind: each task
sees its own as cuda:0, whatever its SLURM_LOCALID).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from workflow_scripts.errors import InputError


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launcher_ranks(env: dict[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or SLURM variables; (0, 1, 0) otherwise."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def cuda_device_index(local_rank: int, visible_gpus: int, env: dict[str, str]) -> int:
    """The ordinal, among the `visible_gpus` GPUs this process sees, of the one it trains on."""
    if local_rank < visible_gpus:
        return local_rank
    if visible_gpus == 1:  # per-task binding: the one GPU this task was given
        return 0
    raise InputError(
        f"local rank {local_rank}, but this process sees {visible_gpus} GPUs "
        f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}): bind one GPU per "
        f"task (srun --gpus-per-task=1) or let every task see all of the node's GPUs"
    )


def slurm_rendezvous(env: dict[str, str]) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT for an srun-launched job (see the module docstring)."""
    address = env.get("MASTER_ADDR")
    if not address:
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise InputError("srun launch: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set")
        try:
            hosts = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
        except (OSError, subprocess.CalledProcessError) as err:
            raise InputError(
                f"srun launch: cannot resolve SLURM_JOB_NODELIST={nodelist} with scontrol "
                f"({err}); set MASTER_ADDR to the first node's host name"
            ) from err
        address = hosts[0]
    port = env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 10000)
    return {"MASTER_ADDR": address, "MASTER_PORT": port}


def setup() -> DistributedContext:
    """Join the process group the launcher describes (none for a single process)."""
    rank, world_size, local_rank = launcher_ranks(dict(os.environ))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        index = cuda_device_index(local_rank, torch.cuda.device_count(), dict(os.environ))
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world_size > 1:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            os.environ.update(slurm_rendezvous(dict(os.environ)))
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            device_id=device if use_cuda else None,
        )
    return DistributedContext(rank, world_size, local_rank, device)


def teardown() -> None:
    """Leave the process group. Callers must drop their DistributedDataParallel wrapper first:
    with gloo, destroying the group under a live DDP reducer can hang at exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy; the input is left alone)."""
    value = value.detach().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
