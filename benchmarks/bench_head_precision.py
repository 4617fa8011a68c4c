"""Noise that bf16 autocast adds to the DINO teacher's sharpened distribution, by how much of the
head (MLP 384 -> 2048 -> 2048 -> 256, prototype layer 256 -> 65,536) runs in bf16.

The teacher's logits are cosines in [-1, 1] divided by the teacher temperature (0.04 after
warm-up): an error e of a logit is e / 0.04 nats of log-probability. Against the head in fp32
on the fp32 embedding, per row of `--rows` random embeddings:
  max / mean |logit error| / T              in nats
  KL(fp32 teacher || autocast teacher)      in nats, mean and max over rows
for: the whole head under bf16 autocast (train.head.fp32: false), only the prototype layer in
fp32, and the whole head in fp32 (train.head.fp32: true; the embedding it receives is still
the bf16 backbone output). CPU bf16 rounds as CUDA's does (round to nearest even, fp32
accumulation), so the CPU numbers stand for the GPU's.

    python benchmarks/bench_head_precision.py [--rows 256] [--out-dim 65536] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from workflow_scripts.train.head import DINOHead  # noqa: E402

TEACHER_TEMP = 0.04


@torch.no_grad()
def autocast_logits(head: DINOHead, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of the three variants under CPU bf16 autocast (embeddings: the backbone's bf16)."""
    embeddings = embeddings.bfloat16()
    fp32, head.fp32 = head.fp32, False
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            whole_bf16 = head(embeddings)
            bottleneck = head.mlp(embeddings)
            with torch.autocast("cpu", enabled=False):
                prototype_fp32 = head.prototype_logits(bottleneck.float())
            head.fp32 = True
            whole_fp32 = head(embeddings)
    finally:
        head.fp32 = fp32
    return {"head bf16": whole_bf16, "prototypes fp32": prototype_fp32, "head fp32": whole_fp32}


def noise(logits: torch.Tensor, reference: torch.Tensor) -> dict:
    error = (logits.double() - reference).abs() / TEACHER_TEMP
    log_p = torch.log_softmax(reference / TEACHER_TEMP, dim=1)
    log_q = torch.log_softmax(logits.double() / TEACHER_TEMP, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    return {
        "dtype": str(logits.dtype).removeprefix("torch."),
        "max_error_nats": float(error.max()),
        "mean_error_nats": float(error.mean()),
        "mean_kl_nats": float(kl.mean()),
        "max_kl_nats": float(kl.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256, help="teacher outputs (crops x batch)")
    parser.add_argument("--embed-dim", type=int, default=384, help="backbone width (ViT-S: 384)")
    parser.add_argument("--out-dim", type=int, default=65536, help="train.head.out_dim")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    head = DINOHead(args.embed_dim, args.out_dim, norm_last_layer=False)
    embeddings = torch.randn(args.rows, args.embed_dim)
    with torch.no_grad():
        reference = head(embeddings).double()
    results = {
        "teacher_temp": TEACHER_TEMP,
        "rows": args.rows,
        "embed_dim": args.embed_dim,
        "out_dim": args.out_dim,
        "variants": {},
    }
    print(
        f"teacher logits / {TEACHER_TEMP} under bf16 autocast, error against fp32 in nats "
        f"({args.rows} rows, {args.embed_dim} -> 2048 -> 2048 -> 256 -> {args.out_dim})"
    )
    print(f"{'variant':<16} {'max |err|':>10} {'mean |err|':>11} {'mean KL':>9} {'max KL':>9}")
    for name, logits in autocast_logits(head, embeddings).items():
        row = results["variants"][name] = noise(logits, reference)
        print(
            f"{name:<16} {row['max_error_nats']:>10.2e} {row['mean_error_nats']:>11.2e} "
            f"{row['mean_kl_nats']:>9.2e} {row['max_kl_nats']:>9.2e}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
