"""Run one rank of a training job (Trainer.fit, as the CLI runs it) and save what it holds.

    torchrun --nproc-per-node=N tests/fsdp_driver.py JOB_JSON OUT_DIR

Every rank gathers the full (unsharded) student and teacher state dicts, the optimizer's full
state and the loss centre; rank 0 writes them to OUT_DIR/rank0.pt (used by test_train_fsdp.py).
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from workflow_scripts.train import distributed, loop, sharded_state


def main() -> None:
    fields = json.loads(sys.argv[1])
    for key in ("cache_dir", "out_dir", "resume_dir"):
        fields[key] = Path(fields[key])
    job = loop.TrainJob(**fields)
    context = distributed.setup()
    trainer = loop.Trainer(job, context)
    trainer.fit()
    optimizer = get_optimizer_state_dict(
        trainer.student,
        trainer.optimizer,
        options=StateDictOptions(full_state_dict=True, cpu_offload=True),
    )
    held = {
        "student": sharded_state.full_state_dict(trainer.student),
        "teacher": sharded_state.full_state_dict(trainer.teacher),
        "optimizer": optimizer,
        "center": trainer.loss.center,
    }
    if context.is_main:
        torch.save(held, Path(sys.argv[2]) / f"rank{context.rank}.pt")
    del trainer
    distributed.teardown()


if __name__ == "__main__":
    main()
