"""`latentlab train-video-decoder`: fine-tune the autoencoder's decoder on video, its temporal layers only
(training/video_decoder.py); its flags are VideoDecoderTrainConfig's fields, and --into writes a copy of a video
model folder with the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..training.video_decoder import COMPONENT, VideoDecoderTrainConfig
from ..data.video import FRAMES
from .options import common, config_from, flag, resumable
from .output import check_out, check_resume
from .values import non_negative, positive

Config = VideoDecoderTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-video-decoder", help="train temporal layers into the autoencoder's decoder on "
                                                        "clips of moving shapes, so decoded frames do not flicker")
    flag(t, Config, "model", help="a video model folder, or an image model (a folder, or shapes-default): its "
                                  "autoencoder is the one tuned")
    flag(t, Config, "out", help=f"output folder: {COMPONENT}/ (the temporal layers), the checkpoint and log")
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int), help="clips a step")
    flag(t, Config, "frames", type=int, choices=FRAMES, help="frames a clip (default %(default)s)")
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "temporal_weight", type=non_negative(float),
         help="weight of the loss's frame-difference (flicker) term beside the per-pixel L1 (default %(default)s)")
    flag(t, Config, "kernel", "--temporal-kernel", type=positive(int),
         help="frames each temporal convolution sees, an odd number (default %(default)s)")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    t.add_argument("--into", default=None,
                   help="also write a copy of the video model folder --model with the trained decoder added, as this "
                        "new folder (--model itself is never changed)")
    t.set_defaults(func=run)


def run(args) -> None:
    from ..training.video_decoder import check_into, train_video_decoder, write_into  # here: tests replace them

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    if args.into is not None:
        check_out(args.into, folder=True)
        check_into(args.model, args.into)
    result = train_video_decoder(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and {COMPONENT}/ are "
              f"saved in {args.out}; run the same command with --resume to continue"
              + (f" (then --into writes {args.into})" if args.into else ""), file=sys.stderr)
    elif args.into is not None:
        write_into(args.model, Path(args.out) / COMPONENT, args.into)
        result["into"] = args.into
    print(json.dumps(result))
