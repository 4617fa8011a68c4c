r"""Feature extraction: one embedding per cache image from one backbone (arch, channel, epoch).

Per image, fixed crops (`workflow_scripts.evaluate.crops`; --settings `crops`): `seed` = the
seed's four windows at native resolution, no resize (WS-DINO Eval_BBBC021.py; on a field of
another size than 640 x 512 they scale with it); `grid` = `crop_grid` = [rows, cols] tiles, each
resized to `input_size` with the `resized_crop` training uses (cv2 on the uint16 values with
`train.interpolation`). Then value / clip_max, grey repeated to 3 channels, standardised as in
training (`train.input_standardization`: none, or the backbone's pretrained mean/std), and
embedded; the image's feature is the median over its crops (`crop_median`: `lower` = the lower
middle value, as the seed's torch.median; `midpoint` = numpy's median). DMSO images included.

`embedding`: cls, mean_patch or cls+mean_patch (workflow_scripts/model/embed.py).

Epoch 0000 is the backbone before fine-tuning (`--weights none|path`; none = random init seeded
with `--init-seed` = the architecture's train.seed, as training seeds its start;
`--input-standardization` / `--interpolation` = the architecture's train.input_standardization /
train.interpolation, defaults none / bicubic); later epochs read the training checkpoint
(`--checkpoint`), whose recorded arch, channel, epoch and model_kwargs must match the request and
whose recorded train_settings input_standardization and interpolation are used (an explicit
option that disagrees is an error). `--batch-size` / `--num-workers` only change speed;
`--batch-size auto` derives the batch from the GPU's free memory (extraction_memory.py).
Inference: eval mode, torch.inference_mode, bf16 autocast on CUDA, fp32 on CPU; deterministic.

Several epochs in one call (`--epoch 5 10 --checkpoint a b --out x y`, one checkpoint and one
output per epoch) pay the start-up once: libraries, CUDA and the cache are loaded once, then each
checkpoint is loaded, embedded and written in turn, exactly as one call per epoch would write it.
On an error no output of the call is left behind.

    python -m workflow_scripts.evaluate.extract --arch vit_small_patch16_dinov3.lvd1689m \
        --channel DAPI --cache-dir results/cache --weights none --model-kwargs '{}' \
        --settings '{"crops": "grid", "crop_grid": [2, 2], "input_size": 224, "embedding": "cls",
                     "crop_median": "lower"}' \
        --batch-size 64 --num-workers 4 --epoch 0 --out features.parquet
    python -m workflow_scripts.evaluate.extract ... --checkpoint train/epoch_0005.safetensors \
        train/epoch_0010.safetensors --epoch 5 10 --out epoch_0005.parquet epoch_0010.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workflow_scripts.config import RGB
from workflow_scripts.data.cache import load_cache
from workflow_scripts.data.crops import INTERPOLATIONS, limit_opencv_threads, resized_crop
from workflow_scripts.data.intensity import scale_intensity, to_three_channels
from workflow_scripts.errors import InputError, cli, json_object_option
from workflow_scripts.evaluate.crops import (  # noqa: F401  (crop_boxes: imported from here)
    Crop,
    crop_boxes,
    evaluation_crops,
    median_over_crops,
)
from workflow_scripts.evaluate.extraction_memory import CPU_BATCH_SIZE, auto_batch_size
from workflow_scripts.model.backbone import build_backbone, input_standardization
from workflow_scripts.model.checkpoint import load_backbone_checkpoint, meta_path
from workflow_scripts.model.embed import check_embedding, embed_crops
from workflow_scripts.model.precision import Precision
from workflow_scripts.model.rng import seed_everything
from workflow_scripts.tables import feature_names, write_table

# How images are prepared, as training prepared them (train.<key>), with the config defaults
# (input_standardization none: value / clip_max as is) for epoch 0 without an option and for
# checkpoints that do not record the key.
PREPROCESSING_DEFAULTS = {"input_standardization": "none", "interpolation": "bicubic"}
SETTINGS_KEYS = ("crops", "embedding", "crop_median")  # + the crop mode's keys (crops.py)
AUTO = "auto"


def batch_size_option(value: str) -> int | str:
    """--batch-size: a whole number or `auto`."""
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a whole number nor auto") from None


class CropDataset(Dataset):
    """Item i -> the crops of cache image i, one float32 (3, out_height, out_width) tensor per
    `Crop` (channels stacked in order); the DataLoader batches each crop position apart, so crops
    of different sizes (the seed's windows) need no resize."""

    def __init__(
        self, arrays: list[np.ndarray], crops: list[Crop], clip_max: float, interpolation: str
    ) -> None:
        self.arrays = arrays
        self.crops = crops
        self.clip_max = clip_max
        self.interpolation = INTERPOLATIONS[interpolation]

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        channels = [array[index] for array in self.arrays]
        return tuple(self.cut(channels, crop) for crop in self.crops)

    def cut(self, channels: list[np.ndarray], crop: Crop) -> torch.Tensor:
        if crop.resized:
            if crop.out_height != crop.out_width:
                raise ValueError(f"resized crops are square, not {crop}")
            return resized_crop(
                channels,
                crop.box,
                crop.out_height,
                clip_max=self.clip_max,
                interpolation=self.interpolation,
            )
        rows = slice(crop.top, crop.top + crop.height)
        cols = slice(crop.left, crop.left + crop.width)
        window = np.stack([channel[rows, cols] for channel in channels])
        return to_three_channels(scale_intensity(torch.from_numpy(window), self.clip_max))

    # A spawned worker gets the memmaps' file names and reopens them: pickling a memmap copies it.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": [array.filename for array in self.arrays]}

    def __setstate__(self, state: dict) -> None:
        state["arrays"] = [np.load(name, mmap_mode="r") for name in state["arrays"]]
        self.__dict__.update(state)


def extract_features(
    model: nn.Module,
    arrays: list[np.ndarray],
    clip_max: float,
    settings: dict,
    device: torch.device,
    standardization: str,
    *,
    interpolation: str,
    batch_size: int,
    num_workers: int,
) -> np.ndarray:
    """(N, D) float32 features of all images of the (N, H, W) uint16 `arrays` (one per input
    channel, in model channel order); `standardization` and `interpolation` as
    train.input_standardization and train.interpolation."""
    check_embedding(model, settings["embedding"])
    height, width = arrays[0].shape[1:]
    crops = evaluation_crops(height, width, settings)
    check_crop_sizes(model, crops)
    dataset = CropDataset(arrays, crops, clip_max, interpolation)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=limit_opencv_threads,
    )
    normalize = input_standardization(model, standardization).to(device)
    # no gradients: autocast caches a bf16 copy of every weight that requires grad (not under
    # inference_mode, which this uses; a safeguard should the context change, e.g. to no_grad)
    model = model.to(device).eval().requires_grad_(False)
    precision = Precision.resolve("auto", device.type)
    features = []
    with torch.inference_mode():
        for batch in loader:
            per_crop = embed_crops(
                model, normalize, batch, settings["embedding"], precision, device
            )
            median = median_over_crops(per_crop.numpy(), settings["crop_median"])
            features.append(median.astype(np.float32))
    return np.concatenate(features)


def check_crop_sizes(model: nn.Module, crops: list[Crop]) -> None:
    """A ViT takes any input whose sides are multiples of its patch (timm's DINOv3 ViTs have a
    dynamic image size); say which setting to change before the first forward pass fails."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return
    for crop in crops:
        if crop.out_height % patch[0] or crop.out_width % patch[1]:
            raise InputError(
                f"settings: an evaluation crop of {crop.out_width} x {crop.out_height} (w x h) "
                f"is not a multiple of the backbone's {patch[1]} x {patch[0]} patch; set "
                "evaluate.seed_windows.multiple (or evaluate.input_size) to a multiple of it"
            )


def load_model(args: argparse.Namespace, model_kwargs: dict) -> tuple[nn.Module, dict[str, str]]:
    """The backbone to extract with and how its images are prepared (PREPROCESSING_DEFAULTS'
    keys: input_standardization, interpolation)."""
    if args.checkpoint is None:
        if args.epoch != 0:
            raise InputError(f"--epoch {args.epoch}: epochs after 0 need --checkpoint")
        # weights "none": seeded as training seeds its initial model (train.seed), so epoch 0
        # is the network training starts from, and a rerun extracts the same features
        seed_everything(args.init_seed)
        model = build_backbone(args.arch, args.weights, model_kwargs, drop_path_rate=0.0)
        preprocessing = {
            key: getattr(args, key) or default for key, default in PREPROCESSING_DEFAULTS.items()
        }
        return model.eval(), preprocessing
    model, meta = load_backbone_checkpoint(args.checkpoint, expected_arch=args.arch)
    train_settings = meta.get("train_settings", {})
    preprocessing = {
        key: train_settings.get(key, default) for key, default in PREPROCESSING_DEFAULTS.items()
    }
    if preprocessing["interpolation"] not in INTERPOLATIONS:
        raise InputError(
            f"checkpoint {args.checkpoint}: recorded interpolation "
            f"{preprocessing['interpolation']!r} is not one of {', '.join(INTERPOLATIONS)}"
        )
    recorded = {
        "channel": meta.get("channel"),
        "epoch": meta["epoch"],
        "model_kwargs": meta["model_kwargs"],
        **preprocessing,
    }
    requested = {
        "channel": args.channel,
        "epoch": args.epoch,
        "model_kwargs": model_kwargs,
        **{key: getattr(args, key) or value for key, value in preprocessing.items()},
    }
    for key, value in recorded.items():
        if value != requested[key]:
            raise InputError(
                f"checkpoint {args.checkpoint}: recorded {key} {value!r}, "
                f"but {requested[key]!r} was asked for"
            )
    return model, preprocessing


def epoch_jobs(
    epochs: list[int], checkpoints: list[str] | None, outs: list[str]
) -> list[tuple[int, str | None, str]]:
    """(epoch, checkpoint or None, output) per requested epoch; InputError when the lists do not
    pair up (one checkpoint and one output per epoch; --weights serves one epoch only)."""
    if checkpoints is None:
        if len(epochs) != 1:
            raise InputError(f"--epoch {' '.join(map(str, epochs))}: --weights extracts one epoch")
        checkpoints = [None]
    if not len(epochs) == len(checkpoints) == len(outs):
        raise InputError(
            f"{len(epochs)} --epoch, {len(checkpoints)} --checkpoint and {len(outs)} --out values: "
            "need one checkpoint and one output per epoch"
        )
    for name, values in (("--epoch", epochs), ("--out", outs)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise InputError(f"{name}: {', '.join(repeated)} given more than once")
    return list(zip(epochs, checkpoints, outs))


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, help="timm model name")
    parser.add_argument("--channel", required=True, help="a cache channel, or rgb (all three)")
    parser.add_argument("--cache-dir", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", nargs="+", help="epoch_NNNN.safetensors of a training run, one per --epoch"
    )
    source.add_argument("--weights", help="epoch 0: none (random init) or a weights file")
    parser.add_argument(
        "--model-kwargs", default="{}", help="extra timm.create_model kwargs (JSON)"
    )
    parser.add_argument(
        "--input-standardization",
        help="train.input_standardization (none | pretrained); a checkpoint's recorded value is "
        "used and must agree; epoch 0 default: none",
    )
    parser.add_argument(
        "--interpolation",
        choices=list(INTERPOLATIONS),
        help="train.interpolation of the crop resize; a checkpoint's recorded value is used and "
        "must agree; epoch 0 default: bicubic",
    )
    parser.add_argument(
        "--init-seed",
        type=int,
        default=0,
        help="epoch 0 with --weights none: train.seed, so the random init equals training's start",
    )
    parser.add_argument(
        "--settings",
        required=True,
        help="JSON: " + ", ".join(SETTINGS_KEYS) + " and seed_windows (crops seed) or "
        "crop_grid, input_size (crops grid)",
    )
    # speed only, not results: kept out of --settings so that changing them reruns nothing
    parser.add_argument(
        "--batch-size",
        type=batch_size_option,
        default=64,
        help="images per batch, or auto: on CUDA from the GPU's free memory and the model's "
        f"size (extraction_memory.py), elsewhere {CPU_BATCH_SIZE}",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument(
        "--epoch",
        type=int,
        nargs="+",
        required=True,
        help="epoch(s); several need one --checkpoint and one --out each, in the same order",
    )
    parser.add_argument(
        "--out", nargs="+", required=True, help="features .parquet, one per --epoch"
    )
    args = parser.parse_args(argv)
    jobs = epoch_jobs(args.epoch, args.checkpoint, args.out)
    # before any GPU time is spent on the epochs that precede a missing one
    for checkpoint in args.checkpoint or []:
        for required in (Path(checkpoint), meta_path(checkpoint)):
            if not required.is_file():
                raise InputError(f"checkpoint file not found: {required}")

    settings = json_object_option(args.settings, "--settings")
    missing = [key for key in SETTINGS_KEYS if key not in settings]
    if missing:
        raise InputError(f"--settings: missing key(s) {', '.join(missing)}")
    model_kwargs = json_object_option(args.model_kwargs, "--model-kwargs")

    channels = [args.channel]
    if args.channel == RGB:  # every cached channel, in meta.json order
        channels = list(load_cache(args.cache_dir, [])[2]["channels"])
    table, arrays, meta = load_cache(args.cache_dir, channels)
    if (args.batch_size != AUTO and args.batch_size < 1) or args.num_workers < 0:
        raise InputError(
            f"--batch-size {args.batch_size} / --num-workers {args.num_workers}: "
            "need a batch size of at least 1 and at least 0 workers"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch_size = args.batch_size
    if batch_size == AUTO:  # one plan for all epochs: they share the architecture
        field = arrays[channels[0]].shape[1:]
        batch_size, line = auto_batch_size(args.arch, model_kwargs, settings, field, device)
        print(line, file=sys.stderr)
    metadata = table[[c for c in table.columns if not c.startswith("path_")]].reset_index(drop=True)
    written: list[str] = []
    try:
        for epoch, checkpoint, out in jobs:
            one_epoch = argparse.Namespace(
                **{**vars(args), "epoch": epoch, "checkpoint": checkpoint}
            )
            model, preprocessing = load_model(one_epoch, model_kwargs)
            start = time.perf_counter()
            features = extract_features(
                model,
                [arrays[c] for c in channels],
                meta["clip_max"],
                settings,
                device,
                preprocessing["input_standardization"],
                interpolation=preprocessing["interpolation"],
                batch_size=batch_size,
                num_workers=args.num_workers,
            )
            seconds = time.perf_counter() - start
            print(
                f"epoch {epoch}: extracted {len(features)} images x {features.shape[1]} features "
                f"on {device} in {seconds:.1f} s ({len(features) / seconds:.1f} images/s)",
                file=sys.stderr,
            )
            values = pd.DataFrame(features, columns=feature_names(features.shape[1]))
            frame = pd.concat([metadata, values], axis=1)
            # what the features were made with, as given: compared with the config at start
            frame.attrs["extraction"] = {"settings": settings, "model_kwargs": model_kwargs}
            write_table(frame, out)
            written.append(out)
    except BaseException:
        # all or nothing: an epoch that fails leaves none of this call's outputs behind
        for path in written:
            Path(path).unlink(missing_ok=True)
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
