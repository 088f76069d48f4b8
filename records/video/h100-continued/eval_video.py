import json, sys, time, torch
from latentlab.evaluation.video import video_adherence
from latentlab.video_pipeline import VideoPipeline
run, out, baseline = sys.argv[1], sys.argv[2], sys.argv[3] == "baseline"
VideoPipeline.load(f"{run}/run", device="cpu").save(f"{run}/model", dtype=torch.float16)
pipe = VideoPipeline.load(f"{run}/model", device="cuda")
print("alphas", sorted(round(m.alpha.item(), 3) for m in pipe.unet.temporal.values()), flush=True)
report = {}
for split in ("test", "heldout"):
    for name in ("video model", "frame by frame") if baseline else ("video model",):
        start = time.time()
        report[f"{split}, {name}"] = r = video_adherence(pipe, prompts=200, split=split, baseline=name != "video model")
        print(split, name, round(time.time() - start, 1), "s", json.dumps(r), flush=True)
        open(out, "w").write(json.dumps(report, indent=1) + "\n")
