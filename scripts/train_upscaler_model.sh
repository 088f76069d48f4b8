#!/usr/bin/env bash
# Train the upscaler (32 -> 64 pixels, issue 22), save it in float16 to OUT/model as shipped, then measure it against
# bicubic upsampling (PSNR, the judge) on rendered scenes of both splits, and on the text model's own images.
# Usage: scripts/train_upscaler_model.sh OUT_DIR [MINUTES] [DEVICE] [SCENES]
# On the GPU (the shipped upscaler): scripts/train_upscaler_model.sh runs/upscaler 6.5 cuda 200
# Environment: PREDICTION (v), BATCH (64), LR (2e-4), TEXT_MODEL (shapes-default), TRAIN_OPTIONS, PYTHON (python3).
set -euo pipefail
out=${1:?output folder}; minutes=${2:-6.5}; device=${3:-auto}; scenes=${4:-200}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
$py -m latentlab train-upscaler --out "$out/run" --minutes "$minutes" --steps 1000000 --batch-size "${BATCH:-64}" \
    --lr "${LR:-2e-4}" --prediction "${PREDICTION:-v}" --device "$device" ${TRAIN_OPTIONS:-} 2> "$out/train.log" \
    | tee "$out/train.json"
$py - "$out" "$device" "$scenes" "${TEXT_MODEL:-shapes-default}" <<'PY'
import json, sys
import torch
from latentlab.evaluation.upscaler import generated_report, upscaling_report
from latentlab.pipeline import Pipeline
from latentlab.upscaler_model import UpscalerModel

out, device, scenes, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
UpscalerModel.load(f"{out}/run", device="cpu").save(f"{out}/model", dtype=torch.float16)  # as shipped
upscaler = UpscalerModel.load(f"{out}/model", device=device)
report = {split: upscaling_report(upscaler, scenes=scenes, split=split, noise_levels=(0, 20, 50))
          for split in ("test", "heldout")}
report["generated"] = generated_report(Pipeline.load(text, device=device), upscaler, prompts=scenes)
open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")
for split in ("test", "heldout"):
    for name, row in report[split]["methods"].items():
        psnr = f"{row['psnr']['mean']:.2f} dB" if row["psnr"] else "-"
        print(f"{split:8s} {name:28s} PSNR {psnr:9s} judge {row['judge']['all']:.1%}")
print("generated:", json.dumps(report["generated"]["judge"]), "same verdict", report["generated"]["same verdict"])
PY
