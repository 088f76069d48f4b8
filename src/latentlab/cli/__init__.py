"""The `latentlab` command: argument parsing and calls into the library, nothing more.

One module per command holds its parser (`add_parser`) beside the function that runs it; the options
several commands share, and flags whose defaults are the library's, are in options.py; the value types
in values.py. Bad input ends with one line on stderr, `latentlab: error: ...`, and exit status 2.
"""

from __future__ import annotations

import errno
import sys

from . import (cache_latents, continual, evaluate, generate, generate_video, img2img, inpaint, interpolate, lora,
               nll, plot, serve, textual_inversion, train, train_classifier, train_clip, train_prior, train_unclip,
               train_vae, train_upscaler, train_video, train_video_decoder, upscale, variations, vary)
from .options import Parser, missing_command

EXIT_USAGE = 2
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
COMMANDS = (generate, vary, upscale, img2img, inpaint, generate_video, variations, interpolate, train_vae, train,
            train_video, train_video_decoder, cache_latents, plot, evaluate, train_classifier, train_clip, train_prior,
            train_unclip, train_upscaler, nll, lora, textual_inversion, continual, serve)  # as -h lists


def build_parser() -> Parser:
    parser = Parser(prog="latentlab", description="Latent diffusion: train, generate, evaluate.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(commands)
    parser.set_defaults(func=missing_command(commands, "command", see="latentlab -h"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except ValueError as e:  # LatentlabError, and bad values caught by the configs' own checks
        close_bars()
        print(f"latentlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full disk, a folder made unwritable during the run
        close_bars()
        print(f"latentlab: error: {os_error(e, getattr(args, 'out', None))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        close_bars()
        print("latentlab: interrupted", file=sys.stderr)
        return 130
    return 0


def close_bars() -> None:
    """Close the progress bars an error left open, so that the error starts its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def os_error(e: OSError, out) -> str:
    """One line for a file-system error: what failed, where, and the system's reason."""
    reason = e.strerror or str(e)
    if e.errno in WRITE_ERRORS:
        return f"cannot write {e.filename or out or 'a file'}: {reason}"
    return f"{e.filename}: {reason}" if e.filename else reason

