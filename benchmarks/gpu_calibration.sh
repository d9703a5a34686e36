#!/usr/bin/env bash
# GPU calibration run (issue #7) on one CUDA device, in well under 9 minutes:
#   1. `python -m trainer.probe` measures the card (GEMM curve per dtype, HBM bandwidth, launch
#      overhead, SDPA; NCCL when 2+ GPUs) -> profile.yaml;
#   2. the real trainer over a small grid (presets, batch, mask ratio, precision,
#      checkpointing): runs/fit/ (the runs `vlscale calibrate` may see) and runs/heldout/
#      (another preset, another mask ratio, fp32, checkpointing: never seen in fitting), each
#      with the reference kernel timed right before and after it (its speed index);
#   3. `vlscale calibrate` fits the profile's overheads to runs/fit -> profile.fit.yaml;
#   4. `vlscale validate` of every run against the fitted profile (validation.json: replay vs
#      prediction, raw and speed-normalised, the probe-only error beside) and against the
#      catalog device with its published defaults (validation_catalog.json);
#   5. `vlscale stacks fit` measures the trainer's stack (pytorch-fsdp2) γ on this card's device
#      kind from every run, planned on the catalog device as plans without a hardware file are
#      -> stack.yaml (commit it to vlscale/specs/data/measured_stacks/<card>.yaml too).
#
#   OUT=/some/dir bash benchmarks/gpu_calibration.sh
#
# Budget: BUDGET_S (540 s = 9 min) for the whole script. Every torch step's timeout is cut to what
# is left before PLANNER_S, the time kept back for the torch-free steps 3-5 (each a few seconds:
# ~3 s for 13 CPU runs on 2 cores; each capped at 20 s), so the script ends within the budget.
#
# Also writes gpu_tests.log (the GPU-only tests, their exit status recorded) and env.txt. Commit
# $OUT under reports/validation/<card>/. torch must already be a CUDA build; the planner's
# pure-Python dependencies (pydantic, simpy, typer, scipy) must be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the results}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore
mkdir -p "$OUT/runs/fit" "$OUT/runs/heldout"
BUDGET_S=${BUDGET_S:-540}
PLANNER_S=80
torch_deadline=$((SECONDS + BUDGET_S - PLANNER_S))
cap() {  # the smaller of $1 seconds and what is left before the planner's share (at least 1)
  local left=$((torch_deadline - SECONDS))
  if (( left < 1 )); then left=1; fi
  echo $(( $1 < left ? $1 : left ))
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# GPU-only tests (skip-marked elsewhere); a failure is recorded, not hidden
status=0
timeout "$(cap 120)" $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1 || status=$?
echo "exit status: $status" >> "$OUT/gpu_tests.log"
tail -3 "$OUT/gpu_tests.log"

timeout "$(cap 120)" $PY -m trainer.probe --out "$OUT/profile.yaml" 2>&1 | tee "$OUT/probe.log" \
  || echo "probe failed (see probe.log)"

reference() {  # the reference kernel's time as a run-file record (the run's speed index)
  timeout "$(cap 20)" $PY -m trainer.probe.reference --device cuda --when "$1" || true
}
run_case() {  # split/name, then trainer flags
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  reference before > "$dir/ref.jsonl"
  timeout "$(cap 100)" $PY -m trainer.train --device cuda --steps 25 --timing-warmup 5 --log-every 25 \
    --phase-timing --out "$dir" "$@" || echo "case $name failed"
  reference after >> "$dir/ref.jsonl"
  if [ -f "$dir/run.jsonl" ]; then cat "$dir/run.jsonl" "$dir/ref.jsonl" > "$OUT/runs/$name.jsonl"; fi
}
run_case fit/vitb32_clip_b256        --model ViT-B-32 --recipe clip --precision bf16 --global-batch 256
run_case fit/vitb32_clip_b128        --model ViT-B-32 --recipe clip --precision bf16 --global-batch 128
run_case heldout/vitb32_clip_fp32        --model ViT-B-32 --recipe clip --precision fp32 --global-batch 128
run_case fit/vitb16_siglip_ring      --model ViT-B-16 --recipe siglip --loss-impl ring --precision bf16 --global-batch 128
run_case heldout/vitl14_clip_ckpt        --model ViT-L-14 --recipe clip --precision bf16 --global-batch 128 --checkpointing
run_case heldout/vitl14_flip50           --model ViT-L-14 --recipe clip --mask-ratio 0.5 --precision bf16 --global-batch 128 --checkpointing
run_case heldout/eva02b16_flip75         --model EVA02-B-16 --recipe eva-clip --mask-ratio 0.75 --precision bf16 --global-batch 128

VL="timeout 20 $PY -m vlscale.cli"
$VL validate "$OUT/runs" --out "$OUT/validation_catalog.json" \
  || echo "catalog validation failed"
if [ -f "$OUT/profile.yaml" ]; then
  $VL calibrate "$OUT/runs/fit" --hardware-file "$OUT/profile.yaml" --out "$OUT/profile.fit.yaml" \
    || echo "calibrate failed"
  $VL validate "$OUT/runs" --hardware-file "$OUT/profile.fit.yaml" --probe-profile "$OUT/profile.yaml" \
    --out "$OUT/validation.json" --report "$OUT/validation.html" || echo "validation failed"
fi
# the trainer's stack profile: γ per run on the catalog device, pooled; leave-one-out σ
$VL stacks fit "$OUT/runs" --stack pytorch-fsdp2 --out "$OUT/stack.yaml" 2>&1 \
  | tee "$OUT/stack_fit.log" || echo "stack fit failed (see stack_fit.log)"
echo "elapsed: ${SECONDS} s of ${BUDGET_S} s"
ls -l "$OUT" "$OUT/runs"
