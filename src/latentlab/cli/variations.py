"""`latentlab variations IMAGE`: an unCLIP model (unclip_pipeline.py) encodes the image and draws it again from its
embedding with fresh noise: source.png (the image as the model read it), one PNG per variation, and grid.png."""

from __future__ import annotations

import sys
from pathlib import Path

from ..devices import resolve_device
from ..errors import LatentlabError
from ..images import read_image, to_pil
from ..pipeline import SHIPPED_MODELS
from ..unclip_pipeline import SHIPPED_UNCLIP_MODEL, UnCLIPPipeline, unclip_path
from .options import SAMPLE, flag, sampler_options, sampling
from .output import check_out, save_edits
from .values import positive, prompt, seed

VARIATIONS = {"count": 4, "prompt": ""}  # UnCLIPPipeline.variations' defaults
UNCLIP_HELP = (f"an unCLIP model: a folder written by latentlab train-unclip, or the shipped {SHIPPED_UNCLIP_MODEL} "
               "(also named unclip; the default)")


def add_parser(commands) -> None:
    v = commands.add_parser("variations", help="draw variations of an image with an unCLIP model (DALL-E 2)")
    v.add_argument("image", help="the image file (PNG, JPEG, ...); resized and converted to RGB as the model needs")
    unclip_options(v)
    v.add_argument("--count", type=positive(int), default=VARIATIONS["count"],
                   help="variations to draw (default %(default)s)")
    v.add_argument("--prompt", type=prompt, default=VARIATIONS["prompt"],
                   help="a caption the decoder reads beside the embedding (default: none)")
    v.add_argument("--out", default="variations", help="folder for the PNGs (default %(default)s)")
    v.set_defaults(func=run)


def unclip_options(parser) -> None:
    """--model (an unCLIP model), --device, --seed, the sampler's options and --grid-scale."""
    parser.add_argument("--model", default="unclip", help=UNCLIP_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    flag(parser, SAMPLE, "seed", type=seed, help="0 to 4294967295 (default %(default)s)")
    sampling(parser)
    parser.add_argument("--grid-scale", type=positive(int), default=4,
                        help="enlarge grid.png this many times (default %(default)s)")


def load_unclip(args, command: str) -> UnCLIPPipeline:
    """The unCLIP model --model names; another kind of model is refused, saying which models can."""
    if unclip_path(args.model) is None:
        model = Path(args.model)
        text = args.model in SHIPPED_MODELS or (model / "model_index.json").is_file() or model.suffix == ".safetensors"
        what = "is a text-to-image model" if text else "is not a model"
        raise LatentlabError(f"--model {args.model} {what}; {command} needs "
                             f"{UNCLIP_HELP}")
    return UnCLIPPipeline.load(args.model, device=resolve_device(args.device))


def read_images(pipe: UnCLIPPipeline, paths: list[str]) -> list:
    """Each image file as the model reads it, then (all read) a note on stderr for each resize or conversion."""
    read = [read_image(path, pipe.clip.image_size) for path in paths]
    for path, (_, notes) in zip(paths, read):
        if notes:
            print(f"{path}: {'; '.join(notes)}", file=sys.stderr)
    return [image for image, _ in read]


def run(args) -> None:
    out = Path(args.out)
    check_out(out, folder=True)
    pipe = load_unclip(args, "variations")
    (image,) = read_images(pipe, [args.image])
    options = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, sampler=args.sampler,
                   **sampler_options(args))
    pipe.check_sample(args.count, **options)  # all of it before any work
    variations = to_pil(pipe.variations(image, args.count, prompt=args.prompt, **options))
    save_edits(out, {"source.png": to_pil(image[None])[0]}, variations, args.grid_scale)
    print(f"wrote source.png, {len(variations)} variations and grid.png (the source first) to {out}")
