"""`latentlab vary GRID N`: Midjourney's V button on image N of a grid `generate` (or vary) wrote, with the
prompt, model and settings it was drawn with: new images of it, or with --region a box of it redrawn; written as
a new grid (its PNGs, grid.png and grid.json), which can be varied in turn (grid.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..grid import VARY_STRENGTH, Grid
from ..images import image_grid, open_image
from .output import check_out
from .values import positive, prompt, seed, strength, whole


def region(text: str) -> tuple[int, int, int, int]:
    """TOP,LEFT,BOTTOM,RIGHT in pixels."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"region {text!r} is not four numbers: write TOP,LEFT,BOTTOM,RIGHT in "
                                         "pixels, e.g. 0,0,16,16")
    return tuple(whole(p) for p in parts)


def add_parser(commands) -> None:
    v = commands.add_parser("vary", help="draw variations of image N of a grid (Midjourney's V), or redraw a region "
                                         "of it")
    v.add_argument("grid", help="a folder `latentlab generate` (or vary) wrote, with its grid.json")
    v.add_argument("n", type=whole, help="the image, numbered as its file is (000-... is 0)")
    v.add_argument("--count", type=positive(int), default=4, help="images to draw (default %(default)s)")
    v.add_argument("--strength", type=strength, default=None,
                   help=f"how much is redrawn: default {VARY_STRENGTH} (a variation), 1 with --region")
    v.add_argument("--region", type=region, metavar="TOP,LEFT,BOTTOM,RIGHT",
                   help="redraw only this box, in pixels (Midjourney's Vary (Region)); the rest stays")
    v.add_argument("--prompt", type=prompt, default=None, help="what to draw (default: the image's prompt)")
    v.add_argument("--seed", type=seed, default=None, help="image i from seed + i (default: the image's seed + 1)")
    v.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    v.add_argument("--out", default=None, help="folder of the new grid (default: GRID/vary-N, or GRID/region-N)")
    v.add_argument("--grid-scale", type=positive(int), default=4, help="enlarge grid.png this many times")
    v.set_defaults(func=run)


def run(args) -> None:
    grid = Grid.load(args.grid)
    grid.image(args.n)  # in range, before any work
    out = Path(args.out or Path(args.grid) / f"{'region' if args.region else 'vary'}-{args.n:03d}")
    check_out(out, folder=True)
    chosen = args.strength if args.strength is not None else (1.0 if args.region else VARY_STRENGTH)
    child = grid.vary(args.n, out, count=args.count, strength=chosen, seed=args.seed, region=args.region,
                      prompt=args.prompt, device=args.device)
    pictures = [open_image(out / image.file) for image in child.images]
    image_grid([open_image(grid.folder / grid.image(args.n).file), *pictures],
               scale=args.grid_scale).save(out / "grid.png")
    print(f"wrote {len(pictures)} images, grid.png (image {args.n} first) and grid.json to {out}")
