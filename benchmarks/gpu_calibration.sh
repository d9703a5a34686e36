#!/usr/bin/env bash
# GPU calibration run (issue #4): measured step times of the real trainer on one CUDA device,
# next to what the planner predicts for the same configuration. Finishes in well under 10 min.
#
#   OUT=/some/dir bash benchmarks/gpu_calibration.sh
#
# Writes under $OUT: <case>.jsonl (run records), plan_<case>.json (planner prediction with the
# device's measured-free default utilisation), gpu_tests.log, env.txt. On a machine without the
# planner's pure-Python deps (pydantic, simpy, typer), install them first or carry wheels
# (see the device notes); torch must already be a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the results}
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONWARNINGS=ignore

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# GPU-only tests (skip-marked elsewhere): FLOP counting on CUDA, patch indices on device, ...
timeout 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1 || true
tail -3 "$OUT/gpu_tests.log"

run_case() {  # name, then trainer flags
  local name=$1; shift
  local dir; dir=$(mktemp -d)
  timeout 150 $PY -m trainer.train --device cuda --precision bf16 --steps 30 \
    --timing-warmup 5 --log-every 10 --out "$dir" "$@" || echo "case $name failed"
  [ -f "$dir/run.jsonl" ] && cp "$dir/run.jsonl" "$OUT/$name.jsonl"
}
run_case vitb32_clip   --model ViT-B-32 --recipe clip --global-batch 256
run_case vitl14_clip   --model ViT-L-14 --recipe clip --global-batch 128 --checkpointing
run_case vitl14_flip50 --model ViT-L-14 --recipe eva-clip --global-batch 128 --checkpointing
run_case so400m_ring   --model ViT-SO400M-14-SigLIP --recipe siglip --loss-impl ring \
                       --global-batch 64 --checkpointing

for spec in "vitb32_clip ViT-B-32 clip gather 256 --no-checkpointing" \
            "vitl14_clip ViT-L-14 clip gather 128 --checkpointing" \
            "vitl14_flip50 ViT-L-14 eva-clip gather 128 --checkpointing" \
            "so400m_ring ViT-SO400M-14-SigLIP siglip ring 64 --checkpointing"; do
  set -- $spec
  $PY -m vlscale.cli plan --device H100 --devices 1 --model "$2" --recipe "$3" \
    --loss-impl "$4" --global-batch "$5" "$6" --samples 1e6 --json > "$OUT/plan_$1.json" || true
done
ls -l "$OUT"
