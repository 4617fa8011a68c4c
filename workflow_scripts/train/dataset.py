r"""Training data: the cache's treated images (the seed's BBBC021_annotated.csv, no DMSO; config
`train.images: all` adds the DMSO controls), multi-cropped; no labels are used, unless
`train.weak_label` names one (weak_labels.py: the local crops then come from another image with
the same label).

Randomness is keyed, not streamed: the sampler yields (epoch, index) and each view's crops come
from a generator seeded with (seed, epoch, index). Augmentations therefore differ across images,
ranks and epochs, are reproducible from the seed, and do not depend on the number of workers,
on which worker gets which batch, or on a resume (persistent workers never see `set_epoch`; the
sampler, which lives in the main process, carries the epoch to them).

Preview what the model sees (one PNG of all crops of one image):
    python -m workflow_scripts.train.dataset --cache-dir results/cache --channel DAPI \
        --out crops.png
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from workflow_scripts import config as config_module
from workflow_scripts.atomic import atomic_path
from workflow_scripts.data.cache import load_cache
from workflow_scripts.data.crops import limit_opencv_threads
from workflow_scripts.errors import InputError, cli
from workflow_scripts.train.multicrop import MultiCrop
from workflow_scripts.train.weak_labels import CROPS_STREAM, NONE, WeakLabelSampler, label_codes

RGB = config_module.RGB
PREFETCH_BATCHES_PER_WORKER = 2
TREATED, ALL_IMAGES = "treated", "all"  # config train.images


def open_channel_arrays(cache_dir: str | Path, channel: str) -> tuple[list[np.memmap], dict]:
    """Memory maps feeding `channel` (a cache channel, or rgb: all of them in meta.json order)
    and the cache's meta.json; load_cache checks the layout against docs/formats.md."""
    _, _, meta = load_cache(cache_dir, [])
    names = list(meta["channels"]) if channel == RGB else [channel]
    _, arrays, meta = load_cache(cache_dir, names)
    return [arrays[name] for name in names], meta


def training_rows(cache_dir: str | Path, images: str) -> np.ndarray:
    """Cache rows to train on (config `train.images`): `treated` = rows whose `is_control` is
    false (the seed trained on BBBC021_annotated.csv, the treated images); `all` = every row."""
    table, _, _ = load_cache(cache_dir, [])
    if images == ALL_IMAGES:
        return np.arange(len(table))
    if images != TREATED:
        raise InputError(f"config key 'train.images': '{images}' is not one of treated, all")
    if "is_control" not in table.columns:
        raise InputError(
            f"{Path(cache_dir) / 'images.parquet'}: no is_control column, needed by "
            f"train.images: treated (use all, or rebuild the cache)"
        )
    rows = np.flatnonzero(~table["is_control"].to_numpy(dtype=bool))
    if len(rows) == 0:
        raise InputError(f"{Path(cache_dir) / 'images.parquet'}: no treated images to train on")
    return rows


class MultiCropDataset(Dataset):
    """Item (epoch, index) -> list of global then local crops of cache row `rows[index]`.
    Item (epoch, index, partner, draw) (WeakLabelSampler) -> the global crops of `rows[index]`
    and the local crops of `rows[partner]`, keyed on the draw."""

    def __init__(
        self,
        arrays: list[np.ndarray],
        transform: MultiCrop,
        seed: int,
        rows: np.ndarray | None = None,
    ) -> None:
        self.arrays = arrays  # (N, H, W) uint16 per channel, in model channel order
        self.transform = transform
        self.seed = seed % 2**64  # SeedSequence entropy must be non-negative
        self.rows = np.arange(len(arrays[0])) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, ...]) -> list[torch.Tensor]:
        if len(key) == 4:
            epoch, index, partner, draw = key
            rng = np.random.default_rng((self.seed, epoch, CROPS_STREAM, draw))
            return self.transform(self.field(index), rng, self.field(partner))
        epoch, index = key
        row = int(self.rows[index])
        # keyed on the cache row: an image's crops do not depend on which rows are trained on
        rng = np.random.default_rng((self.seed, epoch, row))
        return self.transform([array[row] for array in self.arrays], rng)

    def field(self, index: int) -> list[np.ndarray]:
        row = int(self.rows[index])
        return [array[row] for array in self.arrays]

    # A spawned worker gets the memmaps' file names and reopens them: pickling a memmap copies it.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "arrays": [array.filename for array in self.arrays]}

    def __setstate__(self, state: dict) -> None:
        state["arrays"] = [np.load(path, mmap_mode="r") for path in state["arrays"]]
        self.__dict__.update(state)


class EpochIndexSampler(DistributedSampler):
    """DistributedSampler (shuffle with seed + epoch, shard by rank, equal length per rank)
    whose items are (epoch, index), the keys MultiCropDataset seeds its crops with."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in super().__iter__())


def build_train_loader(
    cache_dir: str,
    channel: str,
    settings: dict,
    *,
    rank: int,
    world_size: int,
    seed: int,
    device_type: str,
) -> tuple[DataLoader, EpochIndexSampler | WeakLabelSampler]:
    """Loader over the `train.images` rows of the cache; each batch is
    [n_global x (B,3,G,G), n_local x (B,3,L,L)] float32 (value / clip_max). Call
    `sampler.set_epoch(epoch)` before each epoch. `settings` is the config `train` section of
    the architecture; `train.weak_label` other than none samples weak_labels.py's way."""
    arrays, meta = open_channel_arrays(cache_dir, channel)
    transform = MultiCrop.from_settings(settings, clip_max=meta["clip_max"])
    rows = training_rows(cache_dir, settings.get("images", TREATED))
    dataset = MultiCropDataset(arrays, transform, seed, rows)
    weak_label = settings.get("weak_label", NONE)
    if weak_label == NONE:
        sampler = EpochIndexSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        table, _, _ = load_cache(cache_dir, [])
        codes = label_codes(table, rows, weak_label, Path(cache_dir) / "images.parquet")
        sampler = WeakLabelSampler(codes, num_replicas=world_size, rank=rank, seed=seed)
    batch_size = settings["batch_size_per_gpu"]
    if len(sampler) < batch_size:
        raise InputError(
            f"config key 'train.batch_size_per_gpu': {batch_size} exceeds the {len(sampler)} "
            f"images per process ({len(dataset)} training images over {world_size} process(es))"
        )
    workers = settings["num_workers"]
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device_type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES_PER_WORKER if workers > 0 else None,
        worker_init_fn=limit_opencv_threads if workers > 0 else None,
    )
    return loader, sampler


def save_preview(crops: list[torch.Tensor], path: Path, title: str) -> None:
    """All crops of one view side by side, each at its own pixel size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [crop.shape[-1] for crop in crops]
    fig, axes = plt.subplots(
        1,
        len(crops),
        figsize=(sum(widths) / 60, max(widths) / 60 + 0.6),
        gridspec_kw={"width_ratios": widths},
        squeeze=False,
    )
    for ax, crop in zip(axes[0], crops):
        ax.imshow(crop.permute(1, 2, 0).numpy(), vmin=0, vmax=1)
        ax.set_title(f"{crop.shape[-1]} px", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Save the training crops of one cache image as PNG."
    )
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--channel", required=True, help="a cache channel, or rgb")
    parser.add_argument(
        "--config",
        action="append",
        help="config file(s), later overlay earlier (default: config.yaml)",
    )
    parser.add_argument(
        "--arch", help="architecture whose train settings apply (default: the first)"
    )
    parser.add_argument("--index", type=int, default=0, help="cache row")
    parser.add_argument("--epoch", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG path")
    args = parser.parse_args(argv)

    config = config_module.load(args.config or [config_module.REPO_DIR / "config.yaml"])
    arch = args.arch or config_module.architecture_names(config)[0]
    settings = config_module.train_settings(config, arch)
    arrays, meta = open_channel_arrays(args.cache_dir, args.channel)
    transform = MultiCrop.from_settings(settings, clip_max=meta["clip_max"])
    dataset = MultiCropDataset(arrays, transform, settings["seed"])
    if not 0 <= args.index < len(dataset):
        raise InputError(f"--index {args.index}: the cache has rows 0..{len(dataset) - 1}")
    crops = dataset[(args.epoch, args.index)]
    save_preview(crops, Path(args.out), f"{args.channel}, row {args.index}, epoch {args.epoch}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
