"""Weak-label multi-crop (WS-DINO, `WS-DINO_BBBC021.py`): config `train.weak_label`.

`none` (the default) trains DINO as the seed does: every crop of a view comes from one image, and
each epoch visits every training image once (dataset.py's EpochIndexSampler). With a label
(`compound`, `treatment` or `moa`, columns of the cache's images.parquet):

- **Sampling**: each draw picks an image with probability 1 / (number of labels x number of
  images with its label), with replacement: every label is equally likely per draw, and so is
  every image within a label (WS-DINO: `WeightedRandomSampler(1 / count, num_samples=
  len(dataset))`). Drawn here in two uniform steps, label then image, which is that distribution.
- **Crops**: the two global crops come from the drawn image; the local crops from a partner image
  drawn uniformly among the images with the same label, the drawn image included (WS-DINO:
  `random.choice(same_idx)`). Boxes, flips and the rest of the recipe are unchanged.
- **DMSO** (`train.images: all`): every control field has one label of its own, DMSO, whatever
  the label column holds (a control's MoA may be empty): DMSO is then drawn as often as one
  compound (treatment, MoA), and its local crops come from another DMSO field.
- **`moa`** trains on the very labels NSC / NSCB retrieve, so its scores are circular; allowed
  (WS-DINO's repository has such runs), and the summary marks them "weak label = MoA (circular)".

Randomness is keyed, not streamed. An epoch's draws (image and partner per draw; as many draws
as training images, rounded down to a multiple of the process count) are a function of (seed,
epoch) alone; rank r of W takes draws r, r + W, r + 2W, ... (DistributedSampler's sharding), so
every rank draws a different, deterministic sample, the union over ranks does not depend on W,
and a resumed or world-size-continued run redraws exactly what an uninterrupted one would.
A draw's crops are keyed on (seed, epoch, draw position), not on the image, which may be drawn
more than once in an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import Sampler

from workflow_scripts.errors import InputError

NONE = "none"
WEAK_LABELS = ("compound", "treatment", "moa")
# the trailing entries of the keys of an epoch's draws and of a draw's crops: the two streams
# never share a key (and none is a 3-tuple, the key of a crop in `none` mode)
DRAWS_STREAM = (0, 0)
CROPS_STREAM = 1


def label_codes(
    table: pd.DataFrame, rows: np.ndarray, label: str, source: str | Path
) -> np.ndarray:
    """One integer label per training row (rows of `table`, the cache's images.parquet):
    the row's `label` value, or one code shared by every control (DMSO) row."""
    if label not in WEAK_LABELS:
        raise InputError(
            f"config key 'train.weak_label': '{label}' is not one of {NONE}, "
            f"{', '.join(WEAK_LABELS)}"
        )
    if label not in table.columns:
        raise InputError(f"{source}: no {label} column, needed by train.weak_label: {label}")
    subset = table.iloc[np.asarray(rows)]
    is_control = (
        subset["is_control"].to_numpy(dtype=bool)
        if "is_control" in subset.columns
        else np.zeros(len(subset), dtype=bool)
    )
    values = subset[label]
    missing = values.isna().to_numpy() & ~is_control
    if missing.any():
        at = int(np.flatnonzero(missing)[0])
        raise InputError(
            f"{source}: row {int(rows[at])} (image {subset['image_id'].iloc[at]!r}) has no "
            f"{label}, needed by train.weak_label: {label}"
        )
    codes, _ = pd.factorize(values.where(~is_control).astype(object), sort=True)
    codes[is_control] = codes.max(initial=-1) + 1
    return codes.astype(np.int64)


class WeakLabelSampler(Sampler):
    """Items (epoch, index, partner index, draw position) for MultiCropDataset: the image the
    global crops come from, the image the local crops come from, and the key of the crops.
    `codes`: the label of each dataset index. Call `set_epoch` before each epoch."""

    def __init__(self, codes: np.ndarray, *, num_replicas: int, rank: int, seed: int) -> None:
        codes = np.asarray(codes)
        self.order = np.argsort(codes, kind="stable")  # dataset indices grouped by label
        self.sizes = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.labels = np.flatnonzero(self.sizes)  # codes in use
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed % 2**64  # SeedSequence entropy must be non-negative
        self.num_samples = len(codes) // num_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(images, partners): the epoch's draws over all ranks, dataset indices."""
        rng = np.random.default_rng((self.seed, epoch, *DRAWS_STREAM))
        total = self.num_samples * self.num_replicas
        label = self.labels[rng.integers(0, len(self.labels), total)]
        start, size = self.starts[label], self.sizes[label]
        images = self.order[start + rng.integers(0, size)]
        partners = self.order[start + rng.integers(0, size)]
        return images, partners

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        epoch = self.epoch
        images, partners = self.draws(epoch)
        for position in range(self.rank, len(images), self.num_replicas):
            yield epoch, int(images[position]), int(partners[position]), position
