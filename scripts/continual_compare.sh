#!/usr/bin/env bash
# A sequence of new concepts taught to the shipped shapes model with C-LoRA, at several forgetting weights
# lambda (0: the ablation, sequential LoRA on the cross-attention's K and V with a token per concept): after each
# task, the judge on every concept so far and on ordinary prompts (`latentlab continual eval`).
# Usage: scripts/continual_compare.sh OUT [DEVICE]
# Environment: CONCEPTS (the sequence, "pink star brown hexagon cross ring"), LAMBDAS ("0 10"), STEPS (800 per
# task), LR (1e-3, for K and V), TOKEN_LR (5e-3), RANK (4), COUNT (100 images per concept), PROMPTS (200 per
# measurement), EVAL_STEPS (50),
# PYTHON (python3). A stopped sequence resumes; a finished one is not trained again.
# Writes OUT/data/CONCEPT (each task's images), OUT/seq-LAMBDA (each sequence's runs), OUT/eval-LAMBDA.{json,txt},
# OUT/summary.md.
set -euo pipefail
out=${1:?output folder}; device=${2:-auto}
concepts=${CONCEPTS:-pink star brown hexagon cross ring}; lambdas=${LAMBDAS:-0 10}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
tasks=()
for c in $concepts; do
    [ -f "$out/data/$c/concept.json" ] || $py -m latentlab.data.concept --out "$out/data/$c" --concept "$c" \
        --count "${COUNT:-100}" > /dev/null
    tasks+=(--task "$out/data/$c")
done
for lambda in $lambdas; do
    seq="$out/seq-$lambda"
    resume=(); [ ! -f "$seq/sequence.json" ] || resume=(--resume)
    $py -m latentlab continual train "${tasks[@]}" --out "$seq" --forget-weight "$lambda" --steps "${STEPS:-800}" \
        --lr "${LR:-1e-3}" --token-lr "${TOKEN_LR:-5e-3}" --rank "${RANK:-4}" --device "$device" "${resume[@]}" 2> "$seq.log" > "$seq.json"
    [ -f "$out/eval-$lambda.json" ] || $py -m latentlab continual eval "$seq" --prompts "${PROMPTS:-200}" \
        --steps "${EVAL_STEPS:-50}" --device "$device" --out "$out/eval-$lambda.json" 2> "$out/eval-$lambda.log" \
        | tee "$out/eval-$lambda.txt"
done
$py - "$out" $lambdas <<'PY'
import json, sys
from pathlib import Path
out, lambdas = Path(sys.argv[1]), sys.argv[2:]
lines = ["| lambda | " + " | ".join(["after each task: concepts so far", "ordinary", "average accuracy",
                                     "average forgetting"]) + " |", "|---|---|---|---:|---:|"]
for lam in lambdas:
    r = json.loads((out / f"eval-{lam}.json").read_text())
    rows = "<br>".join(" ".join(f"{a:.0%}" for a in row) for row in r["matrix"])
    ordinary = " ".join(f"{a:.0%}" for a in r["ordinary"])
    forgetting = "-" if r["average_forgetting"] is None else f"{100 * r['average_forgetting']:.1f} points"
    lines.append(f"| {lam} | {rows} | {ordinary} | {r['average_accuracy']:.1%} | {forgetting} |")
concepts = json.loads((out / f"eval-{lambdas[0]}.json").read_text())["concepts"]
text = "\n".join([f"# C-LoRA on {', '.join(concepts)}", ""] + lines) + "\n"
(out / "summary.md").write_text(text)
print(text)
PY
