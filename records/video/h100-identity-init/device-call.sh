#!/bin/bash
# One device call: the video step benchmark; GPU tests; the video model retrained with identity-initialised
# temporal layers, measured, then a motion LoRA on it, measured; issue 19's two missing six-concept arms
# (full fine-tuning measured; every-layer lambda 1e6 trained as far as time allows).
set -u
T0=$(date +%s); R=$OUT; mkdir -p $R/res runs
SHIFT=${SHIFT:-0}  # seconds fewer than the 600 the timeline below is laid out for
left() { echo $(( $1 - SHIFT - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3 TQDM_MININTERVAL=30
{ date -u; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; python3 -c "import torch;print(torch.__version__)"; nproc; echo "code $(cat .device/head 2>/dev/null) + device_a.sh"; } > $R/res/machine.txt
( for c in diamond cyan star pink ring cross; do python3 -m latentlab.data.concept --out runs/cp/data/$c --concept $c --count 100 --prior 100 > /dev/null; done; echo "data $(( $(date +%s) - T0 )) s" ) &
(cd benchmarks && timeout 80 python3 video_training_step.py --out $R/res/bench > $R/res/bench.log 2>&1); echo "bench $(( $(date +%s) - T0 )) s"
wait
( timeout 200 make test-gpu PY=python3 GPU_SETUP= > $R/res/gpu-tests.log 2>&1; echo "rc $?" >> $R/res/gpu-tests.log ) &
( timeout $(left 440) python3 -m latentlab train-video --image-model shapes-default --out runs/video/run --minutes ${VIDEO_MINUTES:-5.5} --steps 1000000 \
    --batch-size 32 --frames 16 --lr 5e-4 --warmup 100 --device cuda > $R/res/video-train.json 2> $R/res/video-train.log
  cp runs/video/run/*.csv $R/res/ 2>/dev/null
  timeout $(left 500) python3 - > $R/res/video-eval.log 2>&1 <<'PY'
import json, os, time, torch
from latentlab.evaluation.video import video_adherence
from latentlab.video_pipeline import VideoPipeline
VideoPipeline.load("runs/video/run", device="cpu").save("runs/video/model", dtype=torch.float16)
pipe = VideoPipeline.load("runs/video/model", device="cuda")
print("alphas", sorted(round(m.alpha.item(), 3) for m in pipe.unet.temporal.values()), flush=True)
report = {}
for split in ("test", "heldout"):
    start = time.time()
    report[split] = video_adherence(pipe, prompts=100, split=split)
    print(split, round(time.time() - start, 1), "s", json.dumps(report[split]), flush=True)
    open(os.environ["OUT"] + "/res/video-eval.json", "w").write(json.dumps(report, indent=1) + "\n")
PY
  tar czf $R/video-model.tar.gz -C runs/video/model --exclude unet --exclude vae --exclude text_encoder --exclude tokenizer .
  timeout 30 python3 -m latentlab generate-video --model runs/video/model --device cuda --out $R/res/samples --seed 0 \
    "a small red circle moves to the right" "a large blue square grows" "a small green triangle bounces up and down" \
    "a large yellow circle turns purple" > /dev/null 2>&1
  echo "video done $(( $(date +%s) - T0 )) s"
  timeout $(left 588) scripts/motion_lora.sh runs/motion runs/video/model 0.6 cuda > $R/res/motion.log 2>&1
  cp runs/motion/eval.json $R/res/motion-eval.json; cp runs/motion/train.json $R/res/motion-train.json; cp runs/motion/train.log $R/res/motion-train.log
  echo "motion done $(( $(date +%s) - T0 )) s" ) &
( export LATENTLAB_FASHION_MNIST=$PWD/.device/fashion-mnist; timeout $(left 430) scripts/train_clip_model.sh runs/clip ${CLIP_MINUTES:-4} cuda > $R/res/clip.log 2>&1
  cp runs/clip/eval.json $R/res/clip-eval.json; cp runs/clip/train.json $R/res/clip-train.json; cp runs/clip/train.log $R/res/clip-train.log; cp runs/clip/run/log.csv $R/res/clip-log.csv
  tar czf $R/clip-model.tar.gz -C runs/clip model; echo "clip done $(( $(date +%s) - T0 )) s" ) &
( export CONCEPTS="diamond cyan star pink ring cross" PRIOR=100 STEPS=500 PROMPTS=100 PAIR_PROMPTS=25 EVAL_STEPS=25
  ( ARMS="full full 0 1e-5 -" timeout $(left 585) scripts/continual_compare.sh runs/cp cuda > $R/res/cp-full.log 2>&1; echo "full done $(( $(date +%s) - T0 )) s" ) &
  ( ARMS="all-lambda-1e6 c-lora 1000000 3e-4 all" timeout $(left 570) scripts/continual_compare.sh runs/cp cuda > $R/res/cp-1e6.log 2>&1
    sleep 2; tar czf $R/cp-1e6.tar.gz -C runs/cp all-lambda-1e6 all-lambda-1e6.json all-lambda-1e6.log; echo "1e6 stopped $(( $(date +%s) - T0 )) s" ) &
  wait ) &
wait
cp runs/cp/eval-*.json runs/cp/eval-*.txt runs/cp/*.json runs/cp/*.log $R/res/ 2>/dev/null
tar czf $R/results.tar.gz -C $R res && rm -rf $R/res
ls -la $R; echo "total $(( $(date +%s) - T0 )) s"
