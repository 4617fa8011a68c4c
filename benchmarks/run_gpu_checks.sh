#!/usr/bin/env bash
# The one prepared GPU check behind the README's performance table. Made for a bare, offline GPU
# node (Python 3.12, a CUDA build of torch, timm; no jsonschema, albumentations or snakemake, no
# internet, nothing installed by this script) and one command of at most 10 minutes:
#
#   bash benchmarks/run_gpu_checks.sh              # GPU: at most DEADLINE_S=480 s by construction
#   bash benchmarks/run_gpu_checks.sh --scale-out  # GPU: preflight + the scale-out sections only
#   bash benchmarks/run_gpu_checks.sh --cpu-smoke [--scale-out]  # the same steps on CPU, toy sizes
#   bash benchmarks/run_gpu_checks.sh --dry-run ...  # list the steps (limit, command), run none
#
# STEP_CAPS=off in the environment runs every step to its end, with no cap and no deadline (the
# CPU smoke test: a slow machine must not fail it); the default caps the steps as below.
#
# Steps, most wanted first, each capped by its own limit and by the overall deadline
# (benchmarks/gpu_checks_lib.sh: a step gets min(limit, time left), a cut or failed step is
# recorded and the next one runs, a step with too little time left is skipped):
#   wheels          only with a .whl/ folder (benchmarks/make_wheels.sh): install it into WORK
#   preflight       versions (python, torch, CUDA, timm, GPU), the DINOv3 names in timm, every
#                   module the steps import; a failure here stops the script with one line
#   flops           analytic FLOP per image per step, ViT-S/16 and ViT-B/16 (benchmarks/flops.py)
#   train_step_*    seed vs tuned training steps, ViT-S/16 and ViT-B/16, random init (same cost
#                   as pretrained): images/s, GPU busy, MFU, peak memory (bench_train_step.py)
#   bench_eval      extraction images/s with the workflow's loader settings, and NSC + NSCB +
#                   mAP time for 103 treatments (benchmarks/bench_eval.py; JSON documents)
#   collective      one all_reduce through torch.distributed (NCCL on GPU, gloo on CPU)
#   end_to_end      the train CLI (tiny ViT, 2 epochs) and the extract CLI on its checkpoint, as
#                   the rules run them, no Snakemake (benchmarks/gpu_e2e.py); the training log
#                   must name the device
#   clip            per-parameter gradient clipping: ops per call, and ms on CUDA, multi-tensor
#                   vs one clip_grad_norm_ per parameter (benchmarks/bench_clip.py)
#   compile         GPU only, optional (only if time is left): ViT-S/16 tuned with torch.compile
#   (then the FSDP/planner section and the extraction-memory section, each described there)
#
# Results go to ${OUT:-results/gpu_checks} as they are made, so a killed run still returns what
# it measured (6 files; a lent machine hands back at most 8): summary.txt (each step's status,
# time and cap, then the device proofs), steps.log (every step's output, appended while it
# runs), flops.json, train_step_vit_small.json, train_step_vit_base.json and, when it ran,
# train_step_vit_small_compile.json. Bulky scratch (caches) goes to ${WORK:-/tmp/...}.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
OUT="${OUT:-results/gpu_checks}"
WORK="${WORK:-${TMPDIR:-/tmp}/bbbc021_gpu_checks}"
rm -rf "$WORK/e2e" "$WORK/site"  # this script's own scratch from an earlier run
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
SUMMARY="$OUT/summary.txt"
STEPS_LOG="$OUT/steps.log"
# shellcheck source=benchmarks/gpu_checks_lib.sh
source benchmarks/gpu_checks_lib.sh

SMOKE=0
SCALE_OUT_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) SMOKE=1 ;;
        --scale-out) SCALE_OUT_ONLY=1 ;;  # FSDP/planner + extraction memory (issue #12)
        --dry-run) DRY_RUN=1 ;;  # gpu_checks_lib.sh: record the steps, run none
        *) echo "usage: $0 [--cpu-smoke] [--scale-out] [--dry-run]" >&2; exit 2 ;;
    esac
done
if [[ $SMOKE -eq 1 ]]; then
    DEVICE=cpu
    TRAIN_ARGS=(--quick)
    EVAL_ARGS=(--repeats 1 --images 16 --num-workers 2)
    E2E_ARGS=(--images 48 --num-workers 2)
    E2E_LIMIT=240  # 2 shared CPU cores
else
    DEVICE=cuda
    TRAIN_ARGS=(--steps 30 --warmup 5 --profile-steps 5)
    EVAL_ARGS=(--repeats 1 --images 512 --full)
    E2E_ARGS=(--images 256 --num-workers 4)
    E2E_LIMIT=120
fi
VIT_S=vit_small_patch16_dinov3.lvd1689m
VIT_B=vit_base_patch16_dinov3.lvd1689m

preflight() {
    "$PYTHON" - <<'PY' || return 2
import importlib
import os
import platform
import sys

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "benchmarks")]
try:
    import timm
    import torch
except ImportError as err:
    sys.exit(f"error: {err}: the checks need torch and timm")
cuda = torch.cuda.is_available()
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"timm {timm.__version__}, {os.cpu_count()} cores")
print("device:", torch.cuda.get_device_name(0) if cuda else "no CUDA device")
names = ("vit_small_patch16_dinov3", "vit_base_patch16_dinov3")
missing = [name for name in names if not timm.is_model(name)]
if missing:
    sys.exit(f"error: timm {timm.__version__} has no {', '.join(missing)}: install a timm with "
             "the DINOv3 ViTs (the workflow is tested with the version in requirements.txt)")
if os.environ["DEVICE"] == "cuda" and not cuda:
    sys.exit(f"error: torch {torch.__version__} sees no CUDA device (use --cpu-smoke without one)")
for module in ("workflow_scripts.train.cli", "workflow_scripts.evaluate.extract", "flops",
               "bench_train_step", "bench_eval", "gpu_e2e", "bench_clip",
               "bench_extraction_memory"):
    try:
        importlib.import_module(module)
    except ImportError as err:
        sys.exit(f"error: importing {module} fails: {err}")
print("timm has the DINOv3 ViTs; every module the steps run imports")
PY
    if command -v nvidia-smi > /dev/null; then nvidia-smi; fi
}

collective() {
    "$PYTHON" - <<'PY'
import os
import torch
import torch.distributed as dist

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561")
cuda = torch.cuda.is_available()
backend = "nccl" if cuda else "gloo"
device = torch.device("cuda", 0) if cuda else torch.device("cpu")
dist.init_process_group(backend, rank=0, world_size=1, device_id=device if cuda else None)
value = torch.ones(4, device=device)
dist.all_reduce(value)
assert value.tolist() == [1.0] * 4, value
print(f"{backend} all_reduce on {device}: ok (one rank: the library and its kernels work; "
      f"the transport between GPUs needs several)")
dist.destroy_process_group()
PY
}

install_wheels() {  # the wheels of benchmarks/make_wheels.sh: the seed row's albumentations
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$WORK/site" .whl/*.whl
}

export DEVICE PYTHON WORK
export -f preflight collective install_wheels
checks_init  # the deadline counts from here
if compgen -G ".whl/*.whl" > /dev/null; then  # only when they came along
    step wheels 60 install_wheels
    [[ -d "$WORK/site" ]] && export PYTHONPATH="$WORK/site:$PYTHONPATH"
fi
step preflight 60 preflight
if grep -q "^preflight .*exit [^0]" "$SUMMARY"; then
    echo "preflight failed: $(grep -h '^error:' "$STEPS_LOG" | tail -n 1)" | tee -a "$SUMMARY"
    exit 2
fi
if [[ $SCALE_OUT_ONLY -eq 0 ]]; then
step flops 60 "$PYTHON" benchmarks/flops.py --json "$OUT/flops.json"
step train_step_vit_small 150 "$PYTHON" benchmarks/bench_train_step.py --arch "$VIT_S" \
    --device "$DEVICE" "${TRAIN_ARGS[@]}" --tmpdir "$WORK" --json "$OUT/train_step_vit_small.json"
step train_step_vit_base 150 "$PYTHON" benchmarks/bench_train_step.py --arch "$VIT_B" \
    --device "$DEVICE" "${TRAIN_ARGS[@]}" --tmpdir "$WORK" --json "$OUT/train_step_vit_base.json"
step bench_eval 90 "$PYTHON" benchmarks/bench_eval.py "${EVAL_ARGS[@]}"
step collective 30 collective
step end_to_end "$E2E_LIMIT" "$PYTHON" benchmarks/gpu_e2e.py --work "$WORK/e2e" "${E2E_ARGS[@]}"
step clip 40 "$PYTHON" benchmarks/bench_clip.py
if [[ $DEVICE == cuda ]]; then
    optional_step compile 120 "$PYTHON" benchmarks/bench_train_step.py --arch "$VIT_S" \
        --device cuda --configs tuned --compile --steps 10 --warmup 3 --profile-steps 0 \
        --tmpdir "$WORK" --json "$OUT/train_step_vit_small_compile.json"
fi
fi  # SCALE_OUT_ONLY

# ---------------------------------------------------------------- FSDP vs DDP, memory planner
# (issue #12; its own section.) fsdp_vs_ddp: the training CLI under torchrun with --strategy ddp
# and fsdp, ViT-L/16 (CPU smoke: tiny model), one process per GPU (FSDP shards nothing on one
# GPU), images/s and rank 0's peak memory next to the planner's estimate
# (benchmarks/bench_fsdp.py). memory_plan: the planner's table for every DINOv3 ViT at this
# machine's GPU count and at 2 nodes x 8 GPUs, ViT-H+ and 7B included. Results: in steps.log
# and the FSDP/DDP result lines in summary.txt.
N_GPUS=$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')
if [[ "$DEVICE" == cpu ]]; then
    FSDP_ARGS=(--quick --nproc 2 --batch 8)
else
    FSDP_ARGS=(--arch vit_large_patch16_dinov3.lvd1689m --nproc "$N_GPUS" --steps 20)
fi
step fsdp_vs_ddp 420 "$PYTHON" benchmarks/bench_fsdp.py "${FSDP_ARGS[@]}" --work "$WORK"
step memory_plan 120 bash -c "\"$PYTHON\" -m workflow_scripts.cluster.memory_plan --all-models \
    --gpus $N_GPUS && \"$PYTHON\" -m workflow_scripts.cluster.memory_plan --all-models --gpus 8 \
    --nodes 2 --activation-checkpointing true"
grep -h '"strategy"' "$STEPS_LOG" >> "$SUMMARY" || true

# ---------------------------------------------------------------- extraction memory
# (issue: scale-out part 5.) extraction_memory: GPU: ViT-L/16 extracted at the batch derived
# from the free memory, torch.cuda.max_memory_allocated vs the estimate; then the 7B built on
# meta and filled on the GPU (no CPU copy, random values), one batch at the batch derived for
# 80 GB, peak vs 80 GB (benchmarks/bench_extraction_memory.py). CPU smoke: the tiny ViT's
# estimate vs a real CPU forward. Result lines in summary.txt.
if [[ "$DEVICE" == cpu ]]; then
    step extraction_memory 90 "$PYTHON" benchmarks/bench_extraction_memory.py --quick
else
    step extraction_memory 150 bash -c "\"$PYTHON\" benchmarks/bench_extraction_memory.py \
        --cuda-arch vit_large_patch16_dinov3.lvd1689m && \"$PYTHON\" \
        benchmarks/bench_extraction_memory.py --cuda-arch vit_7b_patch16_dinov3.lvd1689m \
        --meta-init --memory-gb 80"
fi
grep -h -E "^extraction memory |^tiny " "$STEPS_LOG" >> "$SUMMARY" || true

{
    echo "-- proofs"
    grep -h -E "all_reduce on|process\(es\) on|^end to end on|^(python|device:) " "$STEPS_LOG"
    echo "total $((SECONDS - CHECKS_START))s of a ${DEADLINE_S}s deadline"
} >> "$SUMMARY"
echo "results in $OUT:"
cat "$SUMMARY"
exit $FAILED
