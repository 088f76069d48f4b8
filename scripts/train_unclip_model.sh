#!/usr/bin/env bash
# Train DALL-E 2's decoder from the shipped text model (issue 21), bundle a prior, then measure the unCLIP model:
# variations judged against their sources, text to image against the text model it started from (OUT/eval.json),
# and an interpolation strip (OUT/interpolation.png).
# Usage: scripts/train_unclip_model.sh OUT_DIR PRIOR_DIR [MINUTES] [DEVICE]
# Environment: BATCH (64), LR (2e-4), EMA (0.995), PROMPTS (200), SOURCES (200), TRAIN_OPTIONS (more flags for
# train-unclip), PYTHON (python3); MODEL=FOLDER measures that unCLIP model without training.
set -euo pipefail
out=${1:?output folder}; prior=${2:?prior folder}; minutes=${3:-45}; device=${4:-auto}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
if [ -z "${MODEL:-}" ]; then
    $py -m latentlab train-unclip --out "$out/run" --prior "$prior" --minutes "$minutes" --steps 1000000 \
        --batch-size "${BATCH:-64}" --lr "${LR:-2e-4}" --ema-decay "${EMA:-0.995}" --device "$device" \
        ${TRAIN_OPTIONS:-} 2> "$out/train.log" | tee "$out/train.json"
fi
$py - "$out" "$device" "${PROMPTS:-200}" "${SOURCES:-200}" "${MODEL:-$out/run}" <<'PY'
import json, sys
import torch
from latentlab.data.shapes import ShapesDataset
from latentlab.evaluation.adherence import prompt_adherence
from latentlab.evaluation.unclip import EmbeddingOnly, variation_fidelity
from latentlab.images import image_grid, to_pil
from latentlab.unclip_pipeline import UnCLIPPipeline

out, device, prompts, sources, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
pipe = UnCLIPPipeline.load(path, device=device)
report = {"model": path}

def save():
    open(f"{out}/eval.json", "w").write(json.dumps(report, indent=1) + "\n")

for split in ("test", "heldout"):
    r = variation_fidelity(pipe, sources=sources, split=split)
    report[f"variations, {split}"] = r
    print(f"variations {split}: " + "  ".join(f"{k} {v:.1%}" for k, v in r["kept"].items()), r["variation"], flush=True)
    save()
models = {"text model": pipe.image_model(), "prior + decoder (caption too)": pipe, "prior + decoder (embedding only)":
          EmbeddingOnly(pipe)}
for split, objects in (("test", 1), ("heldout", 1), ("test", 2)):
    for name, model in models.items():
        r = prompt_adherence(model, prompts=prompts, split=split, objects=objects)
        report[f"text to image, {split}, {objects} object(s), {name}"] = r
        print(f"{split} {objects}: {name}: " + "  ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items()), flush=True)
        save()
# the strip: from a rendered test image to another, and both ends beside it
data = ShapesDataset(seed=1234, split="test", image_size=pipe.image_size, p_two=0.0)
images, captions, _ = data.batch(0, 8)
rows = []
for a, b in ((0, 1), (2, 3), (4, 5)):
    frames = pipe.interpolate(images[a], images[b], 8, seed=0)
    rows += [to_pil(images[a:a + 1])[0], *to_pil(frames), to_pil(images[b:b + 1])[0]]
    report.setdefault("interpolation", []).append([captions[a], captions[b]])
image_grid(rows, columns=10, scale=4).save(f"{out}/interpolation.png")
variations = []
for k in range(6, 8):
    variations += [to_pil(images[k:k + 1])[0], *to_pil(pipe.variations(images[k], 4, seed=0))]
image_grid(variations, columns=5, scale=4).save(f"{out}/variations.png")
save()
PY
