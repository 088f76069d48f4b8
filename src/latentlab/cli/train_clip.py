"""`latentlab train-clip`: train the contrastive image-text encoder (training/contrastive.py); its flags are
ContrastiveTrainConfig's fields. scripts/train_clip_model.sh trains and measures it (evaluation/contrastive.py)."""

from __future__ import annotations

from ..training.contrastive import ContrastiveTrainConfig
from .options import common, config_from, flag, resumable
from .output import check_out, check_resume, report_run
from .values import non_negative, positive

Config = ContrastiveTrainConfig


def add_parser(commands) -> None:
    t = commands.add_parser("train-clip", help="train a contrastive image-text encoder (CLIP's loss) on the shapes "
                                               "world, Fashion-MNIST or captioned image folders")
    flag(t, Config, "out", help="output folder: the model (config.json, model.safetensors, tokenizer.json), its "
                                "checkpoint and log")
    flag(t, Config, "data", "--data", action="append",
         help="a data set to train on: shapes, shapes-wide, fashion-mnist, mnist or a folder of captioned images; "
              "repeat for several, each a share of every batch (default: %(default)s)")
    flag(t, Config, "steps", type=positive(int))
    flag(t, Config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(t, Config, "batch_size", type=positive(int), help="image-caption pairs a step, over all the data sets "
                                                           "(the contrastive loss's negatives; default %(default)s)")
    flag(t, Config, "lr", type=positive(float))
    flag(t, Config, "warmup", type=non_negative(int), help="steps of linear learning-rate warm-up")
    flag(t, Config, "weight_decay", type=non_negative(float))
    flag(t, Config, "width", type=positive(int), help="both towers' width (default %(default)s)")
    flag(t, Config, "layers", type=positive(int), help="both towers' transformer blocks (default %(default)s)")
    flag(t, Config, "patch_size", type=positive(int), help="the image tower's patch, in pixels (default %(default)s)")
    flag(t, Config, "embed_dim", type=positive(int), help="the shared embedding's width (default %(default)s)")
    flag(t, Config, "hard_negatives", help="also score each image against its shapes caption bound wrongly (two "
                                           "objects' colours, shapes, sizes or order exchanged; a colour changed), "
                                           "as NegCLIP does, so that the encoder learns which attribute goes with "
                                           "which object")
    common(t, seeds=Config, devices=Config, model=False)
    resumable(t, Config)
    t.set_defaults(func=run)


def run(args) -> None:
    from ..training.contrastive import train_contrastive  # here: tests replace it

    config = config_from(args, Config)
    check_resume(args)
    check_out(args.out, folder=True)
    report_run(train_contrastive(config), args.out, "the checkpoint and the model are")
