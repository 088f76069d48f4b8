import json, sys, time, torch
from latentlab.evaluation.inpainting import inpainting_accuracy
from latentlab.pipeline import Pipeline
run, fp16, out = sys.argv[1:4]
Pipeline.load(run, device="cpu").save(fp16, dtype=torch.float16)
report = {}
for split in ("test", "heldout"):
    start = time.time()
    report[split] = r = inpainting_accuracy(Pipeline.load(fp16, device="cuda"), scenes=200, split=split)
    print(split, round(time.time() - start, 1), "s", json.dumps(r), flush=True)
    open(out, "w").write(json.dumps(report, indent=1) + "\n")
