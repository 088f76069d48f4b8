"""The options that several commands share, and flags made from the library's own defaults.

A flag that sets a config field (or a library function's keyword) reads its default from there, and is
named after it (`batch_size` -> `--batch-size`, stored as args.batch_size): each default is written once,
in the library, and `config_from` fills the config back from the parsed flags by the same names.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

from ..diffusion import SAMPLERS, SPACINGS, VARIANCES
from ..errors import LatentlabError
from ..pipeline import Pipeline
from ..training import PRESETS
from .values import finite, positive, prompt, seed, spacing

MODEL_HELP = ("a latentlab model folder, a diffusers Stable Diffusion folder, an SD 1.x .safetensors file, or a "
              "shipped model: shapes-default (the default), fashion-mnist, or unclip (text -> prior -> decoder)")


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line and no usage block."""

    def error(self, message: str):
        raise LatentlabError(message)


def defaults(function) -> dict:
    """`function`'s keyword defaults by name. Commands read them when the command line is imported, so that
    the flags keep the library's defaults where a test later replaces the function with a stand-in."""
    return {p.name: p.default for p in inspect.signature(function).parameters.values() if p.default is not p.empty}


LOAD, SAMPLE = defaults(Pipeline.load), defaults(Pipeline.sample)


def default_of(owner, name: str):
    """The default of `name` in `owner`: a field of a config dataclass (class or instance), or a keyword of
    `defaults`' dict; dataclasses.MISSING where there is none."""
    if isinstance(owner, dict):
        return owner.get(name, dataclasses.MISSING)
    if not isinstance(owner, type):
        return getattr(owner, name)
    field = next(f for f in dataclasses.fields(owner) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


class AppendOverDefault(argparse.Action):
    """argparse's append, except that the first value given replaces a non-empty default instead of adding to it
    (`--target to_q` means to_q alone, not the default targets and to_q)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, items + [values])


def flag(parser, owner, name: str, *names: str, dest: str | None = None, **kwargs) -> None:
    """Option `--name` (or `names`) for `owner`'s `name`, defaulting to owner's default: required where it
    has none, a switch (store_true) where it is False. Tuples become lists, as argparse's nargs and append
    give them (`config_from` turns them back)."""
    default = default_of(owner, name)
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    elif default is False and "action" not in kwargs:
        kwargs["action"] = "store_true"
    else:
        kwargs["default"] = list(default) if isinstance(default, tuple) else default
        if kwargs.get("action") == "append" and kwargs["default"]:
            kwargs["action"] = AppendOverDefault
    if names and kwargs.get("action") != "store_true":  # help shows the option's name, not the field's
        kwargs.setdefault("metavar", names[0].lstrip("-").replace("-", "_").upper())
    parser.add_argument(*(names or ["--" + name.replace("_", "-")]), dest=dest or name, **kwargs)


def config_from(args, config, **given):
    """A `config` (dataclass) from the parsed flags named after its fields, and the fields in `given`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config(**{**values, **given})


def missing_command(commands, what: str, see: str | None = None):
    """The action where no sub-command of `commands` is given: an error naming the accepted ones."""
    def fail(args):
        raise LatentlabError(f"no {what} given; accepted: {', '.join(commands.choices)}"
                             + (f" (see {see})" if see else ""))
    return fail


def common(parser, *, seeds=SAMPLE, devices=LOAD, model: bool = True) -> None:
    """--model, --device and --seed, defaulting to those of `seeds` and `devices` (as `default_of` reads)."""
    if model:
        flag(parser, LOAD, "path", "--model", dest="model", help=MODEL_HELP)
    flag(parser, devices, "device", help="auto (CUDA if present), cpu, cuda or cuda:N")
    flag(parser, seeds, "seed", type=seed, help="0 to 4294967295 (default %(default)s)")


def resumable(parser, owner) -> None:
    """--checkpoint-every and --resume, for a trainer whose config (`owner`) has them."""
    flag(parser, owner, "checkpoint_every", type=positive(int),
         help="write the resumable checkpoint (out/checkpoint.safetensors) every N steps; SIGTERM and Ctrl-C also "
              "write it before the run exits")
    flag(parser, owner, "resume", help="continue the run in --out from its checkpoint, exactly (same settings; "
                                       "--steps may grow)")


def sampling(parser, owner=SAMPLE) -> None:
    """The sampler's options; steps, guidance and sampler default to `owner`'s (the `defaults` of a function
    that samples images)."""
    flag(parser, owner, "steps", type=positive(int), help="network evaluations (default %(default)s)")
    flag(parser, owner, "guidance", type=finite, help="classifier-free guidance scale; 1 turns it off")
    flag(parser, owner, "sampler", choices=list(SAMPLERS),
         help="ddpm (ancestral), ddim, euler and heun (Karras sigmas), dpmpp_2m (DPM-Solver++(2M))")
    parser.add_argument("--variance", choices=VARIANCES, default=None,
                        help="ddpm's reverse variance (default: learned if the model learned one, else small)")
    parser.add_argument("--eta", type=finite, default=None,
                        help="ddim's noise: 0 deterministic (default), 1 like ddpm")
    parser.add_argument("--spacing", type=spacing, default=None,
                        help=f"how ddpm, ddim and dpmpp_2m pick their timesteps: {', '.join(SPACINGS)} (default "
                             "linspace; dpmpp_2m trailing), or the timesteps themselves, e.g. 999,500,100,0")


def editing(parser, out: str) -> None:
    """The options of a command that draws from an image (img2img, inpaint): the model, device and seed, the
    sampler's options, a negative prompt, how many images, their size, the output folder and the grid's scale."""
    common(parser)
    sampling(parser)
    flag(parser, SAMPLE, "negative_prompt", type=prompt, help="what to steer away from (replaces the empty prompt)")
    parser.add_argument("--count", type=positive(int), default=1, help="images to draw, image i from seed + i "
                                                                       "(default %(default)s)")
    parser.add_argument("--size", type=positive(int), default=None, help="the image's size in pixels, square "
                                                                         "(default: the model's)")
    parser.add_argument("--out", default=out, help="folder for the PNGs (default %(default)s)")
    parser.add_argument("--grid-scale", type=positive(int), default=4, help="enlarge grid.png this many times")


def sampler_options(args) -> dict:
    """The options `sampling` adds, as Pipeline.sample takes them."""
    return {"variance": args.variance, "eta": args.eta, "spacing": args.spacing}


def training(parser, config) -> None:
    """The options of every training run, defaulting to `config`'s (a training config dataclass)."""
    flag(parser, config, "out", help="output folder")
    flag(parser, config, "steps", type=positive(int))
    flag(parser, config, "minutes", type=positive(float), help="stop after this much wall time")
    flag(parser, config, "batch_size", type=positive(int))
    flag(parser, config, "lr", type=positive(float))
    flag(parser, config, "image_size", type=int, choices=(32, 64))
    flag(parser, config, "data",
         help="shapes (default), shapes-wide (the world with the concepts of data/concept.py mixed in: for "
              "autoencoders), fashion-mnist, mnist, or a folder of captioned images (a .txt beside each image, or "
              "metadata.jsonl); `train` also takes a folder of cache-latents output")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="architecture size")
    common(parser, seeds=config, devices=config, model=False)


def load_model(args, **kwargs) -> Pipeline:
    """The pipeline --model and --device name, with the --lora files added; `kwargs` go to Pipeline.load. An unCLIP
    model (unclip_pipeline.py) loads as one: text to image through its prior and decoder."""
    from ..unclip_pipeline import load_pipeline

    pipe = load_pipeline(args.model, device=args.device, **kwargs)
    for path, scale in getattr(args, "lora", None) or ():
        pipe.load_lora(path, scale=scale)
    return pipe
