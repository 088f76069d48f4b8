"""`latentlab inpaint IMAGE MASK PROMPT`: redraw the region of an image that the mask marks (white: redraw, black:
keep; Pipeline.inpaint): source.png and mask.png (as the model read them), one PNG per image drawn and grid.png."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LatentlabError
from ..images import from_pil, mask_from_pil, open_image, to_pil
from ..pipeline import ImageInput, Pipeline
from .options import defaults, editing, flag, load_model, sampler_options
from .output import check_out, save_edits
from .values import prompt, strength

INPAINT = defaults(Pipeline.inpaint)


def add_parser(commands) -> None:
    g = commands.add_parser("inpaint", help="redraw the region of an image a mask marks, from a prompt")
    g.add_argument("image", help="the image file (PNG, JPEG, ...); converted to RGB and resized to --size")
    g.add_argument("mask", help="a mask of the image's size: white (at least 50%% grey) is redrawn, black is kept")
    g.add_argument("prompt", type=prompt, help="what the region should show")
    flag(g, INPAINT, "strength", type=strength,
         help="1 draws the region anew (default), lower keeps more of what is there")
    g.add_argument("--no-keep-unmasked", dest="keep_unmasked", action="store_false",
                   help="let the pixels outside the mask be the autoencoder's round trip, not the source's")
    editing(g, "inpaint")
    g.set_defaults(func=run)


def run(args) -> None:
    if not args.prompt.strip():
        raise LatentlabError("give a non-empty prompt, e.g. latentlab inpaint in.png mask.png \"a red circle\"")
    out = Path(args.out)
    check_out(out, folder=True)
    image, mask = open_image(args.image), open_image(args.mask)
    if image.size != mask.size:
        raise LatentlabError(f"the mask {args.mask} is {mask.size[0]}x{mask.size[1]}, the image {image.size[0]}x"
                             f"{image.size[1]}; give a mask of the image's size")
    pipe = load_model(args)
    size = args.size or pipe.image_size
    (image, notes), mask = from_pil(image, size), mask_from_pil(mask, size)
    start = ImageInput(image[None].expand(args.count, -1, -1, -1), args.strength,
                       mask[None].expand(args.count, -1, -1, -1), args.keep_unmasked)
    start.check(args.count)
    options = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler,
                   **sampler_options(args))
    pipe.check_sample(args.count, size=size, **options)
    if notes:
        print(f"{args.image}: {'; '.join(notes)}", file=sys.stderr)
    drawn = to_pil(pipe.inpaint(start.images, start.masks, [args.prompt] * args.count, strength=args.strength,
                                keep_unmasked=args.keep_unmasked, negative_prompt=args.negative_prompt, **options))
    shown = to_pil(mask[None].expand(-1, 3, -1, -1) * 2 - 1)[0]
    save_edits(out, {"source.png": to_pil(image[None])[0], "mask.png": shown}, drawn, args.grid_scale)
    print(f"wrote source.png, mask.png, {len(drawn)} images and grid.png (source and mask first) to {out}")
