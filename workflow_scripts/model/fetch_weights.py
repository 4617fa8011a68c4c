"""Download a DINOv3 backbone's pretrained weights once (login node with internet) and store
its timm state_dict as safetensors, so GPU jobs load a local file offline.

    python -m workflow_scripts.model.fetch_weights --arch vit_small_patch16_dinov3.lvd1689m \\
        --out weights/vit_small_patch16_dinov3.lvd1689m.safetensors

Without a connection to the Hugging Face hub (or with HF_HUB_OFFLINE set) it stops with one
line saying what could not be fetched and where to put the file instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.errors import InputError, cli
from workflow_scripts.model.backbone import HUB_WEIGHTS, build_backbone
from workflow_scripts.model.checkpoint import save_weights

# What huggingface_hub and its HTTP clients (requests, httpx) raise when the hub cannot be
# reached; matched by name along the exception chain, so no client library is imported here.
UNREACHABLE = {
    "LocalEntryNotFoundError",
    "OfflineModeIsEnabled",
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "ProxyError",
}


def hub_unreachable(err: BaseException) -> str | None:
    """Why the hub could not be reached (the innermost cause, briefly), or None when `err` is
    another failure."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    names = {type(e).__name__ for e in chain}
    if not names & UNREACHABLE:
        return None
    if "OfflineModeIsEnabled" in names:
        return "HF_HUB_OFFLINE is set"
    return " ".join(str(chain[-1]).split())[:200] or type(chain[-1]).__name__


def fetch(arch: str):
    try:
        return build_backbone(arch, HUB_WEIGHTS, {})
    except Exception as err:
        reason = hub_unreachable(err)
        if reason is None:
            raise
        raise InputError(
            f"could not fetch the pretrained weights of {arch}: the Hugging Face hub is "
            f"unreachable from this machine ({reason})"
        ) from None


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, help="timm DINOv3 model name")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors path")
    args = parser.parse_args(argv)
    try:
        model = fetch(args.arch)
    except InputError as err:
        raise InputError(
            f"{err}. Run this where the hub is reachable (e.g. the login node), or place the "
            f"weights file yourself at {args.out} (the timm state_dict as safetensors), or set "
            "the architecture's weights: path/to/file.safetensors in config.yaml"
        ) from None
    save_weights(model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.arch}, {n_params / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
