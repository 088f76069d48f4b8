#!/usr/bin/env bash
# Train a video decoder (the autoencoder's decoder with temporal layers, issue 20) for MODEL's autoencoder, then
# measure it against the frozen decoder, frame by frame, on clips of the test split: OUT/decoder-eval.json.
# Usage: scripts/train_video_decoder.sh OUT_DIR MODEL [MINUTES] [DEVICE]
# MODEL is a video model folder (then OUT/model is a copy of it with the decoder added) or an image model.
# Environment: STEPS (the most steps, default 1000000: MINUTES ends the run), BATCH (clips a step, 8), FRAMES (16),
# LR (3e-4), CLIPS (clips measured, 200), TRAIN_OPTIONS (more flags for train-video-decoder).
set -euo pipefail
out=${1:?output folder}; model=${2:?model: a video model folder or an image model}; minutes=${3:-10}
device=${4:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
into=()
if $py -c 'import json, sys; sys.exit(not isinstance(json.load(open(sys.argv[1])).get("video"), dict))' \
        "$model/model_index.json" 2> /dev/null; then
    into=(--into "$out/model")
fi
$py -m latentlab train-video-decoder --model "$model" --out "$out/run" --minutes "$minutes" \
    --steps "${STEPS:-1000000}" --batch-size "${BATCH:-8}" --frames "${FRAMES:-16}" --lr "${LR:-3e-4}" \
    --device "$device" "${into[@]}" ${TRAIN_OPTIONS:-} 2> "$out/train.log" | tee "$out/train.json"
$py - "$out" "$model" "$device" "${CLIPS:-200}" "${FRAMES:-16}" <<'PY'
import json, sys
from latentlab.evaluation.video_decoder import reconstruction_figures
from latentlab.pipeline import Pipeline
from latentlab.video_pipeline import read_video_decoder

out, model, device, clips, frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
pipe = Pipeline.load(model, device=device)
decoder = read_video_decoder(f"{out}/run/vae_temporal", pipe.vae).to(pipe.device).eval()
rows = reconstruction_figures(pipe, decoder, clips=clips, frames=frames, split="test")
open(f"{out}/decoder-eval.json", "w").write(json.dumps(rows, indent=1) + "\n")
for row in rows.values():
    print(f"{row['decoder']:24s} PSNR {row['psnr_db']:.2f} dB  L1 {row['l1']:.5f}  flicker {row['flicker']:.5f}  "
          f"({row['clips']} clips of {row['frames']} frames, {row['split']} split)")
PY
