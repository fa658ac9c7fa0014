#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one run, for a short loan of a GPU machine (under 8 minutes on an
# H100/H200), each step's output kept apart in OUT so that a step that fails or runs out of time loses only itself.
#
#   bash benchmarks/gpu.sh [OUT]            # on the GPU machine, from the repository root (default OUT: gpu-results)
#   bash benchmarks/gpu.sh --smoke [OUT]    # every step at toy sizes on the CPU: checks the commands, measures nothing
#   ONLY="demo folder" bash benchmarks/gpu.sh  # only the named steps (a rerun of those that failed)
#
# Steps (each with its own time limit, in seconds):
#   env       nvidia-smi, torch/CUDA/timm versions
#   vitb      ViT-B/16 at 224, batch 64, bf16: training and inference steps against timm eager, MFU (vitkit bench)
#   vitb-c    the same with torch.compile (vitkit's model compiled, timm's eager)
#   vits      ViT-S/16 at 224, batch 128, bf16, against timm eager
#   ckpt      ViT-L/16 at 224, batch 32: peak memory and step time with and without gradient checkpointing
#   demo      the demo recipe (configs/demo.yaml, 18 epochs of Fashion-MNIST) end to end, wall time and test top-1;
#             needs Fashion-MNIST at $FMNIST_ROOT/fashion-mnist (the machine has no network)
#   photos    writes 10,000 photo-like JPEGs of varied sizes, train/ and val/ (benchmarks/frozen_features.py)
#   folder    ViT-S/16 training at 224 on them, end to end: the first epoch (which fills the decode cache) and the
#             second (metrics.csv of the run)
#   folder-timm  the same model, crops and epochs through timm's data pipeline (benchmarks/timm_folder.py), with
#             as many loader workers as the machine has cores
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT=${1:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python}
VITKIT="$PY -m vitkit"
FAILED=()

step() {  # step NAME SECONDS COMMAND...: run, keep stdout/stderr in OUT/NAME.{json,log}, never stop the script
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  limit=$((limit * SCALE))
  local start=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"; then
    echo "$name: done in $((SECONDS - start)) s"
  else
    echo "$name: FAILED or timed out after $((SECONDS - start)) s (see $OUT/$name.log)"
    FAILED+=("$name")
  fi
}

if [ "$SMOKE" = 1 ]; then  # toy sizes on the CPU: every command line and option is exercised, nothing measured
  DEVICE=cpu PREC=fp32 SCALE=5  # time limits x5: a CPU runs even toy sizes slowly
  B_MODEL=vit_micro_patch7_28 B_SIZE=28 B_BATCH=8 S_MODEL=vit_micro_patch7_28 S_BATCH=8 L_MODEL=vit_micro_patch7_28
  L_BATCH=4 STEPS="--steps 2 --warmup 1 --repeats 1" DEMO_SET="--epochs 1 --set train.compile=false --set data.val_fraction=0.85"
  PHOTOS=60 FOLDER_SIZE=32 FOLDER_BATCH=8
else
  DEVICE=cuda PREC=bf16 SCALE=1
  B_MODEL=vit_base_patch16_224 B_SIZE=224 B_BATCH=64 S_MODEL=vit_small_patch16_224 S_BATCH=128
  L_MODEL=vit_large_patch16_224 L_BATCH=32 STEPS="--steps 20 --warmup 5 --repeats 3" DEMO_SET=""
  PHOTOS=10000 FOLDER_SIZE=224 FOLDER_BATCH=128
fi

step env 60 bash -c "(nvidia-smi || echo 'no nvidia-smi'); $PY -c 'import torch, timm, platform; \
print(platform.node(), torch.__version__, torch.version.cuda, timm.__version__); \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'"

BENCH="$VITKIT bench --device $DEVICE --precision $PREC --mode both --compare timm --json $STEPS"
step vitb 150 $BENCH --model $B_MODEL --img-size $B_SIZE --batch-size $B_BATCH
step vitb-c 240 $BENCH --model $B_MODEL --img-size $B_SIZE --batch-size $B_BATCH --compile
step vits 120 $BENCH --model $S_MODEL --img-size $B_SIZE --batch-size $S_BATCH
step ckpt 150 bash -c "$VITKIT bench --device $DEVICE --precision $PREC --mode train --json $STEPS --model $L_MODEL \
--img-size $B_SIZE --batch-size $L_BATCH && $VITKIT bench --device $DEVICE --precision $PREC --mode train --json \
$STEPS --model $L_MODEL --img-size $B_SIZE --batch-size $L_BATCH --grad-checkpointing"

ROOT_FLAG=()
if [ -n "${FMNIST_ROOT:-}" ]; then ROOT_FLAG=(--set "data.root=$FMNIST_ROOT"); fi
step demo 150 bash -c "rm -rf '$OUT/runs/demo' && $VITKIT train --config configs/demo.yaml --device $DEVICE --out '$OUT/runs' --name demo \
--no-progress ${ROOT_FLAG[*]:-} $DEMO_SET && $VITKIT evaluate '$OUT/runs/demo/best.safetensors' fashion-mnist \
--split test --json ${FMNIST_ROOT:+--data-root $FMNIST_ROOT}"

step photos 200 bash -c "rm -rf '$OUT/photos' && $PY -c 'import sys; sys.path.insert(0, \"benchmarks\"); \
from pathlib import Path; from frozen_features import write_photos; write_photos(Path(\"$OUT/photos\"), $PHOTOS, val_every=10)'"
# the same recipe on both sides: random-resized crops of 80-100% of the area, flips, no colour policy or erasing
step folder 300 bash -c "rm -rf '$OUT/runs/folder' && $VITKIT train '$OUT/photos' --model vit_small_patch16_224 \
--img-size $FOLDER_SIZE --batch-size $FOLDER_BATCH --epochs 2 --device $DEVICE --precision $PREC --out '$OUT/runs' \
--name folder --no-progress --set output.report=false --set data.policy=none --set data.erase=0 && \
cat '$OUT/runs/folder/metrics.csv'"
step folder-timm 300 $PY benchmarks/timm_folder.py "$OUT/photos" --preset photos --img-size $FOLDER_SIZE \
--batch-size $FOLDER_BATCH --epochs 2 --device $DEVICE --precision $PREC --workers "$(nproc)"

echo "results in $OUT/ (*.out: each step's answer, *.log: its log)"
if [ ${#FAILED[@]} -gt 0 ]; then echo "failed: ${FAILED[*]}"; exit 1; fi
