"""Text to one 512x512 image at Stable Diffusion 1.5's configuration: latentlab's Pipeline against diffusers'
StableDiffusionPipeline, side by side on one GPU.

Random weights (nothing is downloaded), created once in diffusers and transformers and loaded
unchanged into ours; bf16; DDIM with trailing timesteps and guidance 7.5 on both sides, from the
same initial noise, so both draw the same image up to bf16 rounding. Reports seconds per image
(text encoding, every U-Net step, decoding) and the largest pixel difference between the two images.

    python benchmarks/pipeline.py --out records/pipeline [--steps 30] [--compile]

Needs a CUDA GPU, diffusers and transformers (test-only dependencies of latentlab).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

DTYPE = torch.bfloat16
PROMPT = "an astronaut riding a horse on mars, detailed oil painting"


def build():
    """(diffusers' pipeline, ours) with the same random SD 1.5 weights, bf16 on the GPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from latentlab.io import convert
    from latentlab.io.checkpoint import build as build_empty
    from latentlab.io.checkpoint import load_weights
    from latentlab.io.stable_diffusion import SD1_DIFFUSION
    from latentlab.models import AutoencoderKL as OurVAE
    from latentlab.models import CLIPTextModel as OurCLIP
    from latentlab.models import UNet, clip_tokenizer
    from latentlab.models.clip_tokenizer import write_vocab_files
    from latentlab.pipeline import Pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, hidden_act="quick_gelu", eos_token_id=49407))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer(*map(str, write_vocab_files(tmp)), model_max_length=77)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
    theirs = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                                     safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ours = Pipeline(
        tokenizer=clip_tokenizer(),
        text_encoder=load_weights(build_empty(OurCLIP, convert.clip_config_from_transformers(text.config.to_dict())),
                                  convert.from_transformers_clip_text(text.state_dict()), "text encoder"),
        unet=load_weights(build_empty(UNet, convert.unet_config_from_diffusers(dict(unet.config))), unet.state_dict(),
                          "unet"),
        vae=load_weights(build_empty(OurVAE, convert.vae_config_from_diffusers(dict(vae.config))), vae.state_dict(),
                         "vae"),
        diffusion=SD1_DIFFUSION, image_size=512)
    return theirs.to("cuda", DTYPE), ours.to("cuda", dtype=DTYPE)


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """(seconds per call over `repeats` calls after one untimed call, the last output)."""
    out = fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    theirs, ours = build()
    latents = torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(0))  # as Pipeline.sample draws them
    runs = {
        "diffusers": lambda: theirs(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, output_type="pt",
                                    latents=latents.to("cuda", DTYPE)).images.float() * 2 - 1,
        "latentlab": lambda: ours.sample([PROMPT], steps=args.steps, guidance=7.5, spacing="trailing"),
        "latentlab, CUDA graph": lambda: ours.sample([PROMPT], steps=args.steps, guidance=7.5, spacing="trailing",
                                                     cuda_graph=True),
    }
    rows, images = [], {}
    with torch.no_grad():
        for name, run in runs.items():
            seconds, images[name] = timed(run, args.repeats)
            rows.append({"pipeline": name, "seconds_per_image": seconds, "steps_per_s": args.steps / seconds})
            print(json.dumps(rows[-1]), flush=True)
        ours.to("cuda", channels_last=True)
        seconds, images["latentlab, channels-last, CUDA graph"] = timed(runs["latentlab, CUDA graph"], args.repeats)
        rows.append({"pipeline": "latentlab, channels-last, CUDA graph", "seconds_per_image": seconds,
                     "steps_per_s": args.steps / seconds})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["seconds_per_image"]
    difference = {name: (image - images["diffusers"]).abs().max().item() for name, image in images.items()}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps,
              "prompt": PROMPT, "rows": rows, "max_pixel_difference_vs_diffusers": difference}
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"{result['device']}, torch {result['torch']}, bf16, one 512x512 image, {args.steps} DDIM steps, "
             "guidance 7.5 (batch 2 through the U-Net)\n",
             "| pipeline | s / image | U-Net steps/s | vs diffusers | largest pixel difference from diffusers' image |",
             "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['pipeline']} | {row['seconds_per_image']:.3f} | {row['steps_per_s']:.1f} | "
                     f"{base / row['seconds_per_image']:.2f}x | {difference[row['pipeline']]:.3f} (of 2) |")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
