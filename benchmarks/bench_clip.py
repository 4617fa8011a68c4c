"""Per-parameter gradient clipping of a DINO student: dispatched ops per call, and (CUDA) time
per call, for optim.clip_gradients (two multi-tensor calls) against one nn.utils.clip_grad_norm_
call per parameter (the previous implementation).

Op counts come from a TorchDispatchMode on the meta device (shapes only, instant); on CUDA each
variant is also timed on the real student with random gradients (median of --repeats calls after
a warm-up, synchronised).

    python benchmarks/bench_clip.py [--archs vit_small_patch16_dinov3.lvd1689m ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from workflow_scripts.model.backbone import build_backbone  # noqa: E402
from workflow_scripts.train.dino_model import build_dino_model  # noqa: E402
from workflow_scripts.train.optim import clip_gradients  # noqa: E402

ARCHS = ("vit_small_patch16_dinov3.lvd1689m", "vit_base_patch16_dinov3.lvd1689m")
MAX_NORM = 3.0


def clip_per_parameter(model: nn.Module, max_norm: float) -> None:
    """The previous implementation: one clip_grad_norm_ call per parameter."""
    for param in model.parameters():
        if param.grad is not None:
            nn.utils.clip_grad_norm_(param, max_norm)


VARIANTS = {"foreach": clip_gradients, "per-parameter": clip_per_parameter}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def student(arch: str, head: dict, device: str) -> nn.Module:
    with torch.device(device):
        model = build_dino_model(build_backbone(arch, "none", {}), head)
        for param in model.parameters():
            param.grad = torch.randn_like(param) if device != "meta" else torch.empty_like(param)
    return model


def time_call(model: nn.Module, clip, repeats: int) -> float:
    clip(model, MAX_NORM)  # warm-up
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        clip(model, MAX_NORM)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--repeats", type=int, default=20, help="CUDA: timed calls per variant")
    args = parser.parse_args(argv)
    with open(REPO / "config.yaml") as fh:
        head = yaml.safe_load(fh)["train"]["head"]
    cuda = torch.cuda.is_available()
    for arch in args.archs:
        meta = student(arch, head, "meta")
        tensors = sum(1 for _ in meta.parameters())
        line = []
        for name, clip in VARIANTS.items():
            with OpCounter() as counter:
                clip(meta, MAX_NORM)
            line.append(f"{name} {counter.ops} ops")
        if cuda:
            model = student(arch, head, "cuda")
            for name, clip in VARIANTS.items():
                line.append(f"{name} {time_call(model, clip, args.repeats) * 1e3:.2f} ms")
            del model
        print(f"{arch.split('.')[0]} ({tensors} parameter tensors): {', '.join(line)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
