"""timm DINOv3 backbones: build one from a model name and a weights choice, and normalise its input.

Training and feature extraction both build backbones here, so a model name, its extra
`model_kwargs` and its input normalisation mean the same thing in every stage.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models._manipulate import reinit_non_persistent_buffers
from torch import nn

from workflow_scripts.errors import InputError

NO_WEIGHTS = "none"
HUB_WEIGHTS = "hub"


def build_backbone(
    arch: str, weights: str, model_kwargs: dict, drop_path_rate: float = 0.0
) -> nn.Module:
    """A timm model with `num_classes=0`, so its forward returns the pooled embedding (B, D).

    weights: "none" = random init; "hub" = timm's default pretrained download (needs internet);
    anything else = a local weights file (.safetensors or .pth) holding the timm state_dict,
    e.g. written by `workflow_scripts.model.fetch_weights`.
    """
    kwargs = dict(model_kwargs, num_classes=0, drop_path_rate=drop_path_rate)
    if weights == NO_WEIGHTS:
        return pool_on_class_token(_create(arch, pretrained=False, **kwargs))
    if weights == HUB_WEIGHTS:
        return pool_on_class_token(_create(arch, pretrained=True, **kwargs))
    return pool_on_class_token(_create_from_file(arch, Path(weights), model_kwargs, kwargs))


def backbone_from_state_dict(
    arch: str, state_dict: dict[str, torch.Tensor], model_kwargs: dict, drop_path_rate: float = 0.0
) -> nn.Module:
    """The backbone holding `state_dict`'s tensors themselves: built on the meta device and
    loaded with assign=True, so host memory holds the weights once (a random init and then a
    copy would hold a 7B model's 27 GB twice). Strict: RuntimeError when the keys or shapes do
    not fit. Parameters keep the model's dtypes (fp32)."""
    with torch.device("meta"):
        model = build_backbone(arch, NO_WEIGHTS, model_kwargs, drop_path_rate)
    dtypes = {name: t.dtype for name, t in model.state_dict().items()}
    state_dict = {
        name: t.to(dtypes[name]) if name in dtypes else t for name, t in state_dict.items()
    }
    model.load_state_dict(state_dict, strict=True, assign=True)
    # buffers computed from the configuration (RoPE periods) are in no state dict: make them
    # on the CPU, as construction does
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_meta:
                persistent = name not in module._non_persistent_buffers_set
                module.register_buffer(name, torch.empty_like(buffer, device="cpu"), persistent)
    reinit_non_persistent_buffers(model)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"{arch}: no values for {', '.join(left[:5])} after loading")
    return model


def pool_on_class_token(model: nn.Module) -> nn.Module:
    """ViTs: make the pooled output the CLS token, as DINO trains it and evaluation reads it.
    timm's DINOv3 ViTs default to the mean of the patch tokens, which would leave the CLS
    token's last layers without any training signal. ConvNeXts have only their pooled output."""
    if getattr(model, "cls_token", None) is not None:
        model.reset_classifier(0, global_pool="token")
    return model


def _create_from_file(arch: str, path: Path, model_kwargs: dict, kwargs: dict) -> nn.Module:
    if path.is_dir():
        raise InputError(
            f"weights {path} is a folder, not a weights file (architecture {arch}); give the "
            "file itself (.safetensors or .pth)"
        )
    if not path.is_file():
        raise InputError(f"weights file not found: {path} (architecture {arch})")
    if path.suffix == ".safetensors":
        # timm's own key layout (what fetch_weights writes) loads without a random init; any
        # other layout goes through timm's pretrained loader below, which converts it
        try:
            state_dict = load_file(path)
            return backbone_from_state_dict(
                arch, state_dict, model_kwargs, kwargs["drop_path_rate"]
            )
        except (RuntimeError, SafetensorError):
            pass
    try:
        return _create(
            arch, pretrained=True, pretrained_cfg_overlay=dict(file=os.fspath(path)), **kwargs
        )
    except InputError:
        raise
    except Exception as err:
        if _refused_pickle(err):
            raise InputError(
                f"weights file {path} refused: it holds pickled Python objects other than "
                "tensors, which are never loaded (torch.load weights_only=True); save the "
                "state_dict as .safetensors"
            ) from err
        if isinstance(err, RuntimeError):
            raise weights_mismatch(f"weights file {path}", arch, model_kwargs, err) from err
        raise InputError(f"weights file {path} cannot be read: {err}") from err


def _refused_pickle(err: BaseException) -> bool:
    """torch.load(weights_only=True) refused the pickle (torch raises UnpicklingError; timm
    may re-raise it as another type, so the whole chain is searched)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def weights_mismatch(source: str, arch: str, model_kwargs: dict, err: RuntimeError) -> InputError:
    """load_state_dict(strict=True) failed: name the file and the architecture it should fit."""
    # the error lists every mismatching key; the first lines suffice
    detail = " ".join(str(err).split())[:400]
    return InputError(
        f"{source} does not fit architecture {arch} (model_kwargs {model_kwargs}): {detail}"
    )


def _create(arch: str, **kwargs) -> nn.Module:
    if not timm.is_model(arch):
        raise InputError(f"unknown timm architecture '{arch}'")
    try:
        return timm.create_model(arch, **kwargs)
    except TypeError as err:  # an unknown model_kwargs key reaches the model constructor
        raise InputError(f"architecture {arch}: invalid model_kwargs: {err}") from err


def input_mean_std(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std the pretrained weights expect (ImageNet for DINOv3)."""
    data_config = timm.data.resolve_model_data_config(model)
    return tuple(data_config["mean"]), tuple(data_config["std"])


class InputNormalization(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> standardised with the backbone's pretrained mean/std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        # non-persistent: checkpoints hold only timm's own parameter names
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    @classmethod
    def for_backbone(cls, model: nn.Module) -> InputNormalization:
        return cls(*input_mean_std(model))


def input_standardization(model: nn.Module, mode: str) -> nn.Module:
    """What happens to [0, 1] images before the backbone (config train.input_standardization):
    "none" feeds them as they are (the seed's recipe: value / clip_max); "pretrained"
    standardises them with the mean/std the pretrained weights were trained with."""
    if mode == "none":
        return nn.Identity()
    if mode == "pretrained":
        return InputNormalization.for_backbone(model)
    raise InputError(f"config key 'train.input_standardization': unknown mode '{mode}'")
