"""`latentlab train-unclip`: train DALL-E 2's decoder (training/unclip.py) from a text model, reading a contrastive
model's image embeddings; with --prior, the folder is a whole unCLIP model (text -> prior -> decoder). Its flags
are UnCLIPTrainConfig's fields."""

from __future__ import annotations

from ..training.unclip import UnCLIPTrainConfig
from .options import common, config_from, flag, resumable
from .output import check_out, check_resume, report_run
from .values import non_negative, positive, probability

Config = UnCLIPTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-unclip", help="train an unCLIP decoder (DALL-E 2): a text model's U-Net that also "
                                                 "reads image embeddings, for variations and, with a prior, text")
    flag(t, Config, "out", help="output folder: the unCLIP model, its checkpoint and log")
    flag(t, Config, "image_model", help="the text model the decoder starts from: a folder, or the shipped "
                                        "%(default)s")
    flag(t, Config, "clip", help="the contrastive model whose image embeddings it reads: a folder written by "
                                 "train-clip, or the shipped %(default)s")
    flag(t, Config, "prior", help="a prior folder written by train-prior (on the same contrastive model), bundled "
                                  "into the model for text to image; without one, variations only")
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int))
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "ema_decay", type=probability, help="decay of the weights' moving average, the model written "
                                                        "(default %(default)s)")
    flag(t, Config, "p_drop_image", type=probability, help="chance an image embedding is dropped (default "
                                                           "%(default)s)")
    flag(t, Config, "p_drop_text", type=probability, help="chance a caption is dropped (default %(default)s)")
    flag(t, Config, "p_two", type=probability, help="fraction of two-object scenes (default %(default)s)")
    flag(t, Config, "tokens", type=positive(int), help="context tokens made from the embedding (default "
                                                       "%(default)s)")
    flag(t, Config, "gradient_checkpointing", help="recompute the U-Net's activations in the backward pass")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    t.set_defaults(func=run)


def run(args) -> None:
    from ..training.unclip import train_unclip  # here: tests replace it

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    report_run(train_unclip(config), args.out, "the checkpoint and the unCLIP model are")
