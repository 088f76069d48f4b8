"""Concept accuracy of the shipped video model, with or without an image LoRA of the concept loaded.

Usage: python records/video/concept-lora-cpu/measure.py OUT.json [LORA_FILE] (PROMPTS, THREADS, SCALE from the
environment; default 40, 1 and 1: the LoRA's multiplier)."""

import json
import os
import sys
import time

import torch

from latentlab.evaluation.video_concept import video_concept_accuracy
from latentlab.video_pipeline import VideoPipeline

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
out, lora = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
pipe = VideoPipeline.load("shapes-video", device="cpu")
if lora:
    pipe.load_adapter(lora, scale=float(os.environ.get("SCALE", "1")))
start = time.time()
report = video_concept_accuracy(pipe, concept="diamond", word="diamond", prompts=int(os.environ.get("PROMPTS", "40")),
                                frames=8, steps=25, guidance=4.0, sampler="ddim", batch_size=10)
scale = float(os.environ.get("SCALE", "1")) if lora else None
report = {"model": "shapes-video", "lora": lora, "scale": scale, **report, "seconds": round(time.time() - start, 1)}
with open(out, "w") as f:
    f.write(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: v for k, v in report.items() if k != "failures"}))
