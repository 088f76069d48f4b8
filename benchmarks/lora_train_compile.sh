#!/usr/bin/env bash
# `latentlab lora train` on the shipped shapes model, eager and under torch.compile's two modes, on one GPU:
# the recipe of scripts/lora_concept.sh (diamond concept, 100 images, rank 16 on the U-Net's attention and
# convolutions and the text encoder, batch 8, lr 3e-4), 400 steps each. Each run's log.csv gives samples/s
# and the loss every 50 steps; the first row's elapsed time includes loading and compiling.
# MODES picks the runs (default: eager default reduce-overhead); a "-channels-last" suffix adds that flag.
#
#     bash benchmarks/lora_train_compile.sh OUT [DEVICE]      (results: records/lora-train-compile/)
#     MODES="reduce-overhead reduce-overhead-channels-last" STEPS=400 bash benchmarks/lora_train_compile.sh OUT
set -euo pipefail
out=${1:?output folder}; device=${2:-cuda}
py=${PYTHON:-python3}
modes=${MODES:-eager default reduce-overhead}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "$out"
data=$(mktemp -d)
$py -m latentlab.data.concept --out "$data" --concept diamond --count 100 > /dev/null
for mode in $modes; do
  flags=()
  [ "${mode%-channels-last}" != eager ] && flags=(--compile "${mode%-channels-last}")
  [ "$mode" != "${mode%-channels-last}" ] && flags+=(--channels-last)
  $py -m latentlab lora train --model shapes-default --data "$data" --out "$data/$mode" --rank 16 --steps ${STEPS:-400} \
      --batch-size 8 --lr 3e-4 --device "$device" --text-encoder-lora --unet-convolutions "${flags[@]}" \
      2> "$data/$mode.err" > "$out/$mode.json" || { tail -5 "$data/$mode.err"; exit 1; }
  cp "$data/$mode/log.csv" "$out/$mode-log.csv"
done
$py - "$out" $modes <<'PY'
import csv, sys
for mode in sys.argv[2:]:
    rows = list(csv.DictReader(open(f"{sys.argv[1]}/{mode}-log.csv")))
    a, b = rows[1], rows[-1]  # steady state: from step 50 on
    rate = (int(b["step"]) - int(a["step"])) * 8 / (float(b["elapsed_s"]) - float(a["elapsed_s"]))
    print(f"{mode}: {rate:.1f} samples/s from step {a['step']}; first step done at {rows[0]['elapsed_s']} s; "
          f"loss at step {b['step']} {b['loss']}")
PY
