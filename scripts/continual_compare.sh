#!/usr/bin/env bash
# C-LoRA and its baselines on one sequence of new concepts, the same images, steps and batch for each (issue 19):
# after each task, the judge on every concept so far, on ordinary prompts and on pairs of a learned colour and a
# learned shape (`latentlab continual eval`); a table, a heat-map of each method's accuracy matrix, a lambda sweep.
# Usage: scripts/continual_compare.sh OUT [DEVICE]
# Environment:
#   ARMS      one arm per line: NAME METHOD LAMBDA LR TARGETS (TARGETS: kv, the cross-attention's K and V; attention,
#             every U-Net attention projection; all, those and the convolutions; - for full fine-tuning). Default: $DEFAULT_ARMS below.
#   CONCEPTS  the sequence ("star pink diamond cyan ring brown"); COUNT (100 images per concept); PRIOR (0 ordinary
#             scenes of the shapes world added to each folder: prior preservation, the same for every arm)
#   STEPS (800 per task), TOKEN_LR (5e-3), RANK (4), PROMPTS (200 per concept and ordinary measurement),
#   PAIR_PROMPTS (50 per colour-shape pair), EVAL_STEPS (50), MODEL (shapes-default), JOBS (arms at once, 1),
#   PYTHON (python3); SUMMARY_ONLY=1 tabulates what is in OUT without training or measuring.
# A stopped arm resumes; a finished one is neither trained nor measured again.
# Writes OUT/data/CONCEPT, OUT/NAME (each arm's sequence), OUT/eval-NAME.{json,txt,log}, OUT/NAME.{json,log},
# OUT/summary.{md,json}, OUT/heatmap-NAME.png, OUT/heatmaps.png (every arm's side by side).
set -euo pipefail
out=${1:?output folder}; device=${2:-auto}
DEFAULT_ARMS="c-lora c-lora 10 1e-3 kv
ablation c-lora 0 1e-3 kv
naive lora 0 1e-3 kv
full full 0 1e-5 -
separate separate 0 1e-3 kv"
arms=${ARMS:-$DEFAULT_ARMS}
concepts=${CONCEPTS:-star pink diamond cyan ring brown}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-30} OUT_DIR=$out DEVICE=$device PY=$py
mkdir -p "$out"
tasks=()
for c in $concepts; do
    [ -f "$out/data/$c/concept.json" ] || $py -m latentlab.data.concept --out "$out/data/$c" --concept "$c" \
        --count "${COUNT:-100}" --prior "${PRIOR:-0}" > /dev/null
    tasks+=(--task "$out/data/$c")
done
export TASKS="${tasks[*]}"

arm() {  # NAME METHOD LAMBDA LR TARGETS: train the arm's sequence (resuming), then measure it
    local name=$1 method=$2 lambda=$3 lr=$4 targets=$5 seq="$OUT_DIR/$1" resume=() where=()
    [ ! -f "$seq/sequence.json" ] || resume=(--resume)
    case $targets in
        kv) where=(--target attn2.to_k --target attn2.to_v);;
        attention) where=(--target to_q --target to_k --target to_v --target to_out.0);;
        all) where=(--target to_q --target to_k --target to_v --target to_out.0 --target conv1 --target conv2
                    --target conv_shortcut --target proj_in --target proj_out);;
    esac
    # shellcheck disable=SC2086
    $PY -m latentlab continual train $TASKS --out "$seq" --method "$method" --forget-weight "$lambda" --lr "$lr" \
        "${where[@]}" --steps "${STEPS:-800}" --token-lr "${TOKEN_LR:-5e-3}" --rank "${RANK:-4}" \
        --model "${MODEL:-shapes-default}" --device "$DEVICE" "${resume[@]}" 2> "$seq.log" > "$seq.json"
    [ -f "$OUT_DIR/eval-$name.json" ] || $PY -m latentlab continual eval "$seq" --prompts "${PROMPTS:-200}" \
        --pair-prompts "${PAIR_PROMPTS:-50}" --steps "${EVAL_STEPS:-50}" --device "$DEVICE" \
        --out "$OUT_DIR/eval-$name.json" 2> "$OUT_DIR/eval-$name.log" > "$OUT_DIR/eval-$name.txt"
    echo "finished $name"
}
export -f arm
[ -n "${SUMMARY_ONLY:-}" ] || echo "$arms" | xargs -r -P "${JOBS:-1}" -L 1 bash -c 'arm "$@"' _

$py - "$out" <<'PY'
"""summary.md and .json: each arm's matrix, ordinary and pair accuracy after each task, A_T, F_T; heat-maps."""
import json, sys
from pathlib import Path
from latentlab.evaluation.heatmap import accuracy_heatmap

out = Path(sys.argv[1])
reports = {p.stem.removeprefix("eval-"): json.loads(p.read_text()) for p in sorted(out.glob("eval-*.json"))}
def pct(a):
    return "-" if a is None else f"{a:.0%}"
lines = ["| arm | method | lambda | after each task: concepts so far | ordinary (base) | pairs | learning | A_T | F_T |",
         "|---|---|---:|---|---|---|---:|---:|---:|"]
rows = {}
for name, r in reports.items():
    learning = sum(row[-1] for row in r["matrix"]) / len(r["matrix"])  # each concept right after its own task
    forgetting = r["average_forgetting"]
    rows[name] = {"method": r["method"], "forget_weight": r["forget_weight"], "learning": learning,
                  "average_accuracy": r["average_accuracy"], "average_forgetting": forgetting,
                  "ordinary_last": r["ordinary"][-1], "ordinary_base": r["ordinary_base"], "combined_last": r["combined"][-1]}
    matrix = "<br>".join(" ".join(pct(a) for a in row) for row in r["matrix"])
    lines.append(f"| {name} | {r['method']} | {r['forget_weight'] if r['method'] == 'c-lora' else '-'} | {matrix} | "
                 f"{' '.join(pct(a) for a in r['ordinary'])} ({pct(r['ordinary_base'])}) | "
                 f"{' '.join(pct(a) for a in r['combined'])} | {learning:.1%} | {r['average_accuracy']:.1%} | "
                 f"{'-' if forgetting is None else f'{100 * forgetting:.1f} points'} |")
    tasks = [f"after {k}: {c}" for k, c in enumerate(r["concepts"], 1)]
    accuracy_heatmap(r["matrix"], tasks, r["words"], out / f"heatmap-{name}.png", title=name)
concepts = next(iter(reports.values()))["concepts"] if reports else []
text = "\n".join([f"# C-LoRA and its baselines on {', '.join(concepts)}", "",
                  "learning: each concept's accuracy right after its own task, averaged; A_T, F_T: Chaudhry et al.",
                  "", *lines]) + "\n"
(out / "summary.md").write_text(text)
(out / "summary.json").write_text(json.dumps({"arms": rows, "reports": reports}, indent=1) + "\n")
if reports:
    from PIL import Image
    tiles = [Image.open(out / f"heatmap-{name}.png") for name in reports]
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0)); x += t.width
    sheet.save(out / "heatmaps.png")
print(text)
PY
