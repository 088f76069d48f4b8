"""`latentlab lora train` and `latentlab lora merge`: low-rank adaptation of a model, or another adapter kind
(--method; training/lora.py), and adapters folded into its weights. lora train's flags are LoRATrainConfig's
fields."""

from __future__ import annotations

import json
import sys

from ..adapters import inject
from ..adapters.bottleneck import ACTIVATIONS, PLACEMENTS
from ..adapters.lora import UNET_CONVOLUTIONS
from ..devices import DTYPES, resolve_dtype
from ..errors import LatentlabError
from ..pipeline import Pipeline
from ..training.lora import METHODS, LoRATrainConfig
from .options import LOAD, MODEL_HELP, Parser, common, config_from, default_of, flag, missing_command
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
    m = commands.add_parser("merge", help="fold LoRAs (or DoRA, LoHa, LoKr adapters) into a model's weights and save "
                                          "it as a latentlab model folder")
    m.add_argument("--model", required=True, help="the base model (any Pipeline.load accepts)")
    m.add_argument("--lora", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="a LoRA file and its multiplier (default 1: W = W0 + SCALE * alpha/rank * B A); repeatable")
    m.add_argument("--adapter", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="an adapter file of any kind lora train writes and its multiplier (default 1); repeatable. "
                        "Bottleneck and prefix adapters are no weights and cannot be merged")
    m.add_argument("--out", required=True, help="the model folder to write")
    m.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="store the merged weights in this dtype (default: float32)")
    flag(m, LOAD, "device", help="auto (CUDA if present), cpu, cuda or cuda:N")
    m.set_defaults(func=merge)


def merge(args) -> None:
    files = (args.lora or []) + (args.adapter or [])
    if not files:
        raise LatentlabError("give the adapters to merge: --lora FILE or --adapter FILE, each repeatable")
    check_out(args.out, folder=True)
    pipe = Pipeline.load(args.model, device=args.device)  # merged in float32, cast when saved
    for path, scale in files:
        check_mergeable(pipe, path, pipe.load_adapter(path, scale=scale))
    pipe.merge_lora()
    pipe.remove_lora(keep_merged=True)
    pipe.save(args.out, dtype=resolve_dtype(args.dtype))
    what = "adapter file" if args.adapter else "LoRA"
    print(f"merged {len(files)} {what}{'s' if len(files) > 1 else ''} into {args.out}")


def check_mergeable(pipe: Pipeline, path: str, name: str) -> None:
    """Refuse an adapter that is not a weight added to W0 (a bottleneck's nonlinearity, a prefix's keys)."""
    kinds = {layer.label for part in pipe.lora_parts().values() for _, layer in inject.adapter_layers(part)
             if name in layer.adapters and not layer.mergeable}
    if kinds:
        raise LatentlabError(f"{path} holds {', '.join(sorted(kinds))} adapters, which are not weights and cannot be "
                             f"merged; use them with latentlab generate --adapter")


# ------------------------------------------------------------------ lora train


def add_train(commands) -> None:
    t = commands.add_parser("train", help="train a LoRA (or another adapter: --method) on a folder of captioned "
                                          "images; the base model stays frozen")
    flag(t, Config, "model", help=MODEL_HELP)
    common(t, seeds=Config, devices=Config, model=False)
    flag(t, Config, "data",
         help="a folder of captioned images (a .txt beside each image, or metadata.jsonl), a latent cache of this "
              "model's autoencoder, or shapes, fashion-mnist, mnist")
    flag(t, Config, "out", help="the run folder: METHOD.safetensors (the result), checkpoint.safetensors, log.csv, "
                                "prior/")
    add_adapters(t)
    add_sublayer_adapters(t)
    add_optimisation(t)
    add_prior(t)
    add_speed(t)
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    flag(t, Config, "resume",
         help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    t.set_defaults(func=train)


def add_adapters(t) -> None:
    """The adapter kind; for the weight kinds (lora, dora, loha, lokr), which layers get adapters, and their shape."""
    flag(t, Config, "method", choices=list(METHODS),
         help="the adapter: lora (default), dora (LoRA with a trained magnitude), loha (Hadamard product), lokr "
              "(Kronecker product), bottleneck (adapter layers after the sub-layers), prefix (learned keys and values)")
    flag(t, Config, "rank", type=positive(int),
         help="r, the adapters' rank (default %(default)s); the update B A is scaled by alpha/rank")
    flag(t, Config, "alpha", type=positive(float),
         help="alpha of the scale alpha/rank (default: the rank, so the scale is 1)")
    flag(t, Config, "dropout", type=probability, help="dropout on the adapters' input (lora, dora; default 0)")
    flag(t, Config, "targets", nargs="+", metavar="PATTERN",
         help="the U-Net layers to adapt: regular expressions matching the end of a module's dotted name "
              "(default: %(default)s, the attention projections)")
    flag(t, Config, "unet_convolutions",
         help="also adapt the U-Net's convolutions (" + " ".join(UNET_CONVOLUTIONS) + ")")
    flag(t, Config, "tucker", help="loha, lokr: a kxk convolution's update from a Tucker core")
    flag(t, Config, "lokr_factor", type=int,
         help="lokr: split each dimension as (FACTOR, rest) where FACTOR divides it (default -1: near the root)")
    flag(t, Config, "lokr_decompose_both", help="lokr: the small Kronecker factor as a rank-r product too")
    flag(t, Config, "text_encoder_lora",
         help="also adapt the text encoder's attention and feed-forward layers (any method)")


def add_sublayer_adapters(t) -> None:
    """The bottleneck's and the prefix's shapes."""
    flag(t, Config, "width", type=positive(int), help="bottleneck: the inner width m (default %(default)s)")
    flag(t, Config, "placement", nargs="+", choices=list(PLACEMENTS), metavar="PLACEMENT",
         help="bottleneck: after which sub-layers of each transformer block: " + ", ".join(PLACEMENTS)
              + " (default: all)")
    flag(t, Config, "activation", choices=list(ACTIVATIONS), help="bottleneck: the nonlinearity (default %(default)s)")
    flag(t, Config, "prefix_length", type=positive(int),
         help="prefix: keys and values per attention (default %(default)s)")
    flag(t, Config, "prefix_hidden", type=positive(int),
         help="prefix: the width of the MLP that reparameterises them while training (default %(default)s)")


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
