"""`latentlab continual train`: a sequence of concepts taught one after another with C-LoRA, or a baseline
(training/continual.py); its flags are ContinualConfig's fields. `latentlab continual eval` measures it
(evaluation/continual.py); `latentlab generate --sequence OUT` draws with every task loaded."""

from __future__ import annotations

import json
import sys

from ..evaluation import continual as evaluation
from ..training.continual import METHODS, ContinualConfig
from .options import MODEL_HELP, Parser, common, config_from, defaults, flag, missing_command
from .output import check_out, write_report
from .values import non_negative, positive, prompt

Config, REPORT = ContinualConfig, defaults(evaluation.sequence_report)


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
    flag(t, Config, "method", choices=METHODS,
         help="c-lora (default), or a baseline: lora (naive sequential LoRA, merged after each task, the captions' "
              "words), full (sequential full fine-tuning), separate (one LoRA per concept from the base model)")
    flag(t, Config, "targets", "--target", action="append",
         help="a U-Net layer name pattern the updates adapt, once per pattern (default: attn2.to_k and attn2.to_v, "
              "the cross-attention's K and V)")
    common(t, seeds=Config, devices=Config, model=False)
    flag(t, Config, "words", "--word", action="append", type=prompt,
         help="each task's concept word in its captions, once per --task (default: each folder's concept.json); "
              "prompts then name the concept by its token, <word>")
    flag(t, Config, "forget_weight", type=non_negative(float),
         help="lambda of the forgetting penalty (default %(default)s); 0: sequential LoRA on K and V")
    flag(t, Config, "rank", type=positive(int), help="r of each task's update (default %(default)s)")
    flag(t, Config, "steps", type=positive(int), help="steps per task (default %(default)s)")
    flag(t, Config, "batch_size", type=positive(int), help="images per step (default %(default)s)")
    flag(t, Config, "lr", type=positive(float), help="AdamW's learning rate for K and V (default %(default)s)")
    flag(t, Config, "token_lr", type=positive(float), help="the token's learning rate (default %(default)s)")
    flag(t, Config, "checkpoint_every", type=positive(int),
         help="write the current task's resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    flag(t, Config, "resume", help="continue the sequence in --out: finished tasks are kept, the current one "
                                   "resumes from its checkpoint, exactly (same settings)")
    t.set_defaults(func=train)
    e = subcommands.add_parser("eval", help="after each task, the judge on every concept so far and on ordinary "
                                            "prompts: the accuracy matrix, average accuracy and forgetting")
    e.add_argument("sequence", help="the folder `latentlab continual train --out` wrote")
    flag(e, REPORT, "model", type=str, help="the base model (default: the sequence's)")
    flag(e, REPORT, "prompts", type=positive(int), help="prompts per concept and for ordinary ones (default "
                                                        "%(default)s)")
    flag(e, REPORT, "pair_prompts", type=positive(int), help="prompts per pair of a learned colour and shape "
                                                             "(default %(default)s)")
    flag(e, REPORT, "steps", type=positive(int), help="sampler steps (default %(default)s)")
    flag(e, REPORT, "device", help="auto (CUDA if present), cpu, cuda or cuda:N")
    e.add_argument("--out", default=None, help="write the report as JSON here")
    e.set_defaults(func=evaluate)


def evaluate(args) -> None:
    if args.out:
        check_out(args.out, folder=False)
    report = evaluation.sequence_report(args.sequence, model=args.model, prompts=args.prompts,
                                        pair_prompts=args.pair_prompts, steps=args.steps, device=args.device)
    print(f"{report['method']}; the base model's ordinary prompts {report['ordinary_base']:.1%}")
    for k, (row, ordinary, combined) in enumerate(zip(report["matrix"], report["ordinary"], report["combined"]), 1):
        cells = "  ".join(f"{word} {a:.1%}" for word, a in zip(report["words"], row))
        pairs = "" if combined is None else f"  pairs {combined:.1%}"
        print(f"after task {k}: {cells}  ordinary {ordinary:.1%}{pairs}")
    forgetting = report["average_forgetting"]
    print(f"average accuracy {report['average_accuracy']:.1%}, average forgetting "
          f"{'-' if forgetting is None else f'{100 * forgetting:.1f} points'}")
    if args.out:
        write_report(args.out, report)


def train(args) -> None:
    from ..training.continual import train_sequence  # here, not above: tests replace it

    config = config_from(args, Config)
    check_out(args.out, folder=True)
    result = train_sequence(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after {len(result['tasks'])} finished tasks; the current task's "
              "checkpoint is saved; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))
