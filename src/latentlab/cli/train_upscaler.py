"""`latentlab train-upscaler`: train the diffusion upscaler (training/upscaler.py) on the shapes world, 32 -> 64
pixels, from scratch; its flags are UpscalerTrainConfig's fields."""

from __future__ import annotations

from ..diffusion import PREDICTIONS, SCHEDULES
from ..training.upscaler import UpscalerTrainConfig
from .options import common, config_from, flag, resumable
from .output import check_out, check_resume, report_run
from .values import non_negative, positive, probability

Config = UpscalerTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-upscaler", help="train a diffusion upscaler (32 -> 64 pixels, as SD's x4 "
                                                   "upscaler) on the shapes world")
    flag(t, Config, "out", help="output folder: the upscaler (unet/, noise_level/, diffusion.json, upscaler.json), "
                                "its checkpoint and log")
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int))
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "channels", type=positive(int), nargs="+", help="the U-Net's level widths (default %(default)s)")
    flag(t, Config, "schedule", choices=SCHEDULES, help="noise schedule (default %(default)s)")
    flag(t, Config, "prediction", choices=PREDICTIONS,
         help="what the U-Net predicts (default %(default)s; eps fails with the cosine schedule, whose last level "
              "keeps a signal of 5e-5: docs/editing.md)")
    flag(t, Config, "max_noise_level", type=non_negative(int),
         help="the low-resolution image is noised to a level drawn from 0 to this (default %(default)s)")
    flag(t, Config, "noise_level", type=non_negative(int),
         help="the level the written model upscales at unless told otherwise (default %(default)s)")
    flag(t, Config, "p_two", type=probability, help="fraction of two-object scenes (default %(default)s)")
    flag(t, Config, "gradient_checkpointing", help="recompute activations in the backward pass (less memory)")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    t.set_defaults(func=run)


def run(args) -> None:
    from ..training.upscaler import train_upscaler  # here: tests replace it

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    report_run(train_upscaler(config), args.out, "the checkpoint and the upscaler are")
