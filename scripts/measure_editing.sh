#!/usr/bin/env bash
# Measure Midjourney's editing loop on the shapes world (issue 22): what img2img keeps against its strength
# (a text model), and inpainting by the blending fallback (a text model) and by an inpainting model (one trained
# with `latentlab train --inpainting`), each on the same cases. Writes OUT/img2img.json and OUT/inpainting.json.
# Usage: scripts/measure_editing.sh OUT_DIR [TEXT_MODEL] [INPAINTING_MODEL] [DEVICE]
# Environment: CASES (200), STRENGTHS ("0 0.05 0.1 0.15 0.2 0.3 0.4 0.6 1"), PYTHON (python3).
set -euo pipefail
out=${1:?output folder}; text=${2:-shapes-default}; inpainting=${3:-}; device=${4:-auto}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p "$out"
$py - "$out" "$text" "$inpainting" "$device" "${CASES:-200}" ${STRENGTHS:-0 0.05 0.1 0.15 0.2 0.3 0.4 0.6 1} <<'PY'
import json, sys
from latentlab.evaluation.img2img import strength_curve
from latentlab.evaluation.inpainting import inpainting_accuracy
from latentlab.pipeline import Pipeline

out, text, inpainting, device, cases, strengths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], \
    int(sys.argv[5]), [float(s) for s in sys.argv[6:]]
pipe = Pipeline.load(text, device=device)
curve = strength_curve(pipe, strengths, cases=cases)
curve["model"] = text
open(f"{out}/img2img.json", "w").write(json.dumps(curve, indent=1) + "\n")
for row in curve["curve"]:
    print(f"strength {row['strength']:.2f}: kept all {row['kept']['all']:.1%}  followed all {row['followed']['all']:.1%}  "
          + "  ".join(f"kept {a} {row['kept'][a]:.0%}" for a in ("colour", "shape", "size", "position")), flush=True)
report = {}
for name, path in (("blending fallback", text), ("inpainting model", inpainting)):
    if not path:
        continue
    for split in ("test", "heldout"):
        r = inpainting_accuracy(Pipeline.load(path, device=device), scenes=cases, split=split)
        r["model"] = path
        report[f"{name}, {split}"] = r
        print(f"{name} {split}: " + "  ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items()), r["outside_rms"],
              flush=True)
        open(f"{out}/inpainting.json", "w").write(json.dumps(report, indent=1) + "\n")
PY
