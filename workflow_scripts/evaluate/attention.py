r"""Attention maps of a ViT backbone on a few example fields, before and after fine-tuning (what
WS-DINO's `visualize_attention.py` shows): the last block's attention from the CLS token to the
patch tokens, per head.

- **Fields** (`example_fields`): one treated field per MoA and one DMSO field. Per MoA (sorted by
  name): its compound first by name, that compound's highest concentration, and of that
  treatment the first field in (batch, plate, well, site) order; then the first DMSO field in that
  order. The same fields for every architecture, channel and epoch.
- **Input**: the whole cached field, its bottom and right edges trimmed to a multiple of the patch
  (as WS-DINO), so the model sees cells at the cache's scale, as the evaluation's seed windows do;
  value / clip_max, grey repeated to 3 channels (rgb: the cache's channels in order), standardised
  as in training (`train.input_standardization`, recorded in the checkpoint). fp32, no autocast.
- **Attention**: `timm.utils.AttentionExtract` with a forward hook on the last block's
  `attn.attn_drop` (fused attention is switched off on that block, since the fused kernel never
  forms the weights): softmax(q k^T / sqrt(d)) after timm's RoPE, (heads, tokens, tokens). Kept:
  the CLS token's row over the patch tokens (the register tokens excluded), as a (heads, grid
  height, grid width) map. A row of the full matrix sums to 1; the patch part to less.

Writes one .npz per call (docs/formats.md): `fields` (n, channels, H, W) uint16, the trimmed
fields; `attention` (epochs, n, heads, grid_h, grid_w) float32; `epochs`; `info`, a JSON string
(arch, channel, channels, patch, grid, per field its image_id, moa, compound, concentration,
treatment, plate, batch, is_control, and the selection rule). The summary draws them.

Epoch 0 is built as extraction builds it (`--weights`, `--init-seed`, `--input-standardization`,
`--interpolation`, see workflow_scripts.evaluate.extract); the last epoch from `--checkpoint`.

    python -m workflow_scripts.evaluate.attention --arch vit_small_patch16_dinov3.lvd1689m \
        --channel DAPI --cache-dir results/cache --weights weights/vit_small.safetensors \
        --checkpoint results/train/vit_small_patch16_dinov3.lvd1689m/DAPI/epoch_0200.safetensors \
        --out results/attention/vit_small_patch16_dinov3.lvd1689m/DAPI/maps.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.utils import AttentionExtract
from torch import nn

from workflow_scripts.atomic import atomic_path
from workflow_scripts.config import RGB
from workflow_scripts.data.cache import load_cache
from workflow_scripts.data.crops import INTERPOLATIONS
from workflow_scripts.data.intensity import scale_intensity, to_three_channels
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.evaluate.extract import load_model
from workflow_scripts.model.backbone import input_standardization
from workflow_scripts.model.checkpoint import meta_path
from workflow_scripts.tables import SORT_KEYS, read_json

SELECTION_RULE = (
    "one treated field per MoA (sorted by name): its compound first by name, that compound's "
    "highest concentration, the first field in (batch, plate, well, site) order; then the "
    "first DMSO field in that order"
)
FIELD_COLUMNS = (
    "image_id",
    "moa",
    "compound",
    "concentration",
    "treatment",
    "plate",
    "batch",
    "is_control",
)


def example_fields(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the cache table to draw (SELECTION_RULE), with their cache row as `row`."""
    ordered = table.assign(row=np.arange(len(table))).sort_values(
        [*SORT_KEYS, "row"], kind="stable"
    )
    control = ordered["is_control"].to_numpy(dtype=bool)
    treated = ordered[~control]
    picked = []
    for _, group in treated.groupby("moa", sort=True):
        compound = group[group["compound"] == sorted(group["compound"].astype(str))[0]]
        highest = compound[compound["concentration"] == compound["concentration"].max()]
        picked.append(highest.iloc[0])
    if control.any():
        picked.append(ordered[control].iloc[0])
    if not picked:
        raise InputError("the image cache has no fields to draw attention maps on")
    return pd.DataFrame(picked).reset_index(drop=True)


def attention_module_name(model: nn.Module) -> str:
    """The last ViT block's attention-dropout module, whose input is the attention matrix."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(blocks[-1], "attn"):
        raise InputError(
            f"attention maps need a ViT backbone; {type(model).__name__} has no attention blocks"
        )
    return f"blocks.{len(blocks) - 1}.attn.attn_drop"


def last_block_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, heads, tokens, tokens) softmax attention of the last block on standardised `images`."""
    name = attention_module_name(model)
    model.blocks[-1].attn.fused_attn = False  # the fused kernel never forms the weights
    extractor = AttentionExtract(model, names=[name], method="hook")
    with torch.inference_mode():
        return extractor(images)[name].float()


def cls_patch_attention(attention: torch.Tensor, model: nn.Module, height: int, width: int):
    """The CLS row over the patch tokens (prefix = CLS + registers dropped), as
    (B, heads, grid_h, grid_w) for an input of `height` x `width` pixels."""
    patch_h, patch_w = model.patch_embed.patch_size
    grid = (height // patch_h, width // patch_w)
    prefix = model.num_prefix_tokens
    if attention.shape[-1] != prefix + grid[0] * grid[1]:
        raise ValueError(f"{attention.shape[-1]} tokens, expected {prefix} + {grid[0]}x{grid[1]}")
    return attention[:, :, 0, prefix:].reshape(*attention.shape[:2], *grid)


def trimmed(field: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(C, H, W) cut at the bottom and right to a multiple of the patch."""
    height = field.shape[-2] - field.shape[-2] % patch[0]
    width = field.shape[-1] - field.shape[-1] % patch[1]
    return field[..., :height, :width]


def field_attention(
    model: nn.Module,
    fields: np.ndarray,
    clip_max: float,
    standardization: str,
    device: torch.device,
) -> np.ndarray:
    """(n, heads, grid_h, grid_w) CLS-to-patch attention of the (n, C, H, W) uint16 fields."""
    model = model.to(device).eval().requires_grad_(False)
    normalize = input_standardization(model, standardization).to(device)
    maps = []
    for field in fields:  # one at a time: a 7B's attention matrix of one field is ~200 MB
        images = to_three_channels(scale_intensity(torch.from_numpy(field[None]), clip_max))
        attention = last_block_attention(model, normalize(images.to(device)))
        maps.append(cls_patch_attention(attention, model, *field.shape[-2:]).cpu().numpy())
    return np.concatenate(maps)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--arch", required=True, help="timm model name (a ViT)")
    parser.add_argument("--channel", required=True, help="a cache channel, or rgb (all three)")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--weights", required=True, help="epoch 0: none or a weights file")
    parser.add_argument(
        "--init-seed", type=int, default=0, help="epoch 0, weights none: train.seed"
    )
    parser.add_argument("--input-standardization", help="epoch 0: train.input_standardization")
    parser.add_argument("--interpolation", choices=list(INTERPOLATIONS), help="train.interpolation")
    parser.add_argument(
        "--checkpoint", required=True, help="the last epoch's epoch_NNNN.safetensors"
    )
    parser.add_argument(
        "--model-kwargs", default="{}", help="extra timm.create_model kwargs (JSON)"
    )
    parser.add_argument("--out", required=True, help=".npz")
    args = parser.parse_args(argv)

    last_epoch = int(read_json(meta_path(args.checkpoint), required=("epoch",))["epoch"])
    model_kwargs = json_object_option(args.model_kwargs, "--model-kwargs")
    channels = [args.channel]
    if args.channel == RGB:
        channels = list(load_cache(args.cache_dir, [])[2]["channels"])
    table, arrays, meta = load_cache(args.cache_dir, channels)
    examples = example_fields(table)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    epochs = [0, last_epoch]
    maps, fields, patch, heads = [], None, None, None
    for epoch, checkpoint in zip(epochs, [None, args.checkpoint]):
        request = argparse.Namespace(**{**vars(args), "epoch": epoch, "checkpoint": checkpoint})
        model, preprocessing = load_model(request, model_kwargs)
        attention_module_name(model)
        if fields is None:
            patch = tuple(model.patch_embed.patch_size)
            fields = np.stack(
                [
                    trimmed(np.stack([arrays[c][row] for c in channels]), patch)
                    for row in examples["row"]
                ]
            )
        start = time.perf_counter()
        maps.append(
            field_attention(
                model, fields, meta["clip_max"], preprocessing["input_standardization"], device
            )
        )
        heads = maps[-1].shape[1]
        print(
            f"epoch {epoch}: attention of {len(fields)} fields x {heads} heads on {device} in "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    info = {
        "arch": args.arch,
        "channel": args.channel,
        "channels": channels,
        "patch": list(patch),
        "grid": list(maps[0].shape[-2:]),
        "heads": heads,
        "clip_max": meta["clip_max"],
        "selection": SELECTION_RULE,
        "fields": json.loads(examples[list(FIELD_COLUMNS)].to_json(orient="records")),
    }
    with atomic_path(Path(args.out)) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            fields=fields,
            attention=np.stack(maps).astype(np.float32),
            epochs=np.array(epochs),
            info=np.array(json.dumps(info)),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
