#!/usr/bin/env bash
# Teach the shipped shapes model a colour or shape it has never seen (cyan, diamond) from 100 captioned images:
# a rank-16 LoRA on the U-Net's attention and convolutions and the text encoder, against full fine-tuning (text
# encoder + U-Net) with the same steps and batch. Measures concept
# accuracy (the judge, palette or shapes plus the concept) and the ordinary prompts' accuracy (palette and shapes
# alone) before and after.
# Usage: scripts/lora_concept.sh OUT [DEVICE]
# Environment: STEPS (2000), BATCH (8), LR (3e-4, the LoRA's), FULL_LR (1e-5, full fine-tuning's), RANK (16),
# PROMPTS (200 per measurement), EVAL_STEPS (50 sampler steps), CONCEPT (diamond, or cyan; COLOUR is the old name),
# COUNT (100 concept images), PRIOR (0: ordinary training images added to the folder), LORA_ARGS (the LoRA's
# targets and other `lora train` options; default --text-encoder-lora --unet-convolutions), PYTHON (python3).
# Writes OUT/data (the folder), OUT/lora (the LoRA run), OUT/full (the fine-tuned model), OUT/eval-*.json,
# OUT/summary.json and OUT/summary.md.
set -euo pipefail
out=${1:?output folder}; device=${2:-auto}
steps=${STEPS:-2000}; batch=${BATCH:-8}; lr=${LR:-3e-4}; full_lr=${FULL_LR:-1e-5}; rank=${RANK:-16}
prompts=${PROMPTS:-200}; eval_steps=${EVAL_STEPS:-50}; concept=${CONCEPT:-${COLOUR:-diamond}}; count=${COUNT:-100}; prior=${PRIOR:-0}
lora_args=${LORA_ARGS---text-encoder-lora --unet-convolutions}  # LORA_ARGS= (empty): attention only
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
base=$($py -c 'from latentlab.pipeline import default_model_path; print(default_model_path())')
mkdir -p "$out"
: > "$out/seconds.txt"

timed() {  # timed NAME COMMAND...: run it, and append "NAME SECONDS" to OUT/seconds.txt
    local name=$1 start end; shift
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    echo "$name $((end - start))" >> "$out/seconds.txt"
}

measure() {  # measure NAME [eval options...]: ordinary one-object prompts and the concept's, to OUT/eval-NAME.json
    local name=$1; shift
    $py -m latentlab eval --prompts "$prompts" --steps "$eval_steps" --concept "$concept" --device "$device" \
        --out "$out/eval-$name.json" "$@" 2> "$out/eval-$name.log" | tee "$out/eval-$name.txt"
}

# 1. the data: COUNT images of the concept (ground-truth renders), caption files beside them
rm -rf "$out/data"
$py -m latentlab.data.concept --out "$out/data" --concept "$concept" --count "$count" --prior "$prior"

# 2. the base model
measure base --model shapes-default

# 3. LoRA: rank RANK on the U-Net's attention projections and LORA_ARGS' targets; the base model stays frozen
rm -rf "$out/lora"
timed lora $py -m latentlab lora train --model shapes-default --data "$out/data" --out "$out/lora" --rank "$rank" \
    --steps "$steps" --batch-size "$batch" --lr "$lr" --device "$device" $lora_args 2> "$out/lora-train.log" \
    | tee "$out/lora-train.json"
lora_file=$($py -c 'import json, sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["lora"])' \
    "$out/lora-train.json")
measure lora --model shapes-default --lora "$lora_file"

# 4. full fine-tuning of the text encoder and U-Net from the shipped model, same steps and batch
rm -rf "$out/full"
timed full $py -m latentlab train --init "$base" --vae "$base" --data "$out/data" --out "$out/full" \
    --steps "$steps" --batch-size "$batch" --lr "$full_lr" --device "$device" --sample-every 0 \
    --save-every "$steps" --checkpoint-every "$steps" 2> "$out/full-train.log"
measure full --model "$out/full"

# 5. the summary
$py - "$out" "$concept" "$steps" "$batch" "$lr" "$full_lr" "$rank" "$count" "$prior" "$lora_args" <<'PY'
import json, sys
from pathlib import Path
from latentlab import Pipeline

out, concept = Path(sys.argv[1]), sys.argv[2]
steps, batch, lr, full_lr, rank, count, prior, lora_args = sys.argv[3:]
kind = json.loads((out / "eval-base.json").read_text())[1]["kind"]  # the concept's attribute: colour or shape
minutes = {name: int(seconds) / 60 for name, seconds in
           (line.split() for line in (out / "seconds.txt").read_text().splitlines())}


def accuracies(name):
    ordinary, taught = json.loads((out / f"eval-{name}.json").read_text())
    return {"concept_accuracy": taught["accuracy"]["all"], "concept_attribute": taught["accuracy"][taught["kind"]],
            "concept_drawn": taught["read"], "vae_round_trip": taught["vae_round_trip"]["all"],
            "base_accuracy": ordinary["accuracy"]["all"]}


lora = json.loads((out / "lora-train.json").read_text().splitlines()[-1])
full = Pipeline.load(out / "full", device="cpu")
base = accuracies("base")
rows = {
    "lora": {"trainable_parameters": lora["trainable_parameters"], "file_bytes": lora["file_bytes"],
             "steps": lora["steps"], "lr": float(lr), "rank": int(rank), "options": lora_args,
             "minutes": minutes["lora"],
             **accuracies("lora")},
    "full": {"trainable_parameters": sum(p.numel() for m in (full.text_encoder, full.unet) for p in m.parameters()),
             "file_bytes": sum((out / "full" / part / "model.safetensors").stat().st_size
                               for part in ("text_encoder", "unet")),
             "steps": int(steps), "lr": float(full_lr), "minutes": minutes["full"], **accuracies("full")},
}
for row in rows.values():
    row["base_accuracy_before"] = base["base_accuracy"]
    row["base_accuracy_drop_points"] = 100 * (base["base_accuracy"] - row["base_accuracy"])
summary = {"concept": concept, "images": int(count), "prior_images": int(prior), "batch_size": int(batch),
           "before": base, **rows}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# Teaching `{concept}` from {count} images ({steps} steps, batch {batch})", "",
         f"Before: concept accuracy {base['concept_accuracy']:.1%} ({kind} drawn: "
         + ", ".join(f"{k} {v:.0%}" for k, v in base["concept_drawn"].items())
         + f"), ordinary prompts {base['base_accuracy']:.1%}; the concept's ground truth read after the "
         f"autoencoder: {base['vae_round_trip']:.1%}.", "",
         f"| method | trainable parameters | file | minutes | concept accuracy | concept {kind} | ordinary before "
         "| ordinary after | drop (points) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['trainable_parameters']:,} | {r['file_bytes'] / 1e6:.2f} MB | {r['minutes']:.1f} "
                 f"| {r['concept_accuracy']:.1%} | {r['concept_attribute']:.1%} | {r['base_accuracy_before']:.1%} "
                 f"| {r['base_accuracy']:.1%} | {r['base_accuracy_drop_points']:.1f} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
