r"""Where feature extraction crops a cached field, and at what scale the model sees cells.

`evaluate.crops` chooses the crops (config.yaml; extraction's --settings carries the same keys):

seed (default)  WS-DINO's `Eval_BBBC021.py`: four fixed windows, albumentations
                `Crop(x_min, y_min, x_max, y_max)` on the 640 x 512 field (1280 x 1024 raw at
                resize_factor 0.5), fed at native resolution with no resize:
                x 64-320 | 320-544 by y 32-256 | 256-480, i.e. 256 x 224 (w x h) on the left and
                224 x 224 on the right. `seed_windows.boxes` are given on a field of
                `seed_windows.field` (height, width); on a cached field of another size
                (another resize_factor, the demo) each window scales with the field per axis and
                each side is rounded to a multiple of `seed_windows.multiple` (the ViT patch, 16)
                around the window's centre, so the backbone takes it unchanged. On the reference
                field the windows are exactly the seed's.
grid            the field tiled by `crop_grid` = [rows, cols], each tile resized to
                `input_size` x `input_size` (with the training interpolation).

`pixel_scales` states the scale of each: raw-field pixels per model pixel for training's global
and local crops and for the evaluation crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workflow_scripts.data.cache import output_shape
from workflow_scripts.errors import InputError

CROP_MODES = ("seed", "grid")
# torch.median (the seed) returns the lower of the two middle values of an even count;
# numpy's median their midpoint.
CROP_MEDIANS = ("lower", "midpoint")
# The --settings keys each crop mode reads (besides `embedding` and `crop_median`).
MODE_KEYS = {"seed": ("seed_windows",), "grid": ("crop_grid", "input_size")}
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)  # training's RandomResizedCrop ratio (multicrop.py)


@dataclass(frozen=True)
class Crop:
    """A window of the cached field (top, left, height, width) and the size the model sees it
    at (out_height, out_width); equal sizes mean no resize."""

    top: int
    left: int
    height: int
    width: int
    out_height: int
    out_width: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width

    @property
    def resized(self) -> bool:
        return (self.out_height, self.out_width) != (self.height, self.width)


def crop_boxes(height: int, width: int, grid: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the rows x cols tiles of an image, row by row; the few
    pixels left when the side is not divisible are dropped at the bottom/right."""
    rows, cols = grid
    tile_h, tile_w = height // rows, width // cols
    if tile_h < 1 or tile_w < 1:
        raise InputError(
            f"settings key 'crop_grid': {rows}x{cols} tiles do not fit a {height}x{width} image"
        )
    return [(r * tile_h, c * tile_w, tile_h, tile_w) for r in range(rows) for c in range(cols)]


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _scaled_side(
    start: float, end: float, factor: float, multiple: int, limit: int, what: str
) -> tuple[int, int]:
    """(begin, size) of the interval [start, end) scaled by `factor`: size rounded to a multiple
    of `multiple` (at least one), centred where the scaled interval is, moved inside [0, limit)."""
    size = max(multiple, _round_half_up((end - start) * factor / multiple) * multiple)
    if size > limit:
        raise InputError(
            f"settings key 'seed_windows': a {what} of {size} pixels does not fit the cached "
            f"field's {limit}"
        )
    begin = _round_half_up((start + end) / 2 * factor - size / 2)
    return min(max(begin, 0), limit - size), size


def seed_windows(height: int, width: int, windows: dict) -> list[Crop]:
    """The seed's windows on a cached field of height x width (see the module docstring).
    `windows`: {"field": [height, width], "boxes": [[x_min, y_min, x_max, y_max], ...],
    "multiple": int}."""
    field_h, field_w = windows["field"]
    multiple = int(windows["multiple"])
    if multiple < 1:
        raise InputError(f"settings key 'seed_windows.multiple': {multiple} is not positive")
    crops = []
    for i, box in enumerate(windows["boxes"]):
        x_min, y_min, x_max, y_max = box
        if not (0 <= x_min < x_max <= field_w and 0 <= y_min < y_max <= field_h):
            raise InputError(
                f"settings key 'seed_windows.boxes.{i}': {list(box)} is not x_min < x_max <= "
                f"{field_w}, y_min < y_max <= {field_h} (x_min, y_min, x_max, y_max on the "
                f"{field_h} x {field_w} field)"
            )
        top, h = _scaled_side(y_min, y_max, height / field_h, multiple, height, "window height")
        left, w = _scaled_side(x_min, x_max, width / field_w, multiple, width, "window width")
        crops.append(Crop(top, left, h, w, h, w))
    if not crops:
        raise InputError("settings key 'seed_windows.boxes': no window")
    return crops


def grid_crops(height: int, width: int, grid: tuple[int, int], size: int) -> list[Crop]:
    return [Crop(*box, size, size) for box in crop_boxes(height, width, grid)]


def evaluation_crops(height: int, width: int, settings: dict) -> list[Crop]:
    """The crops of every image of a height x width cached field, as `settings` choose."""
    mode = settings.get("crops")
    if mode not in CROP_MODES:
        raise InputError(f"settings key 'crops': {mode!r} is not one of {', '.join(CROP_MODES)}")
    missing = [key for key in MODE_KEYS[mode] if key not in settings]
    if missing:
        raise InputError(f"settings: crops '{mode}' needs key(s) {', '.join(missing)}")
    if mode == "seed":
        return seed_windows(height, width, settings["seed_windows"])
    return grid_crops(height, width, tuple(settings["crop_grid"]), int(settings["input_size"]))


def check_config(config: dict) -> None:
    """The evaluation crops fit the cached field (data.image_shape x preprocess.resize_factor).
    One rule of the start-up check (config_check.py)."""
    field = cached_field(config["data"]["image_shape"], config["preprocess"]["resize_factor"])
    try:
        evaluation_crops(*field, config["evaluate"])
    except InputError as err:
        raise InputError(
            f"config key 'evaluate' (cached field {field[1]} x {field[0]}, w x h): {err}"
        ) from None


def extraction_settings(evaluate: dict) -> dict:
    """The keys of config.yaml's `evaluate` section an extraction's output depends on: the
    crop mode's own keys, embedding and crop_median (a grid setting cannot change seed
    windows' features, and the other way round)."""
    mode = evaluate["crops"]
    keys = ("crops", *MODE_KEYS[mode], "embedding", "crop_median")
    return {key: evaluate[key] for key in keys}


def median_over_crops(per_crop: np.ndarray, how: str) -> np.ndarray:
    """(N, n_crops, D) numpy array -> (N, D): `lower` = torch.median's lower middle value (the
    seed), `midpoint` = numpy's median."""
    if how == "midpoint":
        return np.median(per_crop, axis=1)
    if how == "lower":
        return np.sort(per_crop, axis=1)[:, (per_crop.shape[1] - 1) // 2]
    raise InputError(f"settings key 'crop_median': {how!r} is not one of {', '.join(CROP_MEDIANS)}")


# ------------------------------------------------------------------ scale statement
def cached_field(image_shape: tuple[int, int], resize_factor: float) -> tuple[int, int]:
    """(height, width) of the cached field, as the image cache computes it."""
    return output_shape(int(image_shape[0]), int(image_shape[1]), float(resize_factor))


def training_crop_scale(
    field: tuple[int, int], resize_factor: float, crops: dict
) -> tuple[float, float]:
    """Raw-field pixels per model pixel of a training crop family ({size, scale: [lo, hi]}):
    RandomResizedCrop cuts an area of scale x the cached field (aspect ratio ~1 on average)
    and resizes it to size x size, so the side shrinks by sqrt(scale x H x W) / size."""
    area = field[0] * field[1]
    lo, hi = crops["scale"]
    return tuple(  # type: ignore[return-value]
        math.sqrt(s * area) / crops["size"] / resize_factor for s in (lo, hi)
    )


def evaluation_crop_scale(
    field: tuple[int, int], resize_factor: float, settings: dict
) -> tuple[float, float]:
    """Raw-field pixels per model pixel of the evaluation crops, (along y, along x)."""
    crop = evaluation_crops(field[0], field[1], settings)[0]
    return (
        crop.height / crop.out_height / resize_factor,
        crop.width / crop.out_width / resize_factor,
    )


def pixel_scales(
    image_shape: tuple[int, int], resize_factor: float, train: dict, evaluate: dict
) -> dict:
    """Raw-field pixels per model pixel (1 = the model sees the raw microscope pixels): training
    global and local crops (range over their scale), evaluation crops (y, x), with the cached
    field and evaluation crop sizes they come from."""
    field = cached_field(image_shape, resize_factor)
    crops = evaluation_crops(field[0], field[1], evaluate)
    return {
        "raw_field": list(image_shape),
        "cached_field": list(field),
        "resize_factor": resize_factor,
        "train_global": list(training_crop_scale(field, resize_factor, train["global_crops"])),
        "train_local": list(training_crop_scale(field, resize_factor, train["local_crops"])),
        "evaluation": list(evaluation_crop_scale(field, resize_factor, evaluate)),
        "evaluation_crops": evaluate["crops"],
        "evaluation_model_sizes": sorted({(c.out_height, c.out_width) for c in crops}),
    }


def describe_scales(scales: dict) -> str:
    """One plain sentence per family, for the README and the report."""
    global_lo, global_hi = scales["train_global"]
    local_lo, local_hi = scales["train_local"]
    eval_y, eval_x = scales["evaluation"]
    sizes = ", ".join(f"{w} x {h}" for h, w in scales["evaluation_model_sizes"])
    evaluation = (
        f"{eval_x:.2f}"
        if math.isclose(eval_y, eval_x, rel_tol=0.02)
        else (f"{eval_y:.2f} (y) / {eval_x:.2f} (x)")
    )
    field_h, field_w = scales["cached_field"]
    return (
        f"Raw-field pixels per model pixel (raw field {scales['raw_field'][1]} x "
        f"{scales['raw_field'][0]}, cached at resize_factor {scales['resize_factor']:g} as "
        f"{field_w} x {field_h}): training global crops {global_lo:.2f}-{global_hi:.2f}, "
        f"local crops {local_lo:.2f}-{local_hi:.2f}; evaluation crops ({scales['evaluation_crops']}"
        f", model input {sizes} w x h) {evaluation}."
    )
