"""`latentlab train-prior`: train DALL-E 2's diffusion prior (training/prior.py) from a contrastive model's text
to its image embeddings; its flags are PriorTrainConfig's fields."""

from __future__ import annotations

from ..diffusion import SCHEDULES
from ..training.prior import PriorTrainConfig
from .options import common, config_from, flag, resumable
from .output import check_out, check_resume, report_run
from .values import non_negative, positive, probability

Config = PriorTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-prior", help="train a diffusion prior from captions to a contrastive model's "
                                                "image embeddings (DALL-E 2), on the shapes world")
    flag(t, Config, "out", help="output folder: the prior (prior/, diffusion.json, prior.json), its checkpoint and log")
    flag(t, Config, "clip", help="the contrastive model: a folder written by train-clip, or the shipped "
                                 "%(default)s")
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int))
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "p_uncond", type=probability, help="chance a caption is dropped, for classifier-free guidance "
                                                       "(default %(default)s)")
    flag(t, Config, "width", type=positive(int), help="the transformer's width (default %(default)s)")
    flag(t, Config, "layers", type=positive(int), help="its blocks (default %(default)s)")
    flag(t, Config, "schedule", choices=SCHEDULES, help="noise schedule (default %(default)s)")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    t.set_defaults(func=run)


def run(args) -> None:
    from ..training.prior import train_prior  # here: tests replace it

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    report_run(train_prior(config), args.out, "the checkpoint and the prior are")
