#!/usr/bin/env bash
# Train the contrastive image-text encoder (issue 21) on the shapes world and Fashion-MNIST, save it in float16 as
# OUT/model, and measure it: zero-shot attributes of the shapes world, zero-shot Fashion-MNIST classes, retrieval
# recall@1/5 on shapes test pairs (OUT/eval.json).
# Usage: scripts/train_clip_model.sh OUT_DIR [MINUTES] [DEVICE]
# Environment: BATCH (pairs a step, 512), LR (5e-4), IMAGES (shapes images measured, 1000), TRAIN_OPTIONS (more
# flags for train-clip), PYTHON (python3); MODEL=FOLDER measures that model instead of training one (MODEL=shapes-clip:
# the shipped one).
set -euo pipefail
out=${1:?output folder}; minutes=${2:-5}; device=${3:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -z "${MODEL:-}" ]; then
    $py -m latentlab train-clip --out "$out/run" --minutes "$minutes" --steps 1000000 --batch-size "${BATCH:-512}" \
        --lr "${LR:-5e-4}" --device "$device" ${TRAIN_OPTIONS:-} 2> "$out/train.log" | tee "$out/train.json"
    $py -c 'import sys, torch; from latentlab.contrastive_model import ContrastiveModel as M
M.load(sys.argv[1], device="cpu").save(sys.argv[2], dtype=torch.float16)' "$out/run" "$out/model"  # as shipped
fi
$py - "$out" "$device" "${IMAGES:-1000}" "${MODEL:-$out/model}" <<'PY'
import json, sys
from latentlab.contrastive_model import ContrastiveModel
from latentlab.data.mnist import FASHION_NOUNS, fashion_caption, fashion_mnist
from latentlab.data.shapes import ShapesDataset, caption
from latentlab.evaluation.contrastive import retrieval, zero_shot_attributes, zero_shot_classes

out, device, images, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
model = ContrastiveModel.load(path, device=device)
pixels, captions, scenes = ShapesDataset(split="test").batch(0, images)
report = {"shapes attributes (zero-shot)": zero_shot_attributes(model, images=images),
          "fashion-mnist classes (zero-shot)": zero_shot_classes(
              model, fashion_mnist("test"), [fashion_caption(k) for k in range(len(FASHION_NOUNS))]),
          "shapes retrieval": retrieval(model, pixels, captions),
          "shapes retrieval, any wording of the scene": retrieval(model, pixels, captions,
                                                                  keys=[caption(s) for s in scenes])}
open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")
print(json.dumps(report, indent=1))
PY
