"""`latentlab upscale IMAGE` or `latentlab upscale GRID N`: the diffusion upscaler (upscaler_model.py) draws an
image at twice its size. Of an image file: source.png (the image as the upscaler read it), 000.png and grid.png
(the source, enlarged, beside it). Of image N of a grid (Midjourney's U button): a new grid of one image in
GRID/upscale-N, which the loop goes on from (grid.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LatentlabError
from ..grid import Grid
from ..images import image_grid, open_image, read_image, to_pil
from ..upscaler_model import SHIPPED_UPSCALER, UpscalerModel
from .options import defaults, flag
from .output import check_out, save_png
from .values import non_negative, positive, seed, whole

UPSCALE = defaults(UpscalerModel.upscale)


def add_parser(commands) -> None:
    u = commands.add_parser("upscale", help="draw an image, or image N of a grid (Midjourney's U), at twice its "
                                            "size with the diffusion upscaler")
    u.add_argument("source", help="an image file (PNG, JPEG, ...), or a folder `latentlab generate` (or vary) wrote")
    u.add_argument("n", type=whole, nargs="?", help="with a grid folder: the image, numbered as its file is")
    u.add_argument("--model", default=SHIPPED_UPSCALER,
                   help="the upscaler: a folder written by latentlab train-upscaler, or the shipped %(default)s")
    flag(u, UPSCALE, "steps", type=positive(int), help="network evaluations (default %(default)s)")
    flag(u, UPSCALE, "sampler", choices=["ddpm", "ddim", "euler", "heun", "dpmpp_2m"],
         help="the sampler (default %(default)s)")
    u.add_argument("--eta", type=float, default=None, help="ddim's noise: 0 deterministic (default), 1 like ddpm")
    u.add_argument("--noise-level", type=non_negative(int), default=None,
                   help="how far the small image is noised before the upscaler reads it: 0 trusts every pixel; "
                        "higher smooths its flaws away (default: the model's, 20 for the shipped one)")
    u.add_argument("--seed", type=seed, default=None, help="0 to 4294967295 (default: 0; a grid's image: its seed)")
    u.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    u.add_argument("--out", default=None, help="folder to write (default: upscaled, or GRID/upscale-N)")
    u.add_argument("--grid-scale", type=positive(int), default=4, help="enlarge grid.png this many times")
    u.set_defaults(func=run)


def run(args) -> None:
    source = Path(args.source)
    if source.is_dir():
        upscale_grid(args, Grid.load(source))
    elif args.n is not None:
        raise LatentlabError(f"{source} is not a folder: N names an image of a grid folder; to upscale an image "
                             "file, give the file alone")
    else:
        upscale_file(args, source)


def load(args) -> UpscalerModel:
    return UpscalerModel.load(args.model, device=args.device)


def options(args) -> dict:
    return {"steps": args.steps, "sampler": args.sampler, "noise_level": args.noise_level,
            **({"eta": args.eta} if args.eta is not None else {})}


def upscale_grid(args, grid: Grid) -> None:
    if args.n is None:
        raise LatentlabError(f"{args.source} is a grid folder: say which image to upscale, e.g. "
                             f"`latentlab upscale {args.source} 0`")
    grid.image(args.n)  # in range, before any work
    out = Path(args.out or Path(args.source) / f"upscale-{args.n:03d}")
    check_out(out, folder=True)
    upscaler = load(args)
    check_size(upscaler, grid.source(args.n).shape[-1], f"image {args.n} of {args.source}", args.model)
    child = grid.upscale(args.n, out, upscaler=upscaler, model=args.model, seed=args.seed, **options(args))
    picture = open_image(out / child.images[0].file)
    small = open_image(grid.folder / grid.image(args.n).file).resize(picture.size)
    image_grid([small, picture], scale=args.grid_scale).save(out / "grid.png")
    print(f"wrote {child.images[0].file} ({picture.width}x{picture.height}), grid.png and grid.json to {out}")


def check_size(upscaler: UpscalerModel, size: int, what: str, model: str) -> None:
    low = upscaler.config.low_size
    if size != low:
        raise LatentlabError(f"{what} is {size}x{size}; the upscaler {model} takes {low}x{low} images, the size it "
                             "was trained on")


def upscale_file(args, path: Path) -> None:
    out = Path(args.out or "upscaled")
    check_out(out, folder=True)
    upscaler = load(args)
    image, notes = read_image(path, upscaler.config.low_size)
    for note in notes:
        print(f"{path}: {note}", file=sys.stderr)
    drawn = upscaler.upscale(image[None], seed=0 if args.seed is None else args.seed, **options(args))
    (source,), (large,) = to_pil(image[None]), to_pil(drawn)
    out.mkdir(parents=True, exist_ok=True)
    save_png(source, out / "source.png", 0)
    save_png(large, out / "000.png", 1)
    save_png(image_grid([source.resize(large.size), large], scale=args.grid_scale), out / "grid.png", 2)
    print(f"wrote source.png, 000.png ({large.width}x{large.height}) and grid.png to {out}")
