"""Trainable parameters and file sizes of every fine-tuning method at Stable Diffusion 1.5's size.

Counted, not timed: SD 1.5's U-Net (UNetConfig.stable_diffusion_1) and text encoder (CLIP ViT-L/14's text
tower, CLIPTextConfig's defaults) are built on the meta device (shapes, no memory), each method's adapter is
added with the options of scripts/finetune_compare.sh, and its trainable tensors counted. The file is what the
adapter's state dict holds in float16 (what SD files store), which a prefix's reparameterising MLP is not part
of. Full fine-tuning trains every weight of the networks it names; each method is set against full
fine-tuning of the networks it adapts. The survey's claim checked here: that LoRA at r = 1 trains about
10,000 times fewer parameters than full fine-tuning (Hu et al. measured it on GPT-3).

    python benchmarks/parameter_counts.py --out records/finetune-compare/sd15-parameters
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latentlab.adapters import add_dora, add_loha, add_lokr, add_lora
from latentlab.adapters.bottleneck import add_bottleneck
from latentlab.adapters.inject import adapter_state_dict, trainable
from latentlab.adapters.lora import TEXT_ENCODER, UNET_ATTENTION, UNET_CONVOLUTIONS
from latentlab.adapters.prefix import add_prefix, freeze_prefixes
from latentlab.models import UNet, UNetConfig
from latentlab.models.clip import CLIPTextConfig, CLIPTextModel

EVERY = (*UNET_ATTENTION, *UNET_CONVOLUTIONS)
# name -> (add_<kind>, its options, its U-Net targets or None, also the text encoder)
METHODS = {
    "lora-r1 attention": (add_lora, {"rank": 1}, UNET_ATTENTION, False),
    "lora-r4 attention": (add_lora, {"rank": 4}, UNET_ATTENTION, False),
    "lora-r1 every target": (add_lora, {"rank": 1}, EVERY, True),
    "lora-r4 every target": (add_lora, {"rank": 4}, EVERY, True),
    "lora-r16 every target": (add_lora, {"rank": 16}, EVERY, True),
    "dora-r16 every target": (add_dora, {"rank": 16}, EVERY, True),
    "loha-r8 every target": (add_loha, {"rank": 8}, EVERY, True),
    "lokr-r16 every target": (add_lokr, {"rank": 16}, EVERY, True),
    "bottleneck w16": (add_bottleneck, {"width": 16}, None, True),
    "prefix P8": (add_prefix, {"length": 8}, None, True),
}


def networks() -> dict[str, torch.nn.Module]:
    with torch.device("meta"):
        return {"unet": UNet(UNetConfig.stable_diffusion_1()), "text_encoder": CLIPTextModel(CLIPTextConfig())}


def count(tensors) -> int:
    return sum(t.numel() for t in tensors)


def measure(method: str) -> dict:
    add, options, targets, text_encoder = METHODS[method]
    parts = networks()
    adapted = {"unet": parts["unet"], **({"text_encoder": parts["text_encoder"]} if text_encoder else {})}
    for part, model in adapted.items():
        where = {} if targets is None else {"targets": targets if part == "unet" else TEXT_ENCODER}
        add(model, "m", **options, **where)
    trained = count(p for m in adapted.values() for p in trainable(m, "m"))
    for model in adapted.values():
        freeze_prefixes(model)  # a prefix's file holds its keys and values, not the MLP that trained them
    stored = count(t for m in adapted.values() for t in adapter_state_dict(m, "m").values())
    return {"method": method, "networks": list(adapted), "trainable": trained, "file_MB_fp16": 2 * stored / 1e6}


def full_row(parts: dict[str, torch.nn.Module], names: list[str]) -> dict:
    n = count(p for name in names for p in parts[name].parameters())
    return {"method": "full", "networks": names, "trainable": n, "file_MB_fp16": 2 * n / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = networks()
    full = {tuple(r["networks"]): r for r in (full_row(parts, ["unet"]), full_row(parts, ["unet", "text_encoder"]))}
    rows = [*full.values(), *(measure(method) for method in METHODS)]
    lines = ["| method | networks | trainable parameters | fewer than full fine-tuning of the same networks | "
             "float16 file |", "|---|---|---:|---:|---:|"]
    for r in rows:
        r["fewer_than_full"] = full[tuple(r["networks"])]["trainable"] / r["trainable"]
        lines.append(f"| {r['method']} | {', '.join(r['networks'])} | {r['trainable']:,} | "
                     f"{r['fewer_than_full']:,.0f}x | {r['file_MB_fp16']:.2f} MB |")
    (args.out / "results.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
