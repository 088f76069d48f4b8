"""`latentlab train-video`: make a video model from an image model by training its temporal layers on the video
world, or teach a video model a new motion with a motion LoRA (training/video.py); its flags are
VideoTrainConfig's fields and those of its TemporalConfig."""

from __future__ import annotations

import json
import sys

from ..data.video import FRAMES, NEW_MOTIONS
from ..models.video_unet import TemporalConfig
from ..training.video import LORA_FILENAME, VideoTrainConfig
from .options import common, config_from, default_of, flag, resumable
from .output import check_out, check_resume
from .values import non_negative, positive, probability

Config = VideoTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-video", help="train a video model: temporal layers added to an image model, "
                                                "trained on clips of moving shapes")
    flag(t, Config, "image_model",
         help="the image model whose frozen networks the video model keeps: a model folder, or a shipped model "
              "(shapes-default); or give --init")
    flag(t, Config, "init", help="start from this video model folder (its image model and temporal layers) instead")
    flag(t, Config, "out", help=f"output folder: the video model (with --lora-rank: {LORA_FILENAME}), its checkpoint "
                                "and log")
    add_motion_lora(t)
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int), help="clips a step, over all processes and micro-batches")
    flag(t, Config, "grad_accum", type=positive(int),
         help="split each step's batch into this many micro-batches (same result, less memory)")
    flag(t, Config, "frames", type=int, choices=FRAMES, help="frames a clip (default %(default)s)")
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "p_uncond", type=probability,
         help="probability of the empty prompt, for classifier-free guidance (default %(default)s)")
    flag(t, Config, "p_two", type=probability, help="fraction of two-object clips (default %(default)s)")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    flag(t, Config, "gradient_checkpointing",
         help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    add_temporal(t)
    t.set_defaults(func=run)


def add_motion_lora(t) -> None:
    """A new motion, and a LoRA that learns it."""
    flag(t, Config, "motion", choices=list(NEW_MOTIONS),
         help="train on clips of this motion, which the video world never shows (down and to the right), instead of "
              "the video world's")
    flag(t, Config, "concept_count", type=positive(int),
         help="how many clips of the --motion to train on, cycled (default %(default)s)")
    flag(t, Config, "lora_rank", type=positive(int),
         help=f"train only a LoRA of this rank in --init's temporal layers, everything else frozen, and write it as "
              f"OUT/{LORA_FILENAME} (generate-video --adapter loads it)")
    flag(t, Config, "lora_targets", "--lora-target", action="append", metavar="PATTERN",
         help="a temporal layer the LoRA adapts: a regular expression matching the end of a module's dotted name "
              "(default: %(default)s, the temporal attention projections); repeat for several")


def add_temporal(t) -> None:
    """The temporal layers (models/video_unet.py)."""
    t.add_argument("--no-temporal-attention", dest="attention", action="store_false",
                   default=default_of(TemporalConfig, "attention"),
                   help="no temporal transformer after each spatial one")
    t.add_argument("--no-temporal-conv", dest="convolutions", action="store_false",
                   default=default_of(TemporalConfig, "convolutions"),
                   help="no temporal convolution after each residual block")
    flag(t, TemporalConfig, "kernel", "--temporal-kernel", type=positive(int),
         help="frames each temporal convolution sees, an odd number (default %(default)s)")
    flag(t, TemporalConfig, "head_dim", "--temporal-head-dim", type=positive(int),
         help="width of a temporal attention head (default: the spatial attention's)")


def run(args) -> None:
    from ..training.video import train_video  # here, not above: tests replace it

    config = config_from(args, Config, temporal=config_from(args, TemporalConfig))
    check_resume(args)
    check_out(args.out, folder=True)
    result = train_video(config)
    if not result.pop("main"):
        return  # one report per run, from the main process
    if result["interrupted"]:
        saved = LORA_FILENAME if "lora" in result else "the model"
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and {saved} are saved "
              f"in {args.out}; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
