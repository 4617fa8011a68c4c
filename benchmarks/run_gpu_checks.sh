#!/usr/bin/env bash
# The one prepared GPU check behind the README's performance table. On a machine with one NVIDIA
# GPU, from anywhere inside the repository, after `pip install -r requirements.txt -e .` (the
# script installs nothing; it needs a CUDA build of torch):
#
#   bash benchmarks/run_gpu_checks.sh              # GPU: about 5-8 minutes
#   bash benchmarks/run_gpu_checks.sh --cpu-smoke  # the same steps on CPU at toy sizes
#
# Steps, most wanted first, each under its own time limit (a failed or cut step is recorded and
# the next one runs):
#   device          nvidia-smi, torch / CUDA / timm versions
#   flops           analytic FLOP per image per step, ViT-S/16 and ViT-B/16 (benchmarks/flops.py)
#   train_step_*    seed vs tuned training steps, ViT-S/16 and ViT-B/16, random init (same cost
#                   as pretrained) (benchmarks/bench_train_step.py)
#   bench_eval      extraction images/s and NSC + NSCB + mAP time for 103 treatments
#                   (benchmarks/bench_eval.py; it prints JSON documents)
#   collective      one all_reduce through torch.distributed (NCCL on GPU, gloo on CPU)
#   demo            the demo pipeline once with its model on the GPU (gpus: 1); the training log
#                   lines must name the device
#   train_step_vit_small_compile   ViT-S/16 tuned with torch.compile (last: compiling is slow)
#
# Results, at most 8 small files (what a lent machine hands back), go to ${OUT:-results/gpu_checks}:
# summary.txt (each step's status and time, the device proofs), device.txt, flops.json,
# train_step_vit_small.json, train_step_vit_base.json, train_step_vit_small_compile.json,
# bench_eval.log and logs.tar.gz (every step's log, the demo's logs and summary.csv). The bulky
# work (demo data, caches) stays in ${WORK:-/tmp/bbbc021_gpu_checks}.
set -uo pipefail

cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
OUT="${OUT:-results/gpu_checks}"
WORK="${WORK:-${TMPDIR:-/tmp}/bbbc021_gpu_checks}"
rm -rf "$WORK/demo" "$WORK/logs"  # a rerun must run the demo again, not find it done
mkdir -p "$OUT" "$WORK/logs"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
LOGS="$WORK/logs"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    DEVICE=cpu
    TRAIN_ARGS=(--quick)
    COMPILE_ARGS=(--quick)
    EVAL_ARGS=(--repeats 1 --images 16)
    DEMO_CORES=2
    DEMO_LIMIT=1500  # 2 shared CPU cores
elif [[ $# -eq 0 ]]; then
    DEVICE=cuda
    TRAIN_ARGS=(--steps 30 --warmup 5 --profile-steps 5)
    COMPILE_ARGS=(--steps 30 --warmup 8 --profile-steps 5)
    EVAL_ARGS=(--repeats 1 --images 512 --full)
    DEMO_CORES=8
    DEMO_LIMIT=420
else
    echo "usage: $0 [--cpu-smoke]" >&2
    exit 2
fi
VIT_S=vit_small_patch16_dinov3.lvd1689m
VIT_B=vit_base_patch16_dinov3.lvd1689m

FAILED=0
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
step() {  # step NAME LIMIT_S LOG COMMAND...: run under a time limit, log, record the status
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS status
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=15 "$limit" bash -c '"$@"' "$name" "$@" > "$log" 2>&1
    status=$?
    if [[ $status == 0 ]]; then
        tail -n 12 "$log"
    else
        FAILED=1
        tail -n 30 "$log"
    fi
    printf '%-30s exit %-3s %4ss\n' "$name" "$status" "$((SECONDS - start))" | tee -a "$SUMMARY"
}

device_info() {
    if command -v nvidia-smi > /dev/null; then nvidia-smi; fi
    python -c 'import torch, timm
print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'
    echo "cpu cores: $(nproc)"
}

collective() {
    python - <<'EOF'
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
EOF
}

demo_on_device() {
    # overlay: the demo's tiny model with gpus: 1, so the real rules run the GPU code paths
    # (CUDA device, bf16 autocast, pinned memory, fused AdamW)
    cat > "$WORK/demo_overlay.yaml" <<EOF
output_dir: $WORK/demo
architectures:
  - name: $VIT_S
    weights: none
    gpus: 1
    model_kwargs: {depth: 2, embed_dim: 64, num_heads: 2}
EOF
    snakemake --cores "$DEMO_CORES" --configfile config/demo.yaml "$WORK/demo_overlay.yaml" || return 1
    echo "training logs, device line:"
    grep -h "process(es) on" "$WORK"/demo/logs/train/*/*.log
    grep -qh "process(es) on $DEVICE" "$WORK"/demo/logs/train/*/*.log
}

export WORK DEVICE DEMO_CORES VIT_S
export -f device_info collective demo_on_device
step device 60 "$OUT/device.txt" device_info
step flops 120 "$LOGS/flops.log" python benchmarks/flops.py --json "$OUT/flops.json"
step train_step_vit_small 180 "$LOGS/train_step_vit_small.log" python benchmarks/bench_train_step.py \
    --arch "$VIT_S" --device "$DEVICE" "${TRAIN_ARGS[@]}" --json "$OUT/train_step_vit_small.json"
step train_step_vit_base 180 "$LOGS/train_step_vit_base.log" python benchmarks/bench_train_step.py \
    --arch "$VIT_B" --device "$DEVICE" "${TRAIN_ARGS[@]}" --json "$OUT/train_step_vit_base.json"
step bench_eval 150 "$OUT/bench_eval.log" python benchmarks/bench_eval.py "${EVAL_ARGS[@]}"
step collective 60 "$LOGS/collective.log" collective
step demo "$DEMO_LIMIT" "$LOGS/demo.log" demo_on_device
step train_step_vit_small_compile 180 "$LOGS/train_step_vit_small_compile.log" \
    python benchmarks/bench_train_step.py --arch "$VIT_S" --device "$DEVICE" --configs tuned --compile \
    "${COMPILE_ARGS[@]}" --json "$OUT/train_step_vit_small_compile.json"

# ---------------------------------------------------------------- FSDP vs DDP, memory planner
# (issue #12; its own section.) fsdp_vs_ddp: the training CLI under torchrun with --strategy ddp
# and fsdp, ViT-L/16 (CPU smoke: tiny model), one process per GPU (FSDP shards nothing on one
# GPU), images/s and rank 0's peak memory next to the planner's estimate
# (benchmarks/bench_fsdp.py). memory_plan: the planner's table for every DINOv3 ViT at this
# machine's GPU count and at 2 nodes x 8 GPUs, ViT-H+ and 7B included. Results: in logs.tar.gz
# (logs/fsdp_vs_ddp.log, logs/memory_plan.log) and two summary lines.
N_GPUS=$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')
if [[ "$DEVICE" == cpu ]]; then
    FSDP_ARGS=(--quick --nproc 2 --batch 8)
else
    FSDP_ARGS=(--arch vit_large_patch16_dinov3.lvd1689m --nproc "$N_GPUS" --steps 20)
fi
step fsdp_vs_ddp 420 "$LOGS/fsdp_vs_ddp.log" python benchmarks/bench_fsdp.py "${FSDP_ARGS[@]}" \
    --work "$WORK"
step memory_plan 120 "$LOGS/memory_plan.log" bash -c "python -m workflow_scripts.train.memory_plan \
    --all-models --gpus $N_GPUS && python -m workflow_scripts.train.memory_plan --all-models \
    --gpus 8 --nodes 2 --activation-checkpointing true"
grep -h '"strategy"' "$LOGS/fsdp_vs_ddp.log" >> "$SUMMARY"

{
    echo "-- proofs"
    tail -n 1 "$LOGS/collective.log"
    grep -h "process(es) on" "$LOGS/demo.log"
} >> "$SUMMARY"
cp "$WORK/demo_overlay.yaml" "$LOGS/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs $(cd "$WORK" && ls -d demo/logs demo/summary/summary.csv 2>/dev/null)
echo "results in $OUT:"
cat "$SUMMARY"
exit $FAILED
