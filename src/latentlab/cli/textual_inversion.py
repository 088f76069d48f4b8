"""`latentlab textual-inversion train`: a new token's embedding learned on a frozen model
(training/textual_inversion.py); its flags are TextualInversionConfig's fields. `latentlab generate
--embedding FILE` uses the result."""

from __future__ import annotations

import json
import sys

from ..training.textual_inversion import TextualInversionConfig
from .options import MODEL_HELP, Parser, common, config_from, flag, missing_command
from .output import check_out, check_resume
from .values import non_negative, positive, prompt

Config = TextualInversionConfig


def add_parser(commands) -> None:
    ti = commands.add_parser("textual-inversion", help="learn a new token for a concept (see latentlab "
                                                       "textual-inversion -h)")
    ti_commands = ti.add_subparsers(dest="ti_command", metavar="TEXTUAL_INVERSION_COMMAND", parser_class=Parser)
    ti.set_defaults(func=missing_command(ti_commands, "textual-inversion command"))
    t = ti_commands.add_parser("train", help="learn a token's embedding from captioned images; the model stays frozen")
    flag(t, Config, "model", help=MODEL_HELP)
    common(t, seeds=Config, devices=Config, model=False)
    flag(t, Config, "data", help="a folder of captioned images of the concept (python -m latentlab.data.concept "
                                 "writes one), a latent cache of this model's autoencoder, or shapes, fashion-mnist, "
                                 "mnist")
    flag(t, Config, "out", help="the run folder: learned_embeds.safetensors (the result), checkpoint.safetensors, "
                                "log.csv")
    add_token(t)
    add_optimisation(t)
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    flag(t, Config, "resume",
         help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    t.set_defaults(func=train)


def add_token(t) -> None:
    """The new token and where its vectors start."""
    flag(t, Config, "token", type=prompt, help="the new token, e.g. \"<diamond>\"; prompts then use it as written")
    flag(t, Config, "initializer", type=prompt,
         help="a word whose embedding the vectors start from (the mean of its tokens'), e.g. square")
    flag(t, Config, "word", type=prompt,
         help="the captions' word for the concept, which training replaces by the token (default: the word a "
              "concept folder's concept.json names; else the captions must hold the token)")
    flag(t, Config, "vectors", type=positive(int),
         help="embedding vectors the token stands for (default %(default)s): TOKEN, TOKEN_1, ...")


def add_optimisation(t) -> None:
    """How long, on how much, and how fast."""
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int), help="images per step (default %(default)s)")
    flag(t, Config, "lr", type=positive(float), help="AdamW's learning rate (default %(default)s)")
    flag(t, Config, "warmup", type=non_negative(int), help="linear learning-rate warm-up steps (default %(default)s)")
    flag(t, Config, "weight_decay", type=non_negative(float), help="AdamW's weight decay (default %(default)s)")
    flag(t, Config, "grad_clip", type=positive(float), help="clip the gradient norm to this")
    flag(t, Config, "image_size", type=positive(int), help="default: the model's")
    flag(t, Config, "gradient_checkpointing",
         help="recompute the U-Net's activations in the backward pass (less memory, more compute)")


def train(args) -> None:
    from ..training.textual_inversion import train_textual_inversion  # here, not above: tests replace it

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    result = train_textual_inversion(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and {result['embedding']} "
              "are saved; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
