"""`latentlab train-vae`: train the autoencoder (training/vae.py); its flags are VAETrainConfig's fields."""

from __future__ import annotations

import json
import sys

from ..training.vae import VAETrainConfig
from .options import config_from, flag, training
from .output import check_out, check_resume
from .values import non_negative, positive


def add_parser(commands) -> None:
    v = commands.add_parser("train-vae", help="train the autoencoder")
    training(v, VAETrainConfig)
    flag(v, VAETrainConfig, "disc_start", type=non_negative(int),
         help="the step from which a patch discriminator's hinge loss joins L1 + KL (default %(default)s)")
    flag(v, VAETrainConfig, "disc_weight", type=non_negative(float),
         help="its weight, times taming's adaptive factor; 0 turns it off (default %(default)s)")
    flag(v, VAETrainConfig, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint every N steps (SIGTERM and Ctrl-C write it too)")
    flag(v, VAETrainConfig, "resume", help="continue the run in --out from its checkpoint, exactly")
    v.set_defaults(func=run)


def run(args) -> None:
    from ..training import preset, train_vae  # here, not above: tests replace train_vae

    config = config_from(args, VAETrainConfig, model=preset(args.preset, "vae"))
    check_resume(args)
    check_out(args.out, folder=True)
    result = train_vae(config)
    if result["interrupted"]:
        print(f"stopped after step {result['steps']}; the checkpoint is saved in {args.out}; run the same command "
              "with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
