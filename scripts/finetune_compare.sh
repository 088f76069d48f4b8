#!/usr/bin/env bash
# Every fine-tuning method of docs/finetuning.md on one concept, with the same 100 images, steps and batch:
# LoRA at ranks 1, 4 and 16 (and rank 4 on the U-Net's attention alone), DoRA, LoHa, LoKr, adapter layers
# (bottleneck), prefix tuning, textual inversion and full fine-tuning. Per method: trainable parameters, file
# size, training seconds, peak memory (the training process's maximum resident set, /usr/bin/time, where the
# machine has it), the judge's concept accuracy and the ordinary prompts' drop.
# Usage: scripts/finetune_compare.sh OUT [DEVICE]
# Environment: STEPS (2000), BATCH (8), PROMPTS (200 per measurement), EVAL_STEPS (50 sampler steps), CONCEPT
# (diamond, or cyan), COUNT (100 images), METHODS (the names below to run; default all), LR_<NAME> (one method's
# learning rate, the name upper-cased with - as _: LR_LORA_R16=5e-4, LR_FULL=1e-4), SWEEP ("1e-4 3e-4 1e-3":
# every method at each of these rates instead of its own; runs named NAME@LR), PYTHON (python3).
# A run whose eval-NAME.json exists is skipped, so a stopped comparison continues where it stopped.
# Writes OUT/data, OUT/runs/NAME (each run), OUT/NAME-train.json, OUT/NAME-time.txt, OUT/eval-NAME.{json,txt},
# OUT/runs.jsonl, OUT/summary.json, OUT/summary.md and OUT/summary.png (the plot, where matplotlib is installed).
set -euo pipefail
out=${1:?output folder}; device=${2:-auto}
steps=${STEPS:-2000}; batch=${BATCH:-8}; prompts=${PROMPTS:-200}; eval_steps=${EVAL_STEPS:-50}
concept=${CONCEPT:-diamond}; count=${COUNT:-100}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=${TQDM_MININTERVAL:-20}
py=${PYTHON:-python3}
base=$($py -c 'from latentlab.pipeline import default_model_path; print(default_model_path())')
# textual inversion learns the concept's own word (the shapes tokenizer lacks it), from a word it has
initializer=$([ "$concept" = cyan ] && echo blue || echo square)
every="--text-encoder-lora --unet-convolutions"  # the weight kinds' targets: lora_concept.sh's best recipe

# name | learning rate | how it trains: lora METHOD-OPTIONS, ti, or full. Rates: LoRA's from records/lora-concept
# (3e-4 at rank 16 over 2000 steps); DoRA and LoHa as LoRA (their papers keep LoRA's rates); LoKr 1e-3 (LyCORIS
# advises a higher one); adapter layers 1e-3 (Houlsby et al.: 1e-4 to 1e-3); prefix 1e-3 (peft's examples);
# textual inversion 5e-3 (AUTOMATIC1111's); full fine-tuning 1e-5 (records/lora-concept).
TABLE="
lora-r1    3e-4 lora --method lora --rank 1 $every
lora-r4    3e-4 lora --method lora --rank 4 $every
lora-r16   3e-4 lora --method lora --rank 16 $every
lora-r4-attention 3e-4 lora --method lora --rank 4
dora       3e-4 lora --method dora --rank 16 $every
loha       3e-4 lora --method loha --rank 8 $every
lokr       1e-3 lora --method lokr --rank 16 $every
bottleneck 1e-3 lora --method bottleneck --width 16 --text-encoder-lora
prefix     1e-3 lora --method prefix --prefix-length 8 --text-encoder-lora
textual-inversion 5e-3 ti
full       1e-5 full"
mkdir -p "$out/runs"

measure() {  # measure NAME [eval options...]: the judge on ordinary and concept prompts, to OUT/eval-NAME.json
    local name=$1; shift
    $py -m latentlab eval --prompts "$prompts" --steps "$eval_steps" --concept "$concept" --device "$device" \
        --out "$out/eval-$name.json" "$@" 2> "$out/eval-$name.log" | tee "$out/eval-$name.txt"
}

measure_token() {  # measure_token NAME FILE: `measure` with a textual-inversion embedding (its token: the word)
    $py - "$out/eval-$1.json" "$2" "$concept" "$prompts" "$eval_steps" "$device" <<'PY' | tee "$out/eval-$1.txt"
import json, sys
from latentlab import Pipeline
from latentlab.evaluation import prompt_adherence
from latentlab.evaluation.concept import concept_accuracy
path, embedding, concept, prompts, steps, device = sys.argv[1:]
pipe = Pipeline.load("shapes-default", device=device)
token = pipe.load_textual_inversion(embedding)
ordinary = prompt_adherence(pipe, prompts=int(prompts), steps=int(steps))
taught = concept_accuracy(pipe, concept=concept, word=token, prompts=int(prompts), steps=int(steps))
open(path, "w").write(json.dumps([ordinary, taught], indent=2) + "\n")
print(f"test 1 object {ordinary['accuracy']['all']:.1%}; concept ({token}) {taught['accuracy']['all']:.1%}")
PY
}

train() {  # train NAME LR KIND [OPTIONS...]: one run, timed, its peak memory in OUT/NAME-time.txt; then measured
    local name=$1 lr=$2 kind=$3 run="$out/runs/$1" start; shift 3
    local timed=($py -m latentlab)
    [ ! -x /usr/bin/time ] || timed=(/usr/bin/time -v -o "$out/$name-time.txt" "${timed[@]}")
    rm -rf "$run"; start=$(date +%s)
    case $kind in
        lora) "${timed[@]}" lora train --model shapes-default "$@" --data "$out/data" --out "$run" --steps "$steps" \
                  --batch-size "$batch" --lr "$lr" --device "$device" 2> "$out/$name-train.log" > "$out/$name-train.json";;
        ti) "${timed[@]}" textual-inversion train --model shapes-default --data "$out/data" --out "$run" \
                --token "$concept" --initializer "$initializer" --steps "$steps" --batch-size "$batch" --lr "$lr" \
                --device "$device" 2> "$out/$name-train.log" > "$out/$name-train.json";;
        full) "${timed[@]}" train --init "$base" --vae "$base" --data "$out/data" --out "$run" --steps "$steps" \
                  --batch-size "$batch" --lr "$lr" --device "$device" --sample-every 0 --save-every "$steps" \
                  --checkpoint-every "$steps" 2> "$out/$name-train.log" > "$out/$name-train.json";;
    esac
    local seconds=$(($(date +%s) - start)) file
    file=$($py -c 'import json, sys; r = json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(r.get("lora") or r.get("embedding") or "")' "$out/$name-train.json")
    case $kind in
        lora) measure "$name" --model shapes-default --lora "$file";;
        ti) measure_token "$name" "$file";;
        full) measure "$name" --model "$run";;
    esac
    echo "{\"name\": \"$name\", \"kind\": \"$kind\", \"lr\": $lr, \"seconds\": $seconds, \"options\": \"$*\"}" >> "$out/runs.jsonl"
}

# 1. the data, and the base model's measurement
[ -f "$out/data/concept.json" ] || $py -m latentlab.data.concept --out "$out/data" --concept "$concept" --count "$count"
[ -f "$out/eval-base.json" ] || measure base --model shapes-default

# 2. every method (or METHODS), at its rate or at each rate of SWEEP
while read -r name lr kind options; do
    [ -n "$name" ] || continue
    [[ -z ${METHODS:-} || " $METHODS " == *" $name "* ]] || continue
    override=LR_$(echo "$name" | tr 'a-z-' 'A-Z_'); lr=${!override:-$lr}
    for rate in ${SWEEP:-$lr}; do
        run=$name; [ -z "${SWEEP:-}" ] || run="$name@$rate"
        [ -f "$out/eval-$run.json" ] || train "$run" "$rate" "$kind" $options
    done
done <<< "$TABLE"

# 3. the summary: one row per run of runs.jsonl (the latest of each name)
$py - "$out" "$concept" "$steps" "$batch" "$count" <<'PY'
import json, re, sys
from pathlib import Path
out, concept, steps, batch, count = Path(sys.argv[1]), *sys.argv[2:]
runs = {r["name"]: r for r in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}


def accuracies(name):
    ordinary, taught = json.loads((out / f"eval-{name}.json").read_text())
    return {"concept_accuracy": taught["accuracy"]["all"], "concept_drawn": taught["read"],
            "base_accuracy": ordinary["accuracy"]["all"]}


def size(name, run):  # trainable parameters and file bytes: the train command's JSON; the whole model for full
    if run["kind"] != "full":
        trained = json.loads((out / f"{name}-train.json").read_text().splitlines()[-1])
        return trained["trainable_parameters"], trained["file_bytes"]
    if not (out / "runs" / name).exists():  # the weights not kept: the sizes the last summary counted
        return tuple(earlier[name][k] for k in ("trainable_parameters", "file_bytes"))
    from latentlab import Pipeline
    pipe = Pipeline.load(out / "runs" / name, device="cpu")
    files = [out / "runs" / name / part / "model.safetensors" for part in ("text_encoder", "unet")]
    return sum(p.numel() for m in (pipe.text_encoder, pipe.unet) for p in m.parameters()), \
        sum(f.stat().st_size for f in files)


earlier = json.loads((out / "summary.json").read_text())["runs"] if (out / "summary.json").exists() else {}
base = accuracies("base")
rows = {}
for name, run in runs.items():
    parameters, file_bytes = size(name, run)
    timed = out / f"{name}-time.txt"
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", timed.read_text() if timed.exists() else "")
    row = {**run, "trainable_parameters": parameters, "file_bytes": file_bytes,
           "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
           "samples_per_second": int(steps) * int(batch) / max(run["seconds"], 1), **accuracies(name)}
    row["base_accuracy_drop_points"] = 100 * (base["base_accuracy"] - row["base_accuracy"])
    rows[name] = row
summary = {"concept": concept, "images": int(count), "steps": int(steps), "batch_size": int(batch),
           "before": base, "runs": rows}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
lines = [f"# Every method teaching `{concept}` from {count} images ({steps} steps, batch {batch})", "",
         f"Before: concept accuracy {base['concept_accuracy']:.1%}, ordinary prompts {base['base_accuracy']:.1%}.", "",
         "| method | options | lr | trainable parameters | file | train seconds | samples/s | peak memory "
         "| concept accuracy | ordinary after | drop (points) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for name, r in rows.items():
    memory = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:,.0f} MB"
    lines.append(f"| {name} | {r['options'].replace('--text-encoder-lora --unet-convolutions', 'every target')} "
                 f"| {r['lr']:g} | {r['trainable_parameters']:,} | {r['file_bytes'] / 1e6:.2f} MB | {r['seconds']} "
                 f"| {r['samples_per_second']:.1f} | {memory} | {r['concept_accuracy']:.1%} | {r['base_accuracy']:.1%} "
                 f"| {r['base_accuracy_drop_points']:.1f} |")
lines += ["", "samples/s: steps x batch over the training command's whole seconds (start-up and saving included)."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
try:
    import matplotlib
except ImportError:
    sys.exit(print("no matplotlib: summary.png not drawn (pip install latentlab[plot])"))
matplotlib.use("Agg")
import math

import matplotlib.pyplot as plt

points = {}  # one label per point: runs that landed on (nearly) the same one share it
for name, r in rows.items():
    key = (round(math.log10(max(r["trainable_parameters"], 1)), 1), round(100 * r["concept_accuracy"], 1))
    drop = r["base_accuracy_drop_points"]
    points.setdefault(key, []).append((f"{name} (-{drop:g})" if drop > 3 else name, drop <= 3))
fig, ax = plt.subplots(figsize=(9, 5.5))
for (x, y), runs in points.items():
    x = 10**x
    ax.scatter(x, y, color="C0" if all(kept for _, kept in runs) else "C3", s=20)
    ax.annotate(", ".join(label for label, _ in runs), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
ax.axhline(90, color="grey", linestyle=":")
ax.set_xscale("log")
ax.set_xlabel("trainable parameters")
ax.set_ylabel(f"concept accuracy ({concept}), %")
ax.set_title("blue: ordinary prompts kept within 3 points; red: a larger drop, in brackets", fontsize=9)
ax.grid(alpha=0.3)
fig.suptitle(f"Teaching `{concept}` from {count} images: {steps} steps at batch {batch}")
fig.tight_layout()
fig.savefig(out / "summary.png", dpi=100)
print(f"wrote {out / 'summary.png'}")
PY
