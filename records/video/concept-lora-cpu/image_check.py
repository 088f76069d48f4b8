"""The same LoRA on the image model it was trained on: evaluation/concept.py's concept accuracy (docs/lora.md's
measure, with fewer prompts). Usage: python records/video/concept-lora-cpu/image_check.py OUT.json LORA_FILE."""

import json
import sys

import torch

from latentlab import Pipeline
from latentlab.evaluation.concept import concept_accuracy

torch.set_num_threads(1)
pipe = Pipeline.load("shapes-default", device="cpu")
pipe.load_adapter(sys.argv[2])
report = concept_accuracy(pipe, concept="diamond", prompts=100, steps=50, round_trip=False)
with open(sys.argv[1], "w") as f:
    f.write(json.dumps(report, indent=2) + "\n")
print(json.dumps({k: report[k] for k in ("accuracy", "read")}))
