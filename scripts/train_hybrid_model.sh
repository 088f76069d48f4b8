#!/usr/bin/env bash
# Train the learned-variance (Improved DDPM hybrid loss) twin of the shipped model: same autoencoder,
# architecture, data, seed, batch, learning rate and number of steps (3,880), only the objective differs.
# Usage: scripts/train_hybrid_model.sh OUT_DIR [MAX_MINUTES] [DEVICE]
set -euo pipefail
out=${1:?output folder}; minutes=${2:-9}; device=${3:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-30}
py=${PYTHON:-python3}
mkdir -p "$out"
$py -m latentlab train --vae src/latentlab/weights/shapes-default --out "$out/ldm" --steps 3880 --minutes "$minutes" \
    --batch-size 256 --lr 4e-4 --preset default --device "$device" --save-every 100000 --learned-variance \
    2> "$out/train.log" | tee "$out/train.json"
$py - "$out" <<'PY'
import sys, torch
from latentlab import Pipeline
out = sys.argv[1]
Pipeline.load(f"{out}/ldm").save(f"{out}/model", dtype=torch.float16)
PY
