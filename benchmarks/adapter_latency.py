"""Inference latency of each fine-tuning method's adapter: one step of the shapes model's U-Net, with the
adapter unmerged and (where the maths allows) merged, against the base model.

An unmerged adapter adds work to every adapted layer on every step; a merged one is folded into the base
weights and should cost nothing (docs/finetuning.md); "folded" also removes the adapter layer that wraps the
merged weight (`remove(keep_merged=True)`), leaving plain layers: what the merged column costs beyond it is
the wrapper's own work per call. Adapter layers (bottleneck) and prefixes cannot be
merged: their cost stays. Textual inversion adds an embedding row and full fine-tuning changes weights in
place: both run the base model's U-Net, so they have no row of their own. The adapters hold random weights
(latency does not depend on training), sit where scripts/finetune_compare.sh puts them (the weight kinds on
attention and convolutions, adapter layers after every sub-layer, prefixes on every attention), and the
speed wing is installed as the pipeline installs it. Batch 1 is one image without guidance, batch 2 one
image with classifier-free guidance. Every variant stays loaded and they are timed in interleaved rounds
(a shared CPU's speed drifts); each figure is the median round's.

    python benchmarks/adapter_latency.py --out records/adapter-latency [--device cuda] [--rounds 30]
    python benchmarks/adapter_latency.py --out DIR --device cuda --model sd15    # SD 1.5's U-Net, bf16

--model sd15 times Stable Diffusion 1.5's U-Net instead (random weights, bfloat16, adapters in bfloat16 too,
64x64x4 latents, 77 random context tokens of width 768), as a GPU user runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from latentlab import Pipeline, fast
from latentlab.adapters import add_dora, add_loha, add_lokr, add_lora
from latentlab.adapters.bottleneck import add_bottleneck
from latentlab.adapters.inject import merge, remove, trainable
from latentlab.adapters.lora import UNET_ATTENTION, UNET_CONVOLUTIONS
from latentlab.adapters.prefix import add_prefix, freeze_prefixes
from latentlab.models import UNet, UNetConfig
from latentlab.models.text_encoder import encode_prompts

TARGETS = [*UNET_ATTENTION, *UNET_CONVOLUTIONS]
# name -> (add_<kind>, its options, mergeable)
METHODS = {
    "lora-r1": (add_lora, {"rank": 1, "targets": TARGETS}, True),
    "lora-r4": (add_lora, {"rank": 4, "targets": TARGETS}, True),
    "lora-r16": (add_lora, {"rank": 16, "targets": TARGETS}, True),
    "dora": (add_dora, {"rank": 16, "targets": TARGETS}, True),
    "loha": (add_loha, {"rank": 8, "targets": TARGETS}, True),
    "lokr": (add_lokr, {"rank": 16, "targets": TARGETS}, True),
    "bottleneck": (add_bottleneck, {"width": 16}, False),
    "prefix": (add_prefix, {"length": 8}, False),
}


STATES = ("unmerged", "merged", "folded")  # folded: merged, then the adapter layers removed (plain layers)


def base_unet(model: str, device: str) -> torch.nn.Module:
    """The U-Net every variant copies: the shapes model's, or SD 1.5's (random weights, bfloat16)."""
    if model == "shapes":
        return Pipeline.load("shapes-default", device=device).unet.eval()
    torch.manual_seed(0)
    with torch.device(device):
        return UNet(UNetConfig.stable_diffusion_1()).eval().to(torch.bfloat16)


def variant(base: torch.nn.Module, method: str | None, state: str) -> torch.nn.Module:
    """A copy of `base` with `method`'s adapter (random weights, base's dtype) in `state` (STATES); None: the
    base."""
    unet = copy.deepcopy(base)
    dtype = next(base.parameters()).dtype
    if method is not None:
        add, options, _ = METHODS[method]
        add(unet, "bench", **options, dtype=dtype)
        with torch.no_grad():  # away from the identity, as a trained adapter is
            for p in trainable(unet, "bench"):
                p.add_(0.02 * torch.randn_like(p))
        freeze_prefixes(unet)
        fast.install(unet)
        if state != "unmerged":
            merge(unet, "bench")
        if state == "folded":
            remove(unet, "bench", keep_merged=True)
    fast.install(unet)
    return unet


def inputs(pipe: Pipeline | None, batch: int, device: str) -> tuple:
    """One denoising step's inputs at `batch`: latents, timesteps, a prompt's context and mask; pipe None:
    SD 1.5's shapes, random, bfloat16."""
    g = torch.Generator().manual_seed(batch)
    if pipe is None:
        x, context = torch.randn(batch, 4, 64, 64, generator=g), torch.randn(batch, 77, 768, generator=g)
        t = torch.full((batch,), 500)
        return x.to(device, torch.bfloat16), t.to(device), context.to(device, torch.bfloat16), None
    c, f = pipe.vae.config.latent_channels, pipe.image_size // pipe.vae.config.downsampling
    x = torch.randn(batch, c, f, f, generator=g).to(pipe.device)
    t = torch.full((batch,), 500, device=pipe.device)
    context, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a large red square"] * batch)
    return x, t, context, mask


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def time_rounds(variants: dict, args, step_inputs: tuple) -> dict[str, float]:
    """Milliseconds per U-Net step of each variant: the median of `rounds` interleaved rounds of `calls`."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for unet in variants.values():
        for _ in range(args.warm):
            unet(*step_inputs)
    for _ in range(args.rounds):
        for name, unet in variants.items():
            sync(args.device)
            start = time.perf_counter()
            for _ in range(args.calls):
                unet(*step_inputs)
            sync(args.device)
            times[name].append(1000 * (time.perf_counter() - start) / args.calls)
    return {name: statistics.median(ms) for name, ms in times.items()}


def table(results: dict) -> str:
    """The markdown table: ms per step and the ratio to the base, per batch and state."""
    batches = results["batches"]
    head = " | ".join(f"batch {b} {state}" for b in batches for state in STATES)
    lines = [f"| method | {head} |", "|---|" + "---:|" * (len(STATES) * len(batches))]
    for method in ["base", *METHODS]:
        cells = []
        for b in batches:
            ms, base = results["ms"][str(b)], results["ms"][str(b)]["base"]
            for state in STATES:
                key = "base" if method == "base" else f"{method}/{state}"
                cells.append(f"{ms[key]:.2f} ms ({ms[key] / base:.2f}x)" if key in ms else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder for results.json and table.md")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds (default 30)")
    parser.add_argument("--calls", type=int, default=3, help="U-Net steps per variant per round (default 3)")
    parser.add_argument("--warm", type=int, default=3, help="untimed steps per variant first (default 3)")
    parser.add_argument("--model", choices=["shapes", "sd15"], default="shapes",
                        help="the shapes model's U-Net (default) or SD 1.5's, random, bfloat16")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load("shapes-default", device=args.device) if args.model == "shapes" else None
    base = base_unet(args.model, args.device)
    variants = {"base": variant(base, None, "unmerged")}
    for method, (_, _, mergeable) in METHODS.items():
        for state in STATES if mergeable else STATES[:1]:
            variants[f"{method}/{state}"] = variant(base, method, state)
    ms = {str(b): time_rounds(variants, args, inputs(pipe, b, args.device)) for b in args.batches}
    results = {"model": args.model, "device": args.device, "cpu": platform.processor() or platform.machine(),
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "batches": args.batches,
               "rounds": args.rounds, "calls": args.calls,
               "options": {m: {k: v for k, v in o.items() if k != "targets"} for m, (_, o, _) in METHODS.items()},
               "ms": ms}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
