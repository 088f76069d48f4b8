"""`latentlab lora train` and `latentlab lora merge`: low-rank adaptation of a model (training/lora.py), and
LoRAs folded into its weights. lora train's flags are LoRATrainConfig's fields."""

from __future__ import annotations

import json
import sys

from ..adapters.lora import UNET_CONVOLUTIONS
from ..devices import DTYPES, resolve_dtype
from ..training.lora import LoRATrainConfig
from .options import LOAD, MODEL_HELP, Parser, common, config_from, default_of, flag, load_model, missing_command
from .output import check_out, check_resume
from .values import finite, lora_file, non_negative, positive, probability, prompt

Config = LoRATrainConfig


def add_parser(commands) -> None:
    lora = commands.add_parser("lora", help="low-rank adaptation: train, merge (see latentlab lora -h)")
    lora_commands = lora.add_subparsers(dest="lora_command", metavar="LORA_COMMAND", parser_class=Parser)
    lora.set_defaults(func=missing_command(lora_commands, "lora command"))
    add_merge(lora_commands)
    add_train(lora_commands)


# ------------------------------------------------------------------ lora merge


def add_merge(commands) -> None:
    m = commands.add_parser("merge", help="fold LoRAs into a model's weights and save it as a latentlab model folder")
    m.add_argument("--model", required=True, help="the base model (any Pipeline.load accepts)")
    m.add_argument("--lora", type=lora_file, action="append", required=True, metavar="FILE[:SCALE]",
                   help="a LoRA file and its multiplier (default 1: W = W0 + SCALE * alpha/rank * B A); repeatable")
    m.add_argument("--out", required=True, help="the model folder to write")
    m.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="store the merged weights in this dtype (default: float32)")
    flag(m, LOAD, "device", help="auto (CUDA if present), cpu, cuda or cuda:N")
    m.set_defaults(func=merge)


def merge(args) -> None:
    check_out(args.out, folder=True)
    pipe = load_model(args)  # merged in float32, cast when saved
    pipe.merge_lora()
    pipe.remove_lora(keep_merged=True)
    pipe.save(args.out, dtype=resolve_dtype(args.dtype))
    print(f"merged {len(args.lora)} LoRA{'s' if len(args.lora) > 1 else ''} into {args.out}")


# ------------------------------------------------------------------ lora train


def add_train(commands) -> None:
    t = commands.add_parser("train", help="train a LoRA on a folder of captioned images; the base model stays frozen")
    flag(t, Config, "model", help=MODEL_HELP)
    common(t, seeds=Config, devices=Config, model=False)
    flag(t, Config, "data",
         help="a folder of captioned images (a .txt beside each image, or metadata.jsonl), a latent cache of this "
              "model's autoencoder, or shapes, fashion-mnist, mnist")
    flag(t, Config, "out", help="the run folder: lora.safetensors (the result), checkpoint.safetensors, log.csv, prior/")
    add_adapters(t)
    add_optimisation(t)
    add_prior(t)
    add_speed(t)
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    flag(t, Config, "resume",
         help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    t.set_defaults(func=train)


def add_adapters(t) -> None:
    """Which layers get adapters, and their shape."""
    flag(t, Config, "rank", type=positive(int),
         help="r, the adapters' rank (default %(default)s); the update B A is scaled by alpha/rank")
    flag(t, Config, "alpha", type=positive(float),
         help="alpha of the scale alpha/rank (default: the rank, so the scale is 1)")
    flag(t, Config, "dropout", type=probability, help="dropout on the adapters' input (default 0)")
    flag(t, Config, "targets", nargs="+", metavar="PATTERN",
         help="the U-Net layers to adapt: regular expressions matching the end of a module's dotted name "
              "(default: %(default)s, the attention projections)")
    flag(t, Config, "unet_convolutions",
         help="also adapt the U-Net's convolutions (" + " ".join(UNET_CONVOLUTIONS) + ")")
    flag(t, Config, "text_encoder_lora", help="also adapt the text encoder's attention and feed-forward layers")


def add_optimisation(t) -> None:
    """How long, on how much, and how fast."""
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int),
         help="images per step (default %(default)s; as many prior images join them)")
    flag(t, Config, "lr", type=positive(float), help="AdamW's learning rate (default %(default)s)")
    flag(t, Config, "warmup", type=non_negative(int), help="linear learning-rate warm-up steps (default %(default)s)")
    flag(t, Config, "weight_decay", type=non_negative(float), help="AdamW's weight decay (default %(default)s)")
    flag(t, Config, "grad_clip", type=positive(float), help="clip the gradient norm to this")
    flag(t, Config, "p_uncond", type=probability,
         help="probability of training on the empty prompt, which keeps guidance working (default %(default)s)")
    flag(t, Config, "image_size", type=positive(int), help="default: the base model's")


def add_prior(t) -> None:
    """Prior preservation (DreamBooth)."""
    flag(t, Config, "prior_prompts", "--prior-prompt", type=prompt, action="append", metavar="PROMPT",
         help="prior preservation (DreamBooth): a class prompt the base model draws images of before training, "
              "cached in OUT/prior; repeat for several")
    flag(t, Config, "prior_images", type=positive(int), help="how many prior images to draw (default %(default)s)")
    flag(t, Config, "prior_weight", type=non_negative(float),
         help="lambda of loss = L_data + lambda L_prior (default %(default)s)")
    flag(t, Config, "prior_steps", type=positive(int), help="sampler steps for the prior images")
    flag(t, Config, "prior_guidance", type=finite, help="guidance scale for the prior images")


def add_speed(t) -> None:
    """Memory and speed."""
    flag(t, Config, "gradient_checkpointing",
         help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    flag(t, Config, "channels_last",
         help="the U-Net's feature maps in NHWC, the GPU convolutions' own layout (5%% faster compiled at SD 1.5's "
              "size)")
    t.add_argument("--compile", nargs="?", const=default_of(Config, "compile_mode"), metavar="MODE",
                   help="torch.compile the U-Net, in torch.compile's MODE (default: default; reduce-overhead replays "
                        "CUDA graphs, the fastest on a GPU)")


def train(args) -> None:
    from ..training.lora import train_lora  # here, not above: tests replace it

    mode = {} if args.compile is None else {"compile_mode": args.compile}
    config = config_from(args, Config, compile=args.compile is not None, **mode)
    check_resume(args)
    check_out(args.out, folder=True)
    result = train_lora(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and {result['lora']} are "
              f"saved; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
