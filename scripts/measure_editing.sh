#!/usr/bin/env bash
# Measure Midjourney's editing loop on the shapes world (issue 22): what img2img keeps against its strength
# (a text model), and inpainting by the blending fallback (a text model) and by an inpainting model (one trained
# with `latentlab train --inpainting`), each on the same cases; and the grid's V button (evaluation/vary.py:
# variations of the text model's own images). Writes OUT/img2img.json, OUT/inpainting.json and OUT/vary.json.
# Usage: scripts/measure_editing.sh OUT_DIR [TEXT_MODEL] [INPAINTING_MODEL] [DEVICE]
# Environment: CASES (200), STRENGTHS ("0 0.05 0.1 0.15 0.2 0.3 0.4 0.6 1"), PARTS ("img2img inpainting vary": the
# measurements to make), PYTHON (python3).
set -euo pipefail
out=${1:?output folder}; text=${2:-shapes-default}; inpainting=${3:-}; device=${4:-auto}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
mkdir -p "$out"
parts=${PARTS:-img2img inpainting vary}
$py - "$out" "$text" "$inpainting" "$device" "${CASES:-200}" "$parts" ${STRENGTHS:-0 0.05 0.1 0.15 0.2 0.3 0.4 0.6 1} <<'PY'
import json, sys
from latentlab.evaluation.img2img import strength_curve
from latentlab.evaluation.inpainting import inpainting_accuracy
from latentlab.evaluation.vary import variation_report
from latentlab.pipeline import Pipeline

out, text, inpainting, device, cases, parts, strengths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], \
    int(sys.argv[5]), sys.argv[6].split(), [float(s) for s in sys.argv[7:]]
pipe = Pipeline.load(text, device=device)
if "vary" in parts:
    report = {f"{n} object{'s' * (n > 1)}": variation_report(pipe, cases=cases, p_two=float(n == 2))
              for n in (1, 2)}
    open(f"{out}/vary.json", "w").write(json.dumps(report, indent=1) + "\n")
    for name, r in report.items():
        print(f"vary, {name}: " + "  ".join(f"{k} {r[k]['share']:.1%}" for k in r if "right" in k)
              + f"  distance to the source {r['distance to the source']['mean']:.3f}  between variations "
              f"{r['distance between variations']['mean']:.3f}", flush=True)
if "img2img" not in parts:
    strengths = []
curve = strength_curve(pipe, strengths, cases=cases) if strengths else None
if curve is not None:
    curve["model"] = text
    open(f"{out}/img2img.json", "w").write(json.dumps(curve, indent=1) + "\n")
for row in curve["curve"] if curve is not None else []:
    print(f"strength {row['strength']:.2f}: kept all {row['kept']['all']:.1%}  followed all {row['followed']['all']:.1%}  "
          + "  ".join(f"kept {a} {row['kept'][a]:.0%}" for a in ("colour", "shape", "size", "position")), flush=True)
report = {}
for name, path in (("blending fallback", text), ("inpainting model", inpainting)):
    if not path or "inpainting" not in parts:
        continue
    for split in ("test", "heldout"):
        r = inpainting_accuracy(Pipeline.load(path, device=device), scenes=cases, split=split)
        r["model"] = path
        report[f"{name}, {split}"] = r
        print(f"{name} {split}: " + "  ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items()), r["outside_rms"],
              flush=True)
        open(f"{out}/inpainting.json", "w").write(json.dumps(report, indent=1) + "\n")
PY
