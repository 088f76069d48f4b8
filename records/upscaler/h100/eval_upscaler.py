import json, sys, time, torch
from latentlab.evaluation.upscaler import generated_report, upscaling_report
from latentlab.pipeline import Pipeline
from latentlab.upscaler_model import UpscalerModel
run, fp16, out = sys.argv[1:4]
UpscalerModel.load(run, device="cpu").save(fp16, dtype=torch.float16)
up = UpscalerModel.load(fp16, device="cuda")
report = {}
for split in ("test", "heldout"):
    start = time.time()
    report[split] = r = upscaling_report(up, scenes=200, split=split, noise_levels=(0, 20, 50))
    print(split, round(time.time() - start, 1), "s", json.dumps(r), flush=True)
    open(out, "w").write(json.dumps(report, indent=1) + "\n")
start = time.time()
report["generated"] = r = generated_report(Pipeline.load("shapes-default", device="cuda"), up, prompts=200)
print("generated", round(time.time() - start, 1), "s", json.dumps(r), flush=True)
open(out, "w").write(json.dumps(report, indent=1) + "\n")
