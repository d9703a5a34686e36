#!/usr/bin/env bash
# GPU calibration run (issue #7): the real trainer on one CUDA device over a small grid (presets,
# batch, mask ratio, precision, checkpointing), then `vlscale validate` of those runs against the
# catalog device the trainer recorded. Finishes in well under 9 minutes.
#
#   OUT=/some/dir bash benchmarks/gpu_calibration.sh
#
# Writes under $OUT: runs/<case>.jsonl (run records), validation.json (`vlscale validate --json`
# contract), gpu_tests.log (the GPU-only tests, their exit status recorded), env.txt. Commit the
# records under reports/validation/<card>/. torch must already be a CUDA build; the planner's
# pure-Python dependencies (pydantic, simpy, typer, scipy) must be installed.
#
# Not yet here: a CUDA probe (trainer.probe measures CPUs); the catalog's op-level defaults and
# the device kind's framework efficiency are what these runs validate.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the results}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore
mkdir -p "$OUT/runs"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# GPU-only tests (skip-marked elsewhere); a failure is recorded, not hidden
status=0
timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1 || status=$?
echo "exit status: $status" >> "$OUT/gpu_tests.log"
tail -3 "$OUT/gpu_tests.log"

run_case() {  # name, then trainer flags
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  timeout 100 $PY -m trainer.train --device cuda --steps 25 --timing-warmup 5 --log-every 25 \
    --phase-timing --out "$dir" "$@" || echo "case $name failed"
  [ -f "$dir/run.jsonl" ] && cp "$dir/run.jsonl" "$OUT/runs/$name.jsonl"
}
run_case vitb32_clip_b256        --model ViT-B-32 --recipe clip --precision bf16 --global-batch 256
run_case vitb32_clip_b128        --model ViT-B-32 --recipe clip --precision bf16 --global-batch 128
run_case vitb32_clip_fp32        --model ViT-B-32 --recipe clip --precision fp32 --global-batch 128
run_case vitb16_siglip_ring      --model ViT-B-16 --recipe siglip --loss-impl ring --precision bf16 --global-batch 128
run_case vitl14_clip_ckpt        --model ViT-L-14 --recipe clip --precision bf16 --global-batch 128 --checkpointing
run_case vitl14_flip50           --model ViT-L-14 --recipe clip --mask-ratio 0.5 --precision bf16 --global-batch 128 --checkpointing
run_case eva02b16_flip75         --model EVA02-B-16 --recipe eva-clip --mask-ratio 0.75 --precision bf16 --global-batch 128

$PY -m vlscale.cli validate "$OUT/runs" --out "$OUT/validation.json" || true
ls -l "$OUT" "$OUT/runs"
