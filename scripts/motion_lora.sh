#!/usr/bin/env bash
# Teach a video model a new motion with a LoRA on its temporal attention (issue 20, item 5), then measure it:
# fresh clips of the motion without and with the LoRA, and the video world's test prompts with it (OUT/eval.json).
# Usage: scripts/motion_lora.sh OUT_DIR VIDEO_MODEL [MINUTES] [DEVICE]
# Environment: MOTION (diagonal), RANK (8), LR (1e-3), BATCH (16 clips a step), FRAMES (16), PROMPTS (50 per row),
# PYTHON (python3).
set -euo pipefail
out=${1:?output folder}; model=${2:?a video model folder}; minutes=${3:-1}; device=${4:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
$py -m latentlab train-video --init "$model" --motion "${MOTION:-diagonal}" --lora-rank "${RANK:-8}" --out "$out/run" \
    --minutes "$minutes" --steps 1000000 --batch-size "${BATCH:-16}" --frames "${FRAMES:-16}" --lr "${LR:-1e-3}" \
    --device "$device" 2> "$out/train.log" | tee "$out/train.json"
$py - "$out" "$model" "$device" "${MOTION:-diagonal}" "${PROMPTS:-50}" <<'PY'
import json, sys
from latentlab.evaluation.video import video_adherence
from latentlab.video_pipeline import VideoPipeline

out, model, device, motion, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
report = {}
for name in ("without the LoRA", "with the LoRA"):
    pipe = VideoPipeline.load(model, device=device)
    if name == "with the LoRA":
        pipe.load_adapter(f"{out}/run/motion-lora.safetensors")
    report[name] = {motion: video_adherence(pipe, prompts=prompts, motion=motion),
                    "test": video_adherence(pipe, prompts=prompts, split="test")}
    for row, r in report[name].items():
        print(f"{name:17s} {row:9s} motion {r['motion']:.1%}  identity {r['identity']:.1%}  per-frame "
              f"{r['per_frame']:.1%}  all {r['all']:.1%}  jitter {r['jitter']}", flush=True)
    open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")
PY
