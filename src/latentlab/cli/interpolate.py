"""`latentlab interpolate IMAGE_A IMAGE_B`: an unCLIP model draws the way between two images' embeddings (spherical
interpolation, the same noise for every frame, as DALL-E 2 shows it): one PNG per frame and strip.png."""

from __future__ import annotations

from pathlib import Path

from ..errors import LatentlabError
from ..images import image_grid, to_pil
from .options import sampler_options
from .output import check_out, save_png
from .values import positive
from .variations import load_unclip, read_images, unclip_options


def add_parser(commands) -> None:
    i = commands.add_parser("interpolate", help="blend two images through an unCLIP model's image embeddings")
    i.add_argument("images", nargs=2, metavar="IMAGE", help="the two image files")
    unclip_options(i)
    i.add_argument("--frames", type=positive(int), default=8, help="frames from the first image to the second, "
                                                                     "both included (default %(default)s)")
    i.add_argument("--out", default="interpolation", help="folder for the PNGs (default %(default)s)")
    i.set_defaults(func=run)


def run(args) -> None:
    out = Path(args.out)
    if args.frames < 2:
        raise LatentlabError(f"--frames {args.frames}: give at least 2 (the two images themselves)")
    check_out(out, folder=True)
    pipe = load_unclip(args, "interpolate")
    a, b = read_images(pipe, args.images)
    options = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler,
                   **sampler_options(args))
    pipe.check_sample(1, **options)
    frames = to_pil(pipe.interpolate(a, b, args.frames, **options))
    out.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(frames):
        save_png(frame, out / f"{k:03d}.png", k)
    save_png(image_grid(frames, scale=args.grid_scale), out / "strip.png", len(frames))
    print(f"wrote {len(frames)} frames and strip.png to {out}")
