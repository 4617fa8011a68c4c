"""The DINO training loop: one job = one (architecture, channel), resumable after every epoch.

Per step: the teacher (EMA of the student, global crops only, no gradients) gives targets, the
student sees all crops, DINO loss, backward, last layer frozen early on, gradient clipping,
optimizer step, teacher EMA update. Per epoch (main process only writes): evaluated epochs'
teacher backbones to `{resume_dir}/epochs/`, one log line, the resume state `state.pt`
(atomically), then everything re-exported to `{out_dir}`, which Snakemake may have emptied.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from workflow_scripts import config as config_module
from workflow_scripts.atomic import append_line, write_text
from workflow_scripts.errors import InputError
from workflow_scripts.model.backbone import build_backbone
from workflow_scripts.model.checkpoint import save_backbone_checkpoint
from workflow_scripts.model.precision import Precision
from workflow_scripts.model.rng import capture_rng_state, restore_rng_state, seed_everything
from workflow_scripts.train import distributed, fsdp, sharded_state
from workflow_scripts.train.dataset import build_train_loader
from workflow_scripts.train.dino_model import build_dino_model
from workflow_scripts.train.ema import make_teacher, update_teacher
from workflow_scripts.train.head import synchronize_batch_norm
from workflow_scripts.train.health import HealthMeter
from workflow_scripts.train.koleo import GlobalCropEmbeddings, koleo_term
from workflow_scripts.train.loss import DINOLoss
from workflow_scripts.train.optim import (
    build_optimizer,
    cancel_backbone_gradients,
    cancel_last_layer_gradients,
    clip_gradients,
    param_groups,
    set_lr_and_weight_decay,
)
from workflow_scripts.train.resume_key import resume_key, world_size_decision
from workflow_scripts.train.resume_state import (
    EPOCHS_DIR,
    RESUME_STATE,
    export_checkpoints,
    load_resume_state,
    save_resume_state,
    set_aside,
)
from workflow_scripts.train.schedules import build_schedules

IN_CHANS = 3  # grey is repeated to 3 channels, rgb stacks three: DINOv3 always sees 3
LOG_FILE = "log.jsonl"
PROGRESS_EVERY = 50  # steps between progress lines when stderr is not a terminal


@dataclass(frozen=True)
class TrainJob:
    arch: str
    channel: str
    cache_dir: Path
    weights: str  # "none" | "hub" | path of a weights file
    model_kwargs: dict
    settings: dict  # the config `train` section with this architecture's overrides
    out_dir: Path
    resume_dir: Path
    strategy: str = "ddp"  # ddp | fsdp (fsdp.py; cluster/memory_plan.py chooses for `auto`)
    activation_checkpointing: bool = False

    def config_digest(self) -> str:
        """What a resume state must match to be continued (resume_key.py); its world size is
        checked apart (world_size_decision)."""
        key = resume_key(
            arch=self.arch,
            channel=self.channel,
            settings=self.settings,
            model_kwargs=self.model_kwargs,
            weights=self.weights,
            cache_dir=self.cache_dir,
        )
        # FSDP keeps its state in another format (sharded_state.py)
        return config_module.digest([key, "fsdp"]) if self.strategy == "fsdp" else key


def run(job: TrainJob) -> None:
    """Train `job` in this process (one rank of a torchrun/srun launch, or alone)."""
    context = distributed.setup()
    try:
        Trainer(job, context).fit()
    finally:
        distributed.teardown()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    def __init__(self, job: TrainJob, context: distributed.DistributedContext) -> None:
        self.job = job
        self.context = context
        self.digest = job.config_digest()
        settings = job.settings
        self.seed = settings["seed"]
        self.epochs = settings["epochs"]
        self.evaluated_epochs = set(config_module.evaluated_epochs(settings))
        self.n_global_crops = settings["global_crops"]["number"]
        self.device = context.device
        self.precision = Precision.resolve(settings["precision"], self.device.type)

        self.loader, self.sampler = build_train_loader(
            str(job.cache_dir),
            job.channel,
            settings,
            rank=context.rank,
            world_size=context.world_size,
            seed=self.seed,
            device_type=self.device.type,
        )
        max_steps = settings.get("max_steps_per_epoch")
        self.steps_per_epoch = min(len(self.loader), max_steps or len(self.loader))
        self.schedules = build_schedules(settings, self.steps_per_epoch, context.world_size)

        seed_everything(self.seed)  # the same initial weights on every rank
        backbone = build_backbone(
            job.arch, job.weights, job.model_kwargs, settings["drop_path_rate"]
        )
        self.student = build_dino_model(
            backbone, settings["head"], settings.get("input_standardization", "none")
        ).to(self.device)
        self.student = synchronize_batch_norm(self.student, context.world_size, self.device.type)
        if job.activation_checkpointing:
            self.student.backbone.set_grad_checkpointing(True)  # timm: per block
        self.teacher = make_teacher(self.student)
        # FSDP over one process has nothing to shard: plain modules, DCP resume state
        self.fsdp = job.strategy == "fsdp"
        if self.fsdp and context.is_distributed:
            mesh = fsdp.device_mesh(self.device, context.world_size)
            policy = fsdp.mixed_precision(self.precision.autocast_dtype, self.device.type)
            fsdp.shard(self.student, mesh, policy)
            fsdp.shard(self.teacher, mesh, policy)
        no_decay = {f"backbone.{name}" for name in _no_weight_decay_names(backbone)}
        layer_decay = settings["optimizer"].get("layer_decay", 1.0)
        self.optimizer = build_optimizer(
            param_groups(self.student, no_decay, layer_decay, _vit_depth(backbone, layer_decay)),
            settings["optimizer"],
            self.device.type,
        )
        self.scaler = self.precision.grad_scaler()
        self.loss = DINOLoss(
            settings["head"]["out_dim"],
            self.n_global_crops,
            settings["local_crops"]["number"],
            settings["loss"]["student_temp"],
            settings["loss"]["center_momentum"],
        ).to(self.device)
        self.health = HealthMeter(self.teacher.backbone, settings["head"]["out_dim"])
        self.koleo_weight = settings["loss"].get("koleo_weight", 0.0)
        self.student_globals = (
            GlobalCropEmbeddings(self.student.backbone) if self.koleo_weight > 0 else None
        )
        if settings["compile"]:
            # Module.compile() compiles in place: state_dict names stay timm's
            self.student.backbone.compile()
            self.teacher.backbone.compile()

        self.start_epoch = self._resume()
        # what a step runs forward/backward through: the DDP wrapper while fit() runs
        # distributed, else the student itself
        self.student_ddp: torch.nn.Module = self.student

    # ------------------------------------------------------------------ resume
    @property
    def resume_dir(self) -> Path:
        return self.job.resume_dir

    def _resume(self) -> int:
        """Load the resume state if it belongs to this configuration; return the first epoch
        to run. Every rank reads the state; only rank 0 moves or prunes files."""
        if self.fsdp:
            state = sharded_state.read_commit(self.resume_dir)
        else:
            state = load_resume_state(self.resume_dir / RESUME_STATE)
        world_size = self.context.world_size
        saved_world_size = world_size if state is None else _saved_world_size(state)
        refusal = None  # why a saved state is not continued
        if state is not None and state.get("config_digest") != self.digest:
            refusal = (
                f"is for another configuration (digest {state.get('config_digest')}, "
                f"now {self.digest})"
            )
        elif state is not None:
            allowed = bool(self.job.settings.get("resume_at_other_world_size", False))
            reason = world_size_decision(saved_world_size, world_size, allowed)
            if reason is not None:
                refusal = f"cannot be continued: {reason}"
        usable = state is not None and refusal is None
        distributed.barrier()  # all ranks have read the state before rank 0 may move it
        if self.context.is_main:
            if state is not None and not usable:
                moved = set_aside(self.resume_dir, str(state.get("config_digest")))
                sharded_state.set_aside(self.resume_dir, moved)
                log(
                    f"resume state in {self.resume_dir} {refusal}: moved to {moved}; "
                    "training from scratch"
                )
            elif state is None:
                self._prune_after(0)  # leftovers of a run killed in its first epoch
        if not usable:
            seed_everything(self.seed + self.context.rank)  # each rank its own drop-path draws
            distributed.barrier()
            return 0

        if self.fsdp:
            sharded_state.load(self.resume_dir, state, self.student, self.teacher, self.optimizer)
            state = {**state, **state["extra"]}  # loss centre, scaler, RNG streams
        else:
            self.student.load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.loss.load_state_dict(state["loss"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        completed = int(state["epoch"])
        streams = state["rng"]  # one per rank of the run that saved it
        if self.context.rank < len(streams):
            restore_rng_state(streams[self.context.rank])
        else:  # a rank the saving run did not have: a stream of its own, fixed by the epoch
            seed_everything(self.seed + self.context.rank + 1_000_003 * completed)
        if self.context.is_main:
            self._prune_after(completed)
            self._export()
            source = sharded_state.COMMIT_FILE if self.fsdp else RESUME_STATE
            message = f"resuming after epoch {completed} from {self.resume_dir / source}"
            if saved_world_size != world_size:
                batch = self.job.settings["batch_size_per_gpu"]
                message += (
                    f", saved by {saved_world_size} process(es), continued by {world_size}: "
                    f"global batch {batch * saved_world_size} -> {batch * world_size} "
                    "(train.resume_at_other_world_size)"
                )
            log(message)
        distributed.barrier()
        return completed

    def _prune_after(self, completed: int) -> None:
        """Drop the checkpoint and log line of an epoch killed before its state was saved."""
        for checkpoint in (self.resume_dir / EPOCHS_DIR).glob("epoch_*"):
            if int(checkpoint.stem.removeprefix("epoch_")) > completed:
                checkpoint.unlink()
        path = self.resume_dir / LOG_FILE
        if path.is_file():
            lines = [
                line
                for line in path.read_text().splitlines()
                if line and json.loads(line)["epoch"] <= completed
            ]
            write_text(path, "".join(line + "\n" for line in lines))

    def _export(self) -> None:
        """Re-create the Snakemake outputs from the resume directory (cheap hard links)."""
        export_checkpoints(self.resume_dir / EPOCHS_DIR, self.job.out_dir)
        log_path = self.resume_dir / LOG_FILE
        write_text(self.job.out_dir / LOG_FILE, log_path.read_text() if log_path.is_file() else "")

    # ------------------------------------------------------------------ training
    def fit(self) -> None:
        if self.context.is_main:
            n_params = sum(p.numel() for p in self.student.backbone.parameters())
            log(
                f"training {self.job.arch} on {self.job.channel}: {n_params / 1e6:.1f} M backbone "
                f"parameters, {self.context.world_size} process(es) on {self.device.type}, "
                f"{self.steps_per_epoch} steps/epoch, epochs {self.start_epoch + 1}..{self.epochs}"
                + self._weak_label_note()
            )
        if self.context.is_distributed and not self.fsdp:
            self.student_ddp = DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        try:
            for epoch in range(self.start_epoch, self.epochs):
                self.sampler.set_epoch(epoch)
                self.student.train()
                stats = self._train_one_epoch(epoch)
                self._end_epoch(epoch, stats)
        finally:
            # DDP must be gone before the process group: with gloo, destroying the group
            # under a live DDP reducer can hang at exit
            self.student_ddp = self.student
        if self.context.is_main:
            self._export()
        distributed.barrier()

    def _weak_label_note(self) -> str:
        """Weak-label multi-crop (weak_labels.py), said in the training log; none says nothing."""
        label = self.job.settings.get("weak_label", "none")
        if label == "none":
            return ""
        circular = " (circular: NSC/NSCB retrieve the MoA labels)" if label == "moa" else ""
        return f"; weak label {label}{circular}: local crops from another image of the label"

    def _train_one_epoch(self, epoch: int) -> dict:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        loss_sum = 0.0
        started = time.perf_counter()
        for step, crops in enumerate(self.loader):
            if step >= self.steps_per_epoch:
                break
            loss_sum += self.train_step(crops, epoch, step)
            self._progress(epoch, step, loss_sum / (step + 1), started)
        elapsed = time.perf_counter() - started
        iteration = (epoch + 1) * self.steps_per_epoch - 1
        batch = self.job.settings["batch_size_per_gpu"] * self.context.world_size
        return {
            "epoch": epoch + 1,
            "loss": loss_sum / self.steps_per_epoch,
            "lr": float(self.schedules.lr[iteration]),
            "wd": float(self.schedules.weight_decay[iteration]),
            "momentum": float(self.schedules.teacher_momentum[iteration]),
            "teacher_temp": float(self.schedules.teacher_temp[epoch]),
            "steps": self.steps_per_epoch,
            "world_size": self.context.world_size,
            "images_per_s": self.steps_per_epoch * batch / elapsed,
            "step_time_s": elapsed / self.steps_per_epoch,
            "peak_memory_mb": self._peak_memory_mb(),
            "wall_time_s": elapsed,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **self.health.epoch_stats(self.loss.center),  # health.py: collapse diagnostics
        }

    def train_step(self, crops: list[torch.Tensor], epoch: int, step: int) -> float:
        """One optimisation step on one multi-crop batch; returns the loss averaged over ranks."""
        iteration = epoch * self.steps_per_epoch + step
        set_lr_and_weight_decay(
            self.optimizer, self.schedules.lr[iteration], self.schedules.weight_decay[iteration]
        )
        crops = [crop.to(self.device, non_blocking=True) for crop in crops]
        with self.precision.autocast():
            # no_grad, not inference_mode: inference tensors cannot enter the student's graph
            with torch.no_grad():
                teacher_output = self.teacher(crops[: self.n_global_crops])
            student_output = self.student_ddp(crops)
            teacher_temp = self.schedules.teacher_temp[epoch]
            self.health.observe_teacher(teacher_output, self.loss.center, teacher_temp)
            loss = self.loss(student_output, teacher_output, teacher_temp)
            self.health.observe_loss(float(loss.detach()))
            if self.student_globals is not None:  # KoLeo on the student's global-crop CLS
                koleo = koleo_term(self.student_globals.take(), self.n_global_crops, len(crops[0]))
                self.health.add("koleo", float(koleo.detach()))
                loss = loss + self.koleo_weight * koleo
        loss_value = distributed.all_reduce_mean(loss).item()  # every rank stops together
        if not math.isfinite(loss_value):
            raise InputError(
                f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {step + 1}: training "
                f"stopped; the resume state of epoch {epoch} in {self.resume_dir} is untouched. "
                f"Lower train.optimizer.lr or use precision bf16/fp32"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if epoch < self.job.settings["optimizer"]["freeze_last_layer_epochs"]:
            cancel_last_layer_gradients(self.student)
        if epoch < self.job.settings["optimizer"].get("head_warmup_epochs", 0):
            cancel_backbone_gradients(self.student)  # head warm-up: the backbone stays put
        clip_gradients(self.student, self.job.settings["optimizer"]["clip_grad"])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        update_teacher(self.student, self.teacher, self.schedules.teacher_momentum[iteration])
        return loss_value

    def _progress(self, epoch: int, step: int, mean_loss: float, started: float) -> None:
        if not self.context.is_main:
            return
        done = step + 1
        rate = done / (time.perf_counter() - started)
        line = (
            f"epoch {epoch + 1}/{self.epochs} step {done}/{self.steps_per_epoch} "
            f"loss {mean_loss:.4f} {rate:.2f} steps/s"
        )
        if sys.stderr.isatty():
            end = "\n" if done == self.steps_per_epoch else ""
            print(f"\r{line}", end=end, file=sys.stderr, flush=True)
        elif done == 1 or done % PROGRESS_EVERY == 0 or done == self.steps_per_epoch:
            log(line)

    def _peak_memory_mb(self) -> float:
        """Peak CUDA memory allocated this epoch; on CPU the process' peak RSS so far."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # ------------------------------------------------------------------ epoch end
    def _end_epoch(self, epoch: int, stats: dict) -> None:
        completed = epoch + 1
        rng_states = distributed.gather_objects(capture_rng_state())
        if self.fsdp:  # collectives: every rank gathers the export and writes its shards
            backbone = (
                sharded_state.full_backbone_state(self.teacher)
                if completed in self.evaluated_epochs
                else None
            )
            sharded_state.save(
                self.resume_dir,
                completed,
                self.student,
                self.teacher,
                self.optimizer,
                self._extra_state(rng_states),
                self.context.is_main,
            )
        else:
            backbone = self.teacher.backbone
        if self.context.is_main:
            epochs_dir = self.resume_dir / EPOCHS_DIR
            if completed in self.evaluated_epochs:
                save_backbone_checkpoint(
                    epochs_dir,
                    backbone,
                    {
                        "arch": self.job.arch,
                        "channel": self.job.channel,
                        "epoch": completed,
                        "config_digest": self.digest,
                        "world_size": self.context.world_size,
                        "model_kwargs": self.job.model_kwargs,
                        "in_chans": IN_CHANS,
                        "train_settings": self.job.settings,
                    },
                )
            # log line before state: a kill in between leaves an extra line, pruned on resume
            append_line(self.resume_dir / LOG_FILE, json.dumps(stats))
            if self.fsdp:
                sharded_state.commit(
                    self.resume_dir, completed, self.digest, self.context.world_size
                )
            else:
                save_resume_state(
                    self.resume_dir / RESUME_STATE,
                    {
                        "config_digest": self.digest,
                        "epoch": completed,
                        "world_size": self.context.world_size,
                        "student": self.student.state_dict(),
                        "teacher": self.teacher.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        **self._extra_state(rng_states),
                    },
                )
            self._export()
            log(json.dumps(stats))
            if stats.get("collapse"):
                log(
                    f"WARNING: epoch {completed} looks collapsed ({stats['collapse']} teacher: "
                    f"entropy {stats['teacher_entropy']:.3f} of ln K = "
                    f"{math.log(self.job.settings['head']['out_dim']):.3f} nats, mutual "
                    f"information {stats['teacher_mutual_info']:.4f} nats, CLS relative std "
                    f"{stats.get('cls_relative_std', float('nan')):.2e}); see health.py"
                )
        distributed.barrier()

    def _extra_state(self, rng_states: list) -> dict:
        return {
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "loss": self.loss.state_dict(),
            "rng": rng_states,
        }


def _saved_world_size(state: dict) -> int:
    """Processes that saved a resume state (states before the field: one RNG stream each)."""
    return int(state.get("world_size", len(state.get("rng", ())) or 1))


def _vit_depth(backbone: torch.nn.Module, layer_decay: float) -> int:
    """Number of ViT blocks, needed by layer-wise lr decay (which only ViTs support)."""
    blocks = getattr(backbone, "blocks", None)
    if blocks is None:
        if layer_decay != 1.0:
            raise InputError(
                "config key 'train.optimizer.layer_decay': layer-wise lr decay "
                f"needs a ViT (blocks.N); {type(backbone).__name__} has no blocks"
            )
        return 0
    return len(blocks)


def _no_weight_decay_names(backbone: torch.nn.Module) -> set[str]:
    """timm's list of tokens/embeddings that must not be decayed (cls, register, pos_embed)."""
    names = getattr(backbone, "no_weight_decay", None)
    return set(names()) if callable(names) else set()
