"""One training step of the shipped shapes model's U-Net against diffusers' UNet2DConditionModel at the same
size, side by side on one GPU.

The diffusers network is built at the shipped architecture's settings (two levels of 64 and 128 channels,
attention at both, 2 and 4 heads, cross-attention width 192, scale-shift time conditioning, linear
projections) and ours is read from its config (`io/convert.py`), so both compute the same function with the
same weights. A step: bf16 autocast over float32 weights, the MSE on 8x8x4 latents with 32 context tokens,
backward, AdamW. Also ours as shipped (with the pooled text added to the time embedding, which diffusers
has no equivalent of). Reports samples per second, eager and under torch.compile.

    python benchmarks/training_step.py --out records/training-step [--batch 256] [--no-compile]
        [--plain-layers]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from latentlab import fast
from latentlab.fast import activation_memory
from timing import seconds_per_call  # benchmarks/timing.py, beside this script


def networks():
    from diffusers import UNet2DConditionModel

    from latentlab.io.convert import unet_config_from_diffusers
    from latentlab.models import UNet
    from latentlab.training.presets import preset

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=192, attention_head_dim=(2, 4), norm_num_groups=32, norm_eps=1e-6,
        resnet_time_scale_shift="scale_shift", use_linear_projection=True)
    ours = UNet(unet_config_from_diffusers(dict(theirs.config)))
    ours.load_state_dict(theirs.state_dict())
    shipped = UNet(preset("default", "unet"))
    return {"diffusers": (theirs, True), "latentlab": (ours, False), "latentlab as shipped (+ pooled text)": (shipped, False)}


def step_fn(model, is_diffusers: bool, batch: int, compiled: bool):
    model = model.cuda().train()
    if not is_diffusers:
        fast.install(model)  # the speed wing, as the trainers run it
    optimizer = fast.track(torch.optim.AdamW(model.parameters(), lr=1e-4))
    network = torch.compile(model) if compiled else model
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 4, 8, 8, device="cuda", generator=g)
    context = torch.randn(batch, 32, 192, device="cuda", generator=g)
    t = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    target = torch.randn_like(x)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = network(x, t, context)
            out = out.sample if is_diffusers else out
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--plain-layers", action="store_true",
                        help="also ours with PyTorch's layers (fast/activation_memory.py ENABLED = False), eager")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for compiled in (False,) if args.no_compile else (False, True):
        runs = [(name, model, is_diffusers, True) for name, (model, is_diffusers) in networks().items()]
        if args.plain_layers and not compiled:  # under torch.compile the lean layers step aside anyway
            runs += [(f"{name}, plain layers", model, False, False) for name, model, d, _ in runs if not d]
        for name, model, is_diffusers, lean in runs:
            activation_memory.ENABLED = lean
            start = time.perf_counter()
            step = step_fn(model, is_diffusers, args.batch, compiled)
            step()
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            seconds = seconds_per_call(step, n=30, warm=5)
            rows.append({"network": name, "compiled": compiled, "batch": args.batch,
                         "samples_per_s": args.batch / seconds, "first_step_s": first,
                         "parameters_M": sum(p.numel() for p in model.parameters()) / 1e6})
            print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{result['device']}, torch {result['torch']}, bf16 autocast, AdamW, batch {args.batch} of 8x8x4 latents\n",
             "| network | mode | parameters | samples/s | vs diffusers |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        base = next(r["samples_per_s"] for r in rows if r["network"] == "diffusers" and r["compiled"] == row["compiled"])
        lines.append(f"| {row['network']} | {'compiled' if row['compiled'] else 'eager'} | {row['parameters_M']:.2f}M | "
                     f"{row['samples_per_s']:.0f} | {row['samples_per_s'] / base:.2f}x |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
