"""`latentlab continual train`: a sequence of concepts taught one after another with C-LoRA
(training/continual.py); its flags are ContinualConfig's fields. `latentlab generate --adapter
OUT/task-K/lora.safetensors --embedding OUT/task-K/learned_embeds.safetensors` (every task's) draws them."""

from __future__ import annotations

import json
import sys

from ..training.continual import ContinualConfig
from .options import MODEL_HELP, Parser, common, config_from, flag, missing_command
from .output import check_out
from .values import non_negative, positive, prompt

Config = ContinualConfig


def add_parser(commands) -> None:
    continual = commands.add_parser("continual", help="teach a sequence of concepts without forgetting (see "
                                                      "latentlab continual -h)")
    subcommands = continual.add_subparsers(dest="continual_command", metavar="CONTINUAL_COMMAND", parser_class=Parser)
    continual.set_defaults(func=missing_command(subcommands, "continual command"))
    t = subcommands.add_parser("train", help="C-LoRA: one update of the cross-attention's K and V and one token per "
                                             "concept, each kept apart from the earlier ones")
    flag(t, Config, "tasks", "--task", action="append", required=True,
         help="a folder of captioned images of one concept (python -m latentlab.data.concept writes one); "
              "give --task once per concept, in the order they are taught")
    flag(t, Config, "out", help="the sequence's folder: task-1, task-2, ... (each lora.safetensors and "
                                "learned_embeds.safetensors), sequence.json")
    flag(t, Config, "model", help=MODEL_HELP)
    common(t, seeds=Config, devices=Config, model=False)
    flag(t, Config, "words", "--word", action="append", type=prompt,
         help="each task's concept word in its captions, once per --task (default: each folder's concept.json); "
              "prompts then name the concept by its token, <word>")
    flag(t, Config, "forget_weight", type=non_negative(float),
         help="lambda of the forgetting penalty (default %(default)s); 0: sequential LoRA on K and V")
    flag(t, Config, "rank", type=positive(int), help="r of each task's update (default %(default)s)")
    flag(t, Config, "steps", type=positive(int), help="steps per task (default %(default)s)")
    flag(t, Config, "batch_size", type=positive(int), help="images per step (default %(default)s)")
    flag(t, Config, "lr", type=positive(float), help="AdamW's learning rate (default %(default)s)")
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the current task's resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    flag(t, Config, "resume", help="continue the sequence in --out: finished tasks are kept, the current one "
                                   "resumes from its checkpoint, exactly (same settings)")
    t.set_defaults(func=train)


def train(args) -> None:
    from ..training.continual import train_sequence  # here, not above: tests replace it

    config = config_from(args, Config)
    check_out(args.out, folder=True)
    result = train_sequence(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after {len(result['tasks'])} finished tasks; the current task's "
              "checkpoint is saved; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
