"""The seed's per-sample training path, re-implemented as the baseline of bench_datapath.py.

Per sample: PIL decodes each channel's full 16-bit TIFF, the field is clipped at clip_max and
normalised to float32 by albumentations, then every crop runs its own albumentations pipeline
(RandomResizedCrop bicubic + HorizontalFlip + VerticalFlip) on the full field; grey crops are
repeated to 3 channels and converted with ToTensorV2. (Repeating grey after cropping, not before,
is the cheaper order: the baseline is, if anything, flattered.)
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image


class SeedMultiCropDataset(torch.utils.data.Dataset):
    """Item i -> list of global then local crops (3, S, S) of field i, decoded from TIFF."""

    def __init__(self, tiff_paths: list[list[str]], settings: dict, clip_max: float) -> None:
        self.tiff_paths = tiff_paths  # per field: one TIFF per channel, in model order
        self.clip_max = clip_max
        self.normalize = A.Normalize(mean=0, std=1, max_pixel_value=clip_max)
        self.crop_pipelines = [
            A.Compose(
                [
                    A.RandomResizedCrop(
                        size=(crops["size"], crops["size"]),
                        scale=tuple(crops["scale"]),
                        ratio=tuple(crops.get("ratio", (1, 1))),  # the seed's (1, 1)
                        interpolation=cv2.INTER_CUBIC,
                    ),
                    A.HorizontalFlip(p=settings["hflip_p"]),
                    A.VerticalFlip(p=settings["vflip_p"]),
                ]
            )
            for crops in (settings["global_crops"], settings["local_crops"])
            for _ in range(crops["number"])
        ]
        self.to_tensor = ToTensorV2()

    def __len__(self) -> int:
        return len(self.tiff_paths)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        planes = [np.array(Image.open(path)) for path in self.tiff_paths[index]]
        image = planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)
        image = self.normalize(image=np.clip(image, 0, self.clip_max))["image"]
        crops = [pipeline(image=image)["image"] for pipeline in self.crop_pipelines]
        if image.ndim == 2:
            crops = [np.repeat(crop[..., None], 3, axis=-1) for crop in crops]
        return [self.to_tensor(image=crop)["image"] for crop in crops]
