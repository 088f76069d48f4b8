#!/bin/bash
# Device call (2026-12-08): GPU tests; the shipped video model trained on (two learning rates) and measured;
# the 16-frame video decoder against its kernel-1 control; an inpainting model trained on the GPU and measured;
# the upscaler, v and eps prediction side by side, trained and measured.
set -u
T0=$(date +%s); R=$OUT/res; mkdir -p $R runs
left() { echo $(( $1 - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TQDM_MININTERVAL=30
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch;print(torch.__version__)"; nproc; echo "code $(cat .device/head)"; } > $R/machine.txt
python3 .device/rebuild_video.py runs/video-init
( timeout $(left 300) make test-gpu PY=python3 GPU_SETUP= > $R/gpu-tests.log 2>&1; echo "rc $? at $(( $(date +%s) - T0 )) s" >> $R/gpu-tests.log ) &
video() {  # arm lr
  timeout $(left 420) python3 -m latentlab train-video --init runs/video-init --out runs/$1/run --minutes 6.3 --steps 1000000 \
    --batch-size 32 --frames 16 --lr $2 --warmup 50 --device cuda > $R/$1-train.json 2> $R/$1-train.log
  cp runs/$1/run/log.csv $R/$1-train-log.csv 2>/dev/null
  timeout $(left 540) python3 .device/eval_video.py runs/$1 $R/$1-eval.json $3 > $R/$1-eval.log 2>&1
  tar czf $OUT/$1.tar.gz -C runs/$1/model temporal model_index.json
  timeout $(left 570) python3 -m latentlab generate-video --model runs/$1/model --device cuda --out $R/$1-samples --seed 0 \
    "a small red circle moves to the right" "a large blue square grows" "a small green triangle bounces up and down" \
    "a large yellow circle turns purple" > /dev/null 2>&1
  echo "$1 done $(( $(date +%s) - T0 )) s"
}
video video-lr5e-4 5e-4 baseline &
video video-lr1e-3 1e-3 no &
decoder() {  # arm options
  PYTHON=python3 STEPS=1000000 BATCH=8 FRAMES=16 CLIPS=200 LR=1e-3 TRAIN_OPTIONS="--warmup 20 $2" \
    timeout $(left 500) scripts/train_video_decoder.sh runs/$1 shapes-default 6 cuda > $R/$1.log 2>&1
  cp runs/$1/decoder-eval.json $R/$1-eval.json; cp runs/$1/train.json $R/$1-train.json; cp runs/$1/run/log.csv $R/$1-train-log.csv
  echo "$1 done $(( $(date +%s) - T0 )) s"
}
decoder decoder-k3 "" &
decoder decoder-k1 "--temporal-kernel 1" &
( timeout $(left 400) python3 -m latentlab train --vae src/latentlab/weights/shapes-default --init shapes-default --inpainting \
    --out runs/inpaint --minutes 6 --steps 1000000 --batch-size 64 --lr 2e-4 --p-two 0.6 --sample-every 0 \
    --save-every 1000000 --checkpoint-every 1000000 --device cuda > $R/inpaint-train.json 2> $R/inpaint-train.log
  cp runs/inpaint/log.csv $R/inpaint-train-log.csv 2>/dev/null
  timeout $(left 560) python3 .device/eval_inpaint.py runs/inpaint runs/inpaint-fp16 $R/inpaint-eval.json > $R/inpaint-eval.log 2>&1
  tar czf $OUT/inpaint-unet.tar.gz -C runs/inpaint-fp16 unet model_index.json
  tar czf $OUT/inpaint-rest.tar.gz -C runs/inpaint-fp16 --exclude unet .
  echo "inpaint done $(( $(date +%s) - T0 )) s" ) &
upscaler() {  # arm prediction
  timeout $(left 440) python3 -m latentlab train-upscaler --out runs/$1 --minutes 6.5 --steps 1000000 \
    --batch-size 64 --lr 2e-4 --prediction $2 --device cuda > $R/$1-train.json 2> $R/$1-train.log
  cp runs/$1/log.csv $R/$1-train-log.csv 2>/dev/null
  timeout $(left 575) python3 .device/eval_upscaler.py runs/$1 runs/$1-fp16 $R/$1-eval.json > $R/$1-eval.log 2>&1
  tar czf $OUT/$1.tar.gz -C runs/$1-fp16 .
  echo "$1 done $(( $(date +%s) - T0 )) s"
}
upscaler upscaler-v v &
upscaler upscaler-eps eps &
wait
tar czf $OUT/results.tar.gz -C $OUT res && rm -rf $R
ls -la $OUT; echo "total $(( $(date +%s) - T0 )) s"
