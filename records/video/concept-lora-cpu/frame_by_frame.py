"""The control: the video model's image model with the LoRA, each frame drawn alone from the same noise
(evaluation/video.py's `frame_by_frame`, the temporal layers made new: alpha = 1), measured as measure.py does.
Usage: python records/video/concept-lora-cpu/frame_by_frame.py OUT.json LORA_FILE."""

import json
import sys
import time

import torch

from latentlab.evaluation.video import frame_by_frame
from latentlab.evaluation.video_concept import video_concept_accuracy
from latentlab.video_pipeline import VideoPipeline

torch.set_num_threads(1)
pipe = frame_by_frame(VideoPipeline.load("shapes-video", device="cpu"))
pipe.load_adapter(sys.argv[2])
start = time.time()
report = video_concept_accuracy(pipe, concept="diamond", word="diamond", prompts=40, frames=8, steps=25,
                                guidance=4.0, sampler="ddim", batch_size=10)
report = {"model": "shapes-video's image model, frame by frame", "lora": sys.argv[2], **report,
          "seconds": round(time.time() - start, 1)}
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: v for k, v in report.items() if k != "failures"}))
