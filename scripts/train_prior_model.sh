#!/usr/bin/env bash
# Train DALL-E 2's diffusion prior from the shipped contrastive model's captions to its image embeddings (issue
# 21), then measure it against the text embedding and a ridge regression (OUT/eval.json).
# Usage: scripts/train_prior_model.sh OUT_DIR [MINUTES] [DEVICE]
# Environment: BATCH (256), LR (5e-4), WIDTH (256), LAYERS (4), PROMPTS (500), GUIDANCES ("1 2 4"),
# TRAIN_OPTIONS (more flags for train-prior), PYTHON (python3); MODEL=FOLDER measures that prior without training.
set -euo pipefail
out=${1:?output folder}; minutes=${2:-10}; device=${3:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -z "${MODEL:-}" ]; then
    $py -m latentlab train-prior --out "$out/run" --minutes "$minutes" --steps 1000000 --batch-size "${BATCH:-256}" \
        --lr "${LR:-5e-4}" --width "${WIDTH:-256}" --layers "${LAYERS:-4}" --device "$device" ${TRAIN_OPTIONS:-} \
        2> "$out/train.log" | tee "$out/train.json"
fi
$py - "$out" "$device" "${PROMPTS:-500}" "${MODEL:-$out/run}" ${GUIDANCES:-1 2 4} <<'PY'
import json, sys
from latentlab.evaluation.prior import fit_regression, prior_accuracy
from latentlab.prior_model import PriorModel

out, device, prompts, path, guidances = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
model = PriorModel.load(path, device=device)
regression = fit_regression(model)  # once: it does not depend on the guidance or the split
report = {}
for g in map(float, guidances):
    for split in ("test", "heldout"):
        r = prior_accuracy(model, prompts=prompts, split=split, guidance=g, regression=regression)
        report[f"{split}, guidance {g:g}"] = r
        print(f"{split:8s} guidance {g:g}: " + "  ".join(f"{k} cosine {r[k]['cosine']:.3f} nearest "
              f"{r[k]['nearest_image_of_the_scene']:.1%}" for k in ("prior", "regression", "text embedding")),
              flush=True)
        open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")
PY
