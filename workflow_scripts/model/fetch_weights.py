"""Download a DINOv3 backbone's pretrained weights once (login node with internet) and store
its timm state_dict as safetensors, so GPU jobs load a local file offline.

    python -m workflow_scripts.model.fetch_weights --arch vit_small_patch16_dinov3.lvd1689m \\
        --out weights/vit_small_patch16_dinov3.lvd1689m.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workflow_scripts.errors import cli
from workflow_scripts.model.backbone import HUB_WEIGHTS, build_backbone
from workflow_scripts.model.checkpoint import save_weights


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, help="timm DINOv3 model name")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors path")
    args = parser.parse_args(argv)
    model = build_backbone(args.arch, HUB_WEIGHTS, {})
    save_weights(model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.arch}, {n_params / 1e6:.1f} M parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
