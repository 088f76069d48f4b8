#!/usr/bin/env bash
# Train the Fashion-MNIST model and its classifier from scratch, measuring quality as it trains, then export
# the model in float16 and evaluate it.
# Usage: scripts/train_fashion_model.sh OUT_DIR [VAE_MINUTES] [LDM_MINUTES] [DEVICE]
# Needs the data: apt-get install dataset-fashion-mnist (or LATENTLAB_FASHION_MNIST=folder of its IDX files).
set -euo pipefail
out=${1:?output folder}; vae_minutes=${2:-1.5}; ldm_minutes=${3:-4.5}; device=${4:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
start=$(date +%s)
$py -m latentlab train-classifier --data fashion-mnist --out "$out/classifier" --epochs "${CLASSIFIER_EPOCHS:-8}" --device "$device" \
    2> "$out/train-classifier.log" | tee "$out/classifier.json"
echo "classifier: $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
start=$(date +%s)
$py -m latentlab train-vae --data fashion-mnist --out "$out/vae" --minutes "$vae_minutes" --steps 1000000 \
    --batch-size 128 --lr 4e-4 --device "$device" 2> "$out/train-vae.log" | tee "$out/vae.json"
echo "autoencoder: $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
start=$(date +%s)
$py -m latentlab train --data fashion-mnist --vae "$out/vae" --out "$out/ldm" --minutes "$ldm_minutes" \
    --steps 1000000 --batch-size 256 --lr 4e-4 --device "$device" --save-every 100000 --sample-every 0 \
    --eval-every 400 --classifier "$out/classifier" 2> "$out/train.log"
echo "diffusion model (with evaluations): $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
$py - "$out" <<'PY'
import sys, torch
from latentlab import Pipeline
out = sys.argv[1]
Pipeline.load(f"{out}/ldm").save(f"{out}/model", dtype=torch.float16)
PY
$py -m latentlab eval --model "$out/model" --data fashion-mnist --classifier "$out/classifier" --per-class 100 \
    --device "$device" --out "$out/eval.json"
$py -m latentlab plot "$out/ldm" --out "$out/curves.png" || true
