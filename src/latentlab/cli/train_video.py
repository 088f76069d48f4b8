"""`latentlab train-video`: make a video model from an image model by training its temporal layers on the video
world (training/video.py); its flags are VideoTrainConfig's fields and those of its TemporalConfig."""

from __future__ import annotations

import json
import sys

from ..models.video_unet import TemporalConfig
from ..training.video import VideoTrainConfig
from ..video_pipeline import FRAMES
from .options import common, config_from, default_of, flag
from .output import check_out, check_resume
from .values import non_negative, positive, probability

Config = VideoTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-video", help="train a video model: temporal layers added to an image model, "
                                                "trained on clips of moving shapes")
    flag(t, Config, "image_model",
         help="the image model whose frozen networks the video model keeps: a model folder, or a shipped model "
              "(shapes-default)")
    flag(t, Config, "out", help="output folder: the video model, its checkpoint and log")
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
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint (out/checkpoint.safetensors) every N steps; SIGTERM and Ctrl-C also "
              "write it before the run exits")
    flag(t, Config, "resume",
         help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    flag(t, Config, "gradient_checkpointing",
         help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    add_temporal(t)
    t.set_defaults(func=run)


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
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and the model are saved "
              f"in {args.out}; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
