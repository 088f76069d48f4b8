"""Fine-tuning the Stable Diffusion 1.5 U-Net, ours against diffusers + peft, on one GPU: LoRA and full
fine-tuning, and every other adapter kind (DoRA, LoHa, LoKr beside peft's; bottleneck adapters and prefixes,
which peft has not for this U-Net, alone).

The reference loop is `../shared/bench/diffusers_anchor.py`'s: diffusers' UNet2DConditionModel at SD 1.5's
size with random weights, float32 weights under bf16 autocast, AdamW, the MSE of the output against the
input, batch 8 of 64x64x4 latents with 77 context tokens of width 768; LoRA by peft (r=4, alpha=4, on
to_q, to_k, to_v, to_out.0). Ours runs the same step on our U-Net holding the same weights:
- full fine-tuning: float32 weights under bf16 autocast, as the reference;
- LoRA (adapters/lora.py, same rank, alpha and targets): the frozen base in bfloat16 (it has no
  gradient, so it needs no float32 master copy), the adapters' A and B in float32, bf16 autocast.
The other kinds (--runs METHOD[+ckpt]): lora-r1 and lora-r16 (LoRA at rank 1 and 16); dora (peft's
LoraConfig(use_dora=True)), loha and lokr (peft's LoHaConfig and LoKrConfig), rank 4, alpha 4, the same
targets; bottleneck (width 16 after every sub-layer of the transformer blocks) and prefix (length 8 through a
width-64 MLP, every attention), whose rows have no reference.
Each with and without gradient checkpointing, eager; then ours compiled (torch.compile, default mode, or
reduce-overhead: CUDA graphs). The reference steps AdamW's default (foreach) implementation, as diffusers'
training scripts do; ours the fused one, as our trainers do on CUDA (training/loop.py `adamw`).
The runs of one checkpointing mode (the reference's and ours, LoRA and full, eager and compiled) stay on the
GPU together and are timed in interleaved rounds, since a host's speed drifts from minute to minute; each
figure is the median round's. Peak memory is torch.cuda.max_memory_allocated over a run's first steps (its
warm-up, when CUDA graphs are recorded), less what the runs built before it hold: its weights and optimiser
state included.

    python benchmarks/lora_training.py --out records/lora-training [--runs full,lora+ckpt]
        [--compiled lora,lora@reduce-overhead,lora@reduce-overhead/cl] [--plain-layers] [--block-modules]
        [--channels-last] [--foreach-adamw] [--torch-checkpoint]

--compiled takes RUN[@MODE][/cl]: torch.compile's mode (default "default"), /cl for channels-last maps.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from latentlab import fast
from latentlab.fast import activation_memory, frozen_transformer
from timing import seconds_per_call  # benchmarks/timing.py, beside this script

B, RANK, TARGETS = 8, 4, ["to_q", "to_k", "to_v", "to_out.0"]
RANKS = {"lora-r1": 1, "lora-r16": 16}  # the LoRA runs at another rank than RANK
WEIGHT_KINDS = ("lora", "lora-r1", "lora-r16", "dora", "loha", "lokr")  # peft has these for the U-Net
METHODS = ("full", *WEIGHT_KINDS, "bottleneck", "prefix")


def peft_config(mode: str):
    """peft's configuration of adapter kind `mode`, as ours: rank, alpha = rank, the same targets."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    r = RANKS.get(mode, RANK)
    if mode in ("loha", "lokr"):
        return (LoHaConfig if mode == "loha" else LoKrConfig)(r=r, alpha=r, target_modules=TARGETS)
    return LoraConfig(r=r, lora_alpha=r, init_lora_weights="gaussian", target_modules=TARGETS,
                      use_dora=mode == "dora")


def add_ours(model, mode: str) -> None:
    """Our adapter of kind `mode` on `model` (frozen, bfloat16), its weights float32."""
    from latentlab.adapters import add_dora, add_loha, add_lokr, add_lora
    from latentlab.adapters.bottleneck import add_bottleneck
    from latentlab.adapters.prefix import add_prefix

    r = RANKS.get(mode, RANK)
    weight_kinds = {"dora": add_dora, "loha": add_loha, "lokr": add_lokr}
    if mode in WEIGHT_KINDS:
        weight_kinds.get(mode, add_lora)(model, rank=r, alpha=r, targets=TARGETS, dtype=torch.float32)
    elif mode == "bottleneck":
        add_bottleneck(model, width=16, dtype=torch.float32)
    else:
        add_prefix(model, length=8, hidden=64, dtype=torch.float32)


def diffusers_unet(mode: str, checkpointing: bool):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    if mode != "full":
        model.requires_grad_(False)
        model.add_adapter(peft_config(mode))
    return model, lambda x, t, c: model(x, t, c).sample


def our_unet(mode: str, checkpointing: bool, compiled: str | None, channels_last: bool, torch_checkpoint: bool = False):
    from diffusers import UNet2DConditionModel

    from latentlab.models import UNet, UNetConfig

    torch.manual_seed(0)
    with torch.device("cuda"):
        theirs = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        model = UNet(UNetConfig.stable_diffusion_1())
    model.load_state_dict(theirs.state_dict())  # the same weights
    del theirs
    model.train().enable_gradient_checkpointing(checkpointing)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if mode != "full":
        model.requires_grad_(False).to(torch.bfloat16)  # frozen: no gradient, no float32 master copy
        add_ours(model, mode)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=1e-3)  # nonzero, so that B's gradient path is exercised as trained
    fast.install(model)  # the speed wing, as the trainers run it
    network = torch.compile(model, mode=compiled) if compiled else model
    return model, partial(with_torch_checkpoint, network) if torch_checkpoint else network


def with_torch_checkpoint(network, *args):
    """network(*args) with our U-Net's blocks checkpointed by torch.utils.checkpoint (non-reentrant, as
    diffusers does) instead of fast/checkpointing.py: what the latter saves."""
    from latentlab.fast.modules import FastUNet
    from latentlab.models import UNet

    ours, FastUNet.checkpointed = FastUNet.checkpointed, UNet.checkpointed  # the plain U-Net's: torch's
    try:
        return network(*args)
    finally:
        FastUNet.checkpointed = ours


class Contender:
    """One run of a group: its model on the GPU, its training step, and the memory it holds between steps."""

    def __init__(self, label: str, build, fused: bool, layers: str, warm: int):
        self.label, self.layers = label, layers
        set_layers(layers)
        before = torch.cuda.memory_allocated()
        self.model, network = build()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        optimizer = fast.track(torch.optim.AdamW(params, lr=1e-5, fused=fused or None))  # (as our trainers do)
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(B, 4, 64, 64, device="cuda", generator=g)
        c = torch.randn(B, 77, 768, device="cuda", generator=g)
        t = torch.randint(0, 1000, (B,), device="cuda", generator=g)

        def step():
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration (for mode="reduce-overhead"; else nothing)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.mse_loss(network(x, t, c).float(), x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        self.step = step
        torch.cuda.reset_peak_memory_stats()  # from the first step: CUDA graphs take their memory when recorded
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        self.first_step_s = time.perf_counter() - start
        for _ in range(warm):
            step()
        torch.cuda.synchronize()
        self.peak = torch.cuda.max_memory_allocated() - before  # the runs built before it hold what they held then
        self.seconds = []

    def round(self, n: int) -> None:
        set_layers(self.layers)
        self.seconds.append(seconds_per_call(self.step, n, 0))

    def row(self) -> dict:
        seconds = sorted(self.seconds)
        row = {"run": self.label, "samples_per_s": B / seconds[len(seconds) // 2], "peak_GiB": self.peak / 2**30,
               "trainable_M": self.trainable / 1e6, "first_step_s": self.first_step_s,
               "samples_per_s_rounds": [round(B / s, 1) for s in self.seconds]}
        print(json.dumps(row), flush=True)
        return row


def set_layers(layers: str) -> None:
    """"lean": our training layers (fast/activation_memory.py) and transformer-block nodes
    (fast/frozen_transformer.py); "block modules": the lean layers, each block's modules; "plain": PyTorch's."""
    activation_memory.ENABLED = layers != "plain"
    frozen_transformer.ENABLED = layers == "lean"


def measure_group(contenders: list[tuple], rounds: int, n: int, warm: int) -> list[dict]:
    """The runs of one group (the reference and ours, eager and compiled) on the GPU together, timed in
    interleaved rounds of n steps: the host's speed drifts by tens of percent from minute to minute, so
    runs timed one after the other are not comparable. Each run's figure is its median round."""
    runs = [Contender(*spec, warm) for spec in contenders]
    for _ in range(rounds):
        for run in runs:
            run.round(n)
    set_layers("lean")
    return [run.row() for run in runs]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per group (default 9)")
    parser.add_argument("--runs", default="full,full+ckpt,lora,lora+ckpt", help="eager runs (each beside its reference)")
    parser.add_argument("--compiled", default="lora,lora+ckpt,full",
                        help="our runs under torch.compile; RUN@MODE picks torch.compile's mode (else default)")
    parser.add_argument("--channels-last", action="store_true", help="also ours with NHWC feature maps")
    parser.add_argument("--plain-layers", action="store_true",
                        help="also ours with PyTorch's layers (fast/activation_memory.py ENABLED = False)")
    parser.add_argument("--block-modules", action="store_true",
                        help="also ours with each transformer block's modules rather than one node per block "
                             "(fast/frozen_transformer.py ENABLED = False)")
    parser.add_argument("--torch-checkpoint", action="store_true",
                        help="also ours with torch.utils.checkpoint instead of fast/checkpointing.py (runs with "
                             "checkpointing)")
    parser.add_argument("--foreach-adamw", action="store_true",
                        help="also ours with the reference's optimiser (AdamW's default, foreach) instead of our "
                             "trainers' fused AdamW")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rounds, n, warm = (3, 4, 2) if args.quick else (args.rounds, 5, 3)
    # one group per checkpointing mode: the reference's runs, ours and our compiled runs, interleaved
    groups: dict[bool, list[tuple]] = {}  # checkpointing -> (label, build, fused AdamW, layers)
    references: set[str] = set()

    def group(run: str) -> list[tuple]:
        mode, checkpointing, tag = parse_run(run)
        members = groups.setdefault(checkpointing, [])
        if run not in references and mode in ("full", *WEIGHT_KINDS):
            references.add(run)
            members.append((f"{reference_name(mode)}, {tag}", partial(diffusers_unet, mode, checkpointing), False,
                            "lean"))
        return members

    for run in [r for r in args.runs.split(",") if r]:
        mode, checkpointing, tag = parse_run(run)
        variants = [("", False, "lean", True, False)] \
            + [(", channels-last", True, "lean", True, False)] * args.channels_last \
            + [(", plain layers", False, "plain", True, False)] * args.plain_layers \
            + [(", block modules", False, "block modules", True, False)] * args.block_modules \
            + [(", foreach AdamW", False, "lean", False, False)] * args.foreach_adamw \
            + [(", torch.utils.checkpoint", False, "lean", True, True)] * (args.torch_checkpoint and checkpointing)
        for suffix, channels_last, layers, fused, torch_checkpoint in variants:
            group(run).append((f"latentlab, {tag}{suffix}",
                               partial(our_unet, mode, checkpointing, None, channels_last, torch_checkpoint), fused,
                               layers))
    for spec in [] if args.no_compile else [c for c in args.compiled.split(",") if c]:
        spec, _, layout = spec.partition("/")  # "lora", "lora+ckpt", "lora@reduce-overhead", "lora/cl", ...
        run, _, compile_mode = spec.partition("@")
        mode, checkpointing, tag = parse_run(run)
        label = (f"latentlab, {tag}, compiled{f' ({compile_mode})' if compile_mode else ''}"
                 f"{', channels-last' if layout == 'cl' else ''}")
        group(run).append((label, partial(our_unet, mode, checkpointing, compile_mode or "default", layout == "cl"),
                           True, "lean"))
    rows = []
    for _, contenders in sorted(groups.items()):
        rows += measure_group(contenders, rounds, n, warm)
        result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": B,
                  "rounds": rounds, "steps_per_round": n, "rows": rows}
        (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")  # after every group
        write_table(result, args.out / "table.md")
        torch.cuda.empty_cache()
    print((args.out / "table.md").read_text())


def parse_run(run: str) -> tuple[str, bool, str]:
    """A run's name as (mode, checkpointing, the rows' tag): "lora+ckpt" is ("lora", True, "lora + checkpointing")."""
    mode, checkpointing = run.split("+")[0], run.endswith("+ckpt")
    if mode not in METHODS or run not in (mode, f"{mode}+ckpt"):
        raise SystemExit(f"unknown run {run!r}: give METHOD or METHOD+ckpt, METHOD one of {', '.join(METHODS)}")
    return mode, checkpointing, f"{mode}{' + checkpointing' if checkpointing else ''}"


def reference_name(mode: str) -> str:
    return "diffusers" if mode == "full" else "diffusers + peft"


def paired_ratio(row: dict, ref: dict) -> float:
    """The median over rounds of row's speed over the reference's in the same round."""
    ratios = sorted(a / b for a, b in zip(row["samples_per_s_rounds"], ref["samples_per_s_rounds"]))
    return ratios[len(ratios) // 2]


def write_table(result: dict, path: Path) -> None:
    rows = result["rows"]

    def reference(run: str) -> dict:
        tag = run.split(", ", 1)[1].split(", compiled")[0]
        for variant in (", channels-last", ", plain layers", ", block modules", ", foreach AdamW",
                        ", torch.utils.checkpoint"):
            tag = tag.replace(variant, "")
        return next((r for r in rows if r["run"] == f"{reference_name(tag.split(' ')[0])}, {tag}"), None)

    lines = [f"{result['device']}, torch {result['torch']}, batch {result['batch']}, bf16 autocast, AdamW (the "
             f"reference's foreach, ours fused unless named); median of {result['rounds']} interleaved rounds of "
             f"{result['steps_per_round']} steps. The last column is the median over rounds of the ratio within each "
             f"round, whose runs follow one another within seconds: the host's speed drifts less between them\n",
             "| run | trainable | samples/s | peak GiB | samples/s vs reference | peak vs reference | "
             "per-round ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = reference(r["run"])
        against = (f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x | {r['peak_GiB'] / ref['peak_GiB']:.2f}x | "
                   f"{paired_ratio(r, ref):.2f}x") if ref else "(peft has none) | | "
        lines.append(f"| {r['run']} | {r['trainable_M']:.2f}M | {r['samples_per_s']:.1f} | {r['peak_GiB']:.1f} | "
                     f"{against} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
