"""The video model's training step against the image model's, per frame, on one GPU (issue 20's goal: the
temporal layers' step at most 1.5x the image step's cost per frame).

Both start from the shipped shapes model's U-Net. The image step trains all of it, as `latentlab train` does,
on a batch of N latents (8x8x4); the video step trains only the temporal layers of `VideoUNet` (the spatial
ones frozen, as `latentlab train-video` does) on N / T clips of T frames, so both see N frames. A step: bf16
autocast over float32 weights, the MSE, backward, AdamW, the speed wing installed (as the trainers run it);
32 context tokens of width 192 per image or clip. Reports frames per second and the ratio of seconds per frame.

    python benchmarks/video_training_step.py --out records/video-training-step [--frames-per-batch 512]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from latentlab import fast
from latentlab.models.video_unet import VideoUNet
from latentlab.pipeline import Pipeline
from timing import seconds_per_call  # benchmarks/timing.py, beside this script


def step_fn(network, shape: tuple[int, ...], context_rows: int, checkpointing: bool = False):
    """One training step of `network` on random latents of `shape`, training its parameters that need grad."""
    network = network.cuda().train()
    if checkpointing:
        network.enable_gradient_checkpointing()
    fast.install(network)
    optimizer = fast.track(torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=1e-4))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(*shape, device="cuda", generator=g)
    context = torch.randn(context_rows, 32, network.config.context_dim, device="cuda", generator=g)
    t = torch.randint(0, 1000, (shape[0],), device="cuda", generator=g)
    target = torch.randn_like(x)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = network(x, t, context)
        F.mse_loss(out.float(), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames-per-batch", type=int, default=512)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    N = args.frames_per_batch

    def image_unet():
        return Pipeline.load("shapes-default", device="cpu").unet

    runs = [("image step (whole U-Net trained)", 1, lambda: step_fn(image_unet(), (N, 4, 8, 8), N))]
    for T in args.frames:
        for checkpointing in (False, True):
            name = f"video step, {T} frames (temporal layers trained){', checkpointing' if checkpointing else ''}"
            runs.append((name, T, lambda T=T, c=checkpointing: step_fn(VideoUNet(image_unet()).freeze_spatial(),
                                                                         (N // T, 4, T, 8, 8), N // T, c)))
    rows = []
    for name, T, make in runs:  # one network on the GPU at a time, so each peak memory is its own
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        seconds = seconds_per_call(make(), n=30, warm=5)
        rows.append({"step": name, "frames_per_clip": T, "frames_per_step": N, "frames_per_s": N / seconds,
                     "ms_per_step": 1e3 * seconds, "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30})
        print(json.dumps(rows[-1]), flush=True)
    image = rows[0]["ms_per_step"]
    for row in rows:
        row["cost_per_frame_vs_image"] = row["ms_per_step"] / image
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{result['device']}, torch {result['torch']}, bf16 autocast, AdamW, {N} frames of 8x8x4 latents a step\n",
             "| step | frames/s | ms a step | peak memory | cost per frame vs the image step |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['step']} | {r['frames_per_s']:.0f} | {r['ms_per_step']:.1f} | {r['peak_memory_GiB']:.1f} GiB | "
              f"{r['cost_per_frame_vs_image']:.2f}x |" for r in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
