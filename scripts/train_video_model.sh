#!/usr/bin/env bash
# Train the video model from the shipped shapes model (its temporal layers only), save it in float16 to OUT/model,
# then measure it against the image model sampled frame by frame from the same noise (issue 20).
# Usage: scripts/train_video_model.sh OUT_DIR [MINUTES] [DEVICE] [PROMPTS]
# On the GPU (the shipped video model): scripts/train_video_model.sh runs/video 6 cuda 200
set -euo pipefail
out=${1:?output folder}; minutes=${2:-6}; device=${3:-auto}; prompts=${4:-200}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
$py -m latentlab train-video --image-model "${IMAGE_MODEL:-shapes-default}" --out "$out/run" --minutes "$minutes" \
    --steps 1000000 --batch-size "${BATCH:-32}" --frames "${FRAMES:-16}" --lr "${LR:-3e-4}" --device "$device" \
    ${TRAIN_OPTIONS:-} 2> "$out/train.log" | tee "$out/train.json"
$py - "$out" "$device" "$prompts" <<'PY'
import json, sys
import torch
from latentlab.evaluation.video import video_adherence
from latentlab.video_pipeline import VideoPipeline

out, device, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3])
VideoPipeline.load(f"{out}/run", device="cpu").save(f"{out}/model", dtype=torch.float16)  # as shipped
pipe = VideoPipeline.load(f"{out}/model", device=device)
report = {split: {name: video_adherence(pipe, prompts=prompts, split=split, baseline=name == "frame by frame")
                  for name in ("video model", "frame by frame")} for split in ("test", "heldout")}
open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")
for split, rows in report.items():
    for name, r in rows.items():
        print(f"{split:8s} {name:15s} per-frame {r['per_frame']:.1%}  objects {r['objects']:.1%}  motion "
              f"{r['motion']:.1%}  identity {r['identity']:.1%}  all {r['all']:.1%}  jitter {r['jitter']}")
PY
$py -m latentlab generate-video --model "$out/model" --device "$device" --out "$out/samples" --seed 0 \
    "a small red circle moves to the right" "a large blue square grows" "a small green triangle bounces up and down" \
    "a large yellow circle turns purple" 2> /dev/null || true
