"""`latentlab img2img IMAGE PROMPT`: image-to-image (SDEdit, Pipeline.img2img): the image encoded, noised part of
the way and denoised with the prompt: source.png (the image as the model read it), one PNG per image drawn and
grid.png (the source first)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LatentlabError
from ..images import read_image, to_pil
from ..pipeline import ImageInput, Pipeline
from .options import defaults, editing, flag, load_model, sampler_options
from .output import check_out, save_edits
from .values import prompt, strength

IMG2IMG = defaults(Pipeline.img2img)


def add_parser(commands) -> None:
    g = commands.add_parser("img2img", help="redraw an image with a prompt (SDEdit): --strength says how much")
    g.add_argument("image", help="the image file (PNG, JPEG, ...); converted to RGB and resized to --size")
    g.add_argument("prompt", type=prompt, help="what the image should become")
    flag(g, IMG2IMG, "strength", type=strength,
         help="0 keeps the image, 1 draws it anew; int(steps * strength) steps run (default %(default)s)")
    editing(g, "img2img")
    g.set_defaults(func=run)


def run(args) -> None:
    if not args.prompt.strip():
        raise LatentlabError("give a non-empty prompt, e.g. latentlab img2img in.png \"a red circle\"")
    out = Path(args.out)
    check_out(out, folder=True)
    pipe = load_model(args)
    size = args.size or pipe.image_size
    image, notes = read_image(args.image, size)
    options = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler,
                   negative_prompt=args.negative_prompt, **sampler_options(args))
    ImageInput(image[None], args.strength).check(1)
    pipe.check_sample(args.count, size=size, **{k: v for k, v in options.items() if k != "negative_prompt"})
    if notes:
        print(f"{args.image}: {'; '.join(notes)}", file=sys.stderr)
    images = to_pil(pipe.img2img(image[None].expand(args.count, -1, -1, -1), [args.prompt] * args.count,
                                 strength=args.strength, **options))
    save_edits(out, {"source.png": to_pil(image[None])[0]}, images, args.grid_scale)
    print(f"wrote source.png, {len(images)} images and grid.png (the source first) to {out}")
