"""FLOPs of one DINO training step per image: analytic arithmetic, cross-checked by FlopCounterMode.

One step on one image = student forward + backward on every crop (2 global + 8 local in
config.yaml) and teacher forward on the global crops, each through the backbone and the DINO
head. Conventions:

* 1 multiply-accumulate (MAC) = 2 FLOP. torch's FlopCounterMode and MFU use FLOP; the
  "GFLOPs" usually quoted for ViTs (fvcore, timm, papers: "ViT-S/16 = 4.6 GFLOPs") are MACs.
* Only matmul-class work is counted (linear layers, patch-embedding convolution, the two
  attention products); norms, GELU, RoPE, softmax and the loss are memory-bound and excluded,
  as MFU conventionally does.
* Backward = 2 x forward (gradients of activations and of weights), except the patch
  embedding, whose input (the images) needs no gradient: 1 x. No recomputation is counted
  ("model FLOPs", the MFU definition). FlopCounterMode on CUDA counts flash attention's
  backward recomputation of the scores too, so a CUDA count is slightly higher.

The analytic count reads the layer shapes of the timm model (built on the meta device: no
memory, no weights) and multiplies by token counts; the cross-check runs the same step on meta
tensors under FlopCounterMode (attention then takes the math path, which it counts).

    python benchmarks/flops.py [--archs vit_small_patch16_dinov3.lvd1689m ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from workflow_scripts import config as config_module  # noqa: E402
from workflow_scripts.atomic import write_json  # noqa: E402
from workflow_scripts.model.backbone import build_backbone  # noqa: E402
from workflow_scripts.train.dino_model import MultiCropModel, build_dino_model  # noqa: E402
from workflow_scripts.train.ema import make_teacher  # noqa: E402
from workflow_scripts.train.loss import DINOLoss  # noqa: E402

DEFAULT_ARCHS = ("vit_small_patch16_dinov3.lvd1689m", "vit_base_patch16_dinov3.lvd1689m")
# The issue's estimate for ViT-S/16 at 2x224 + 8x96 (MAC convention, see the module docstring).
ISSUE_VIT_S_GFLOP = 54.0
FLOP_PER_MAC = 2


@dataclass(frozen=True)
class StepFlops:
    """FLOP per image per training step, and its parts."""

    arch: str
    global_crop_forward: int  # backbone, one global crop
    local_crop_forward: int  # backbone, one local crop
    head_forward: int  # DINO head, one crop embedding
    student_forward: int
    student_backward: int
    teacher_forward: int

    @property
    def total(self) -> int:
        return self.student_forward + self.student_backward + self.teacher_forward


def linear_macs(module: nn.Module) -> int:
    """MACs per input row through every nn.Linear inside `module` (in x out each)."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def vit_forward_macs(backbone: nn.Module, image_size: int) -> tuple[int, int]:
    """(total, patch-embedding) MACs of one timm ViT forward on one square image.

    tokens = patches + prefix tokens (class + registers); per block: tokens x the block's
    linear layers + the two attention products (scores q.k and weights.v), 2 x tokens^2 x
    attention width."""
    if not hasattr(backbone, "blocks") or not hasattr(backbone, "patch_embed"):
        raise ValueError(f"{type(backbone).__name__} is not a ViT: no analytic count")
    patch_h, patch_w = backbone.patch_embed.patch_size
    patches = (image_size // patch_h) * (image_size // patch_w)
    tokens = patches + backbone.num_prefix_tokens
    conv = backbone.patch_embed.proj
    patch_embed = patches * conv.in_channels * patch_h * patch_w * conv.out_channels
    blocks = 0
    for block in backbone.blocks:
        attention_width = block.attn.num_heads * block.attn.head_dim
        blocks += tokens * linear_macs(block) + 2 * tokens**2 * attention_width
    return patch_embed + blocks, patch_embed


def analytic_step_flops(arch: str, model_kwargs: dict, settings: dict) -> StepFlops:
    """Model FLOPs per image of one DINO step with the `train` settings' crops and head."""
    with torch.device("meta"):
        model = build_dino_model(build_backbone(arch, "none", model_kwargs), settings["head"])
    backbone, head = model.backbone, model.head
    n_global = settings["global_crops"]["number"]
    n_local = settings["local_crops"]["number"]
    global_macs, global_patch_embed = vit_forward_macs(backbone, settings["global_crops"]["size"])
    local_macs, local_patch_embed = vit_forward_macs(backbone, settings["local_crops"]["size"])
    head_macs = linear_macs(head)
    student = n_global * global_macs + n_local * local_macs + (n_global + n_local) * head_macs
    patch_embeds = n_global * global_patch_embed + n_local * local_patch_embed
    return StepFlops(
        arch=arch,
        global_crop_forward=FLOP_PER_MAC * global_macs,
        local_crop_forward=FLOP_PER_MAC * local_macs,
        head_forward=FLOP_PER_MAC * head_macs,
        student_forward=FLOP_PER_MAC * student,
        student_backward=FLOP_PER_MAC * (2 * student - patch_embeds),
        teacher_forward=FLOP_PER_MAC * n_global * (global_macs + head_macs),
    )


def crop_batch(settings: dict, batch_size: int, device: str | torch.device) -> list[torch.Tensor]:
    """A multi-crop batch shaped like the training loader's: globals first, then locals."""
    return [
        torch.rand(batch_size, 3, section["size"], section["size"], device=device)
        for section in (settings["global_crops"], settings["local_crops"])
        for _ in range(section["number"])
    ]


def dino_step(
    student: MultiCropModel,
    teacher: MultiCropModel,
    loss: DINOLoss,
    crops: list[torch.Tensor],
    n_global: int,
) -> None:
    """The model work of Trainer.train_step: teacher on the globals, student on all, backward."""
    with torch.no_grad():
        targets = teacher(crops[:n_global])
    loss(student(crops), targets, teacher_temp=0.04).backward()


def meta_counted_step_flops(
    arch: str, model_kwargs: dict, settings: dict, batch_size: int = 2
) -> int:
    """FlopCounterMode's FLOP per image for one step on meta tensors (shapes only, instant)."""
    with torch.device("meta"):
        student = build_dino_model(build_backbone(arch, "none", model_kwargs), settings["head"])
        teacher = make_teacher(student)
        loss = DINOLoss(
            settings["head"]["out_dim"],
            settings["global_crops"]["number"],
            settings["local_crops"]["number"],
        )
    crops = crop_batch(settings, batch_size, "meta")
    counter = FlopCounterMode(display=False)
    with counter:
        dino_step(student, teacher, loss, crops, settings["global_crops"]["number"])
    return counter.get_total_flops() // batch_size


def flop_table(archs: list[str], settings: dict, model_kwargs: dict) -> list[dict]:
    rows = []
    for arch in archs:
        analytic = analytic_step_flops(arch, model_kwargs, settings)
        counted = meta_counted_step_flops(arch, model_kwargs, settings)
        rows.append(
            {
                **asdict(analytic),
                "total": analytic.total,
                "total_gmac": analytic.total / FLOP_PER_MAC / 1e9,
                "flop_counter_total": counted,
                "flop_counter_relative_difference": counted / analytic.total - 1,
            }
        )
    return rows


def print_flop_table(rows: list[dict], settings: dict) -> None:
    g, loc = settings["global_crops"], settings["local_crops"]
    head = settings["head"]
    print(
        f"FLOP per image per DINO step ({g['number']}x{g['size']} + "
        f"{loc['number']}x{loc['size']} px, "
        f"head {head['hidden_dim']}/{head['bottleneck_dim']}/{head['out_dim']}); 1 MAC = 2 FLOP"
    )
    columns = (
        "arch",
        "global crop fwd",
        "local crop fwd",
        "head fwd/crop",
        "student fwd",
        "student bwd",
        "teacher fwd",
        "total GFLOP",
        "total GMAC",
        "FlopCounterMode",
        "diff",
    )
    print(" | ".join(columns))
    for row in rows:
        giga = [
            row[key] / 1e9
            for key in (
                "global_crop_forward",
                "local_crop_forward",
                "head_forward",
                "student_forward",
                "student_backward",
                "teacher_forward",
                "total",
            )
        ]
        print(
            " | ".join(
                [row["arch"].split(".")[0]]
                + [f"{value:.2f}" for value in giga]
                + [
                    f"{row['total_gmac']:.2f}",
                    f"{row['flop_counter_total'] / 1e9:.2f}",
                    f"{row['flop_counter_relative_difference']:+.2%}",
                ]
            )
        )
    print(
        f"the issue's ~{ISSUE_VIT_S_GFLOP:g} G for ViT-S/16 counts multiply-accumulates and leaves "
        f"out the 4 register tokens and the head (without them: ~56 GMAC)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS), help="timm ViT names")
    parser.add_argument(
        "--config",
        nargs="+",
        default=[str(REPO / "config.yaml")],
        help="config file(s) whose train section gives crops and head",
    )
    parser.add_argument("--model-kwargs", default="{}", help="JSON: extra timm.create_model kwargs")
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args(argv)
    # schema validation where jsonschema is installed (a bare GPU node may lack it)
    settings = config_module.load(args.config, schema=config_module.has_schema_checker())["train"]
    rows = flop_table(args.archs, settings, json.loads(args.model_kwargs))
    print_flop_table(rows, settings)
    if args.json:
        recipe = {key: settings[key] for key in ("global_crops", "local_crops", "head")}
        write_json(
            args.json, {"settings": recipe, "issue_vit_s_gflop": ISSUE_VIT_S_GFLOP, "rows": rows}
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
