#!/usr/bin/env bash
# Train the default shapes model from scratch, evaluate it, and export it in float16.
# Usage: scripts/train_default_model.sh OUT_DIR [VAE_MINUTES] [LDM_MINUTES] [PRESET] [DEVICE]
# On the GPU (the shipped model): scripts/train_default_model.sh runs/default 1.5 7
# VAE_DATA=shapes-wide trains the autoencoder on the world with the new concepts mixed in (records/continual).
# EVAL_EVERY=250 also measures the judge accuracy every 250 steps to OUT/ldm/metrics.csv (time to quality).
set -euo pipefail
out=${1:?output folder}; vae_minutes=${2:-1.5}; ldm_minutes=${3:-7}; preset=${4:-default}; device=${5:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
$py -m latentlab train-vae --out "$out/vae" --minutes "$vae_minutes" --steps 1000000 --batch-size 128 \
    --lr 4e-4 --preset "$preset" --device "$device" --disc-weight 0 --data "${VAE_DATA:-shapes}" 2> "$out/train-vae.log" | tee "$out/vae.json"
$py -m latentlab train --vae "$out/vae" --out "$out/ldm" --minutes "$ldm_minutes" --steps 1000000 \
    --batch-size 256 --lr 4e-4 --preset "$preset" --device "$device" --save-every 5000 --sample-every 0 \
    --eval-every "${EVAL_EVERY:-0}" \
    2> "$out/train.log"
$py - "$out" <<'PY'
import sys, torch
from latentlab import Pipeline
out = sys.argv[1]
Pipeline.load(f"{out}/ldm").save(f"{out}/model", dtype=torch.float16)
PY
$py -m latentlab eval --model "$out/model" --all --prompts 200 --device "$device" --out "$out/eval.json"
$py -m latentlab generate --model "$out/model" --device "$device" --out "$out/samples" --seed 0 \
    "a large red circle on the left" "a small blue triangle at the top" "a big yellow square in the centre" \
    "a little green circle at the bottom" "a large purple triangle on the right" "a small orange square in the middle" \
    "a small red square to the left of a big blue circle" "a large yellow triangle above a small purple square" \
    2> /dev/null
