"""`latentlab generate`: text prompts -> one PNG per image, and grid.png of them all."""

from __future__ import annotations

import math
from pathlib import Path

from ..devices import DTYPES
from ..errors import LatentlabError
from ..grid import Grid, GridImage, model_reference, settings_of, slug
from .options import LOAD, SAMPLE, common, flag, load_model, sampler_options, sampling
from .output import check_out, save_png
from .values import lora_file, positive, prompt

GRID_PIXELS = 2**26  # grid.png's limit, 64 megapixels: under PIL's 89-megapixel warning when it is read back
GRID_COLUMNS = 8


def add_parser(commands) -> None:
    g = commands.add_parser("generate", help="generate images from text prompts")
    g.add_argument("prompts", nargs="*", type=prompt, help="one or more text prompts")
    common(g)
    sampling(g)
    g.add_argument("--out", default="samples", help="folder for the PNGs (default %(default)s)")
    flag(g, SAMPLE, "negative_prompt", type=prompt,
         help="what to steer away from (replaces the empty prompt)")
    g.add_argument("--images-per-prompt", type=positive(int), default=1)
    flag(g, SAMPLE, "size", type=positive(int), help="image size in pixels (default: the model's)")
    g.add_argument("--grid-scale", type=positive(int), default=4,
                   help="enlarge grid.png this many times (default %(default)s; less where the grid would pass 64 "
                        "megapixels)")
    g.add_argument("--batch-size", type=positive(int), default=16,
                   help="images sampled at a time (default %(default)s), each batch's PNGs saved as it finishes; the "
                        "images do not depend on it")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="the networks' weights and activations (default %(default)s; float16 or bfloat16 on a GPU)")
    flag(g, LOAD, "channels_last", help="feature maps in NHWC, the GPU convolutions' own layout")
    flag(g, SAMPLE, "cuda_graph",
         help="record the U-Net's kernels once and replay them each step (CUDA only; same images)")
    g.add_argument("--lora", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add a LoRA (latentlab, kohya, diffusers or peft file) at multiplier SCALE (default 1: "
                        "W = W0 + SCALE * alpha/rank * B A); repeat for several")
    g.add_argument("--adapter", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add an adapter of any kind `lora train --method` writes (lora, dora, loha, lokr, bottleneck, "
                        "prefix) at multiplier SCALE (default 1); repeat for several, of any kinds")
    g.add_argument("--embedding", action="append", metavar="FILE",
                   help="add a textual-inversion embedding (diffusers or A1111 .safetensors) as its token, for the "
                        "prompts to use; repeat for several")
    g.add_argument("--sequence", metavar="DIR",
                   help="add every finished task of a sequence `latentlab continual train` wrote, as it trained them "
                        "(updates, tokens; full fine-tuning: the last U-Net); prompts name each concept as `continual "
                        "eval` lists it, e.g. \"a <pink> <star>\"")
    g.set_defaults(func=run)


def run(args) -> None:
    from ..images import image_grid  # here, not above: tests replace it

    if not args.prompts or any(not p.strip() for p in args.prompts):
        raise LatentlabError("give one or more non-empty prompts, e.g. latentlab generate \"a red circle\"")
    count, out = len(args.prompts) * args.images_per_prompt, Path(args.out)
    check_out(out, folder=True)
    pipe = load_model(args, dtype=args.dtype, channels_last=args.channels_last)
    if hasattr(pipe, "check_prior"):  # an unCLIP model draws from text through its prior
        pipe.check_prior()
    for path, adapter_scale in args.adapter or ():
        pipe.load_adapter(path, scale=adapter_scale)
    for path in args.embedding or ():
        pipe.load_textual_inversion(path)
    if args.sequence:
        from ..evaluation.continual import load_sequence

        load_sequence(pipe, args.sequence)
    seed, size, _ = pipe.check_sample(count, steps=args.steps, guidance=args.guidance, seed=args.seed,
                                      sampler=args.sampler, size=args.size, cuda_graph=args.cuda_graph,
                                      **sampler_options(args))
    scale = grid_scale(count, size, args.grid_scale)  # all of it before any work
    out.mkdir(parents=True, exist_ok=True)
    images, record = draw(pipe, args, seed, size, out)
    save_png(image_grid(images, columns=min(count, GRID_COLUMNS), scale=scale), out / "grid.png", count)
    record.save()  # grid.json: what `latentlab vary` (and the Python API's Grid) acts on
    smaller = f" (grid.png at scale {scale}, within {GRID_PIXELS // 2**20} megapixels)"
    print(f"wrote {count} images, grid.png and grid.json to {out}{smaller if scale < args.grid_scale else ''}")


def draw(pipe, args, seed: int, size: int, out: Path) -> tuple[list, Grid]:
    """The images, --batch-size at a time, each batch's PNGs saved as soon as it is done; and the grid's record."""
    from tqdm import tqdm

    prompts = [p for p in args.prompts for _ in range(args.images_per_prompt)]
    images = []
    settings = settings_of(steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                           negative_prompt=args.negative_prompt, size=size, **sampler_options(args))
    record = Grid(folder=out, model=model_reference(args.model), images=[], dtype=args.dtype,
                  adapters=[(str(Path(p).resolve()), s) for p, s in [*(args.lora or ()), *(args.adapter or ())]],
                  embeddings=[str(Path(p).resolve()) for p in args.embedding or ()],
                  sequence=str(Path(args.sequence).resolve()) if args.sequence else None)
    with tqdm(total=args.steps * -(-len(prompts) // args.batch_size), desc="sampling", unit="step") as bar:
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start:start + args.batch_size]
            for text, image in zip(batch, pipe(batch, steps=args.steps, guidance=args.guidance, seed=seed + start,
                                               sampler=args.sampler, negative_prompt=args.negative_prompt, size=size,
                                               cuda_graph=args.cuda_graph, callback=lambda i, n: bar.update(1),
                                               **sampler_options(args))):
                name = f"{len(images):03d}-{slug(text)}.png"
                save_png(image, out / name, len(images))
                record.images.append(GridImage(name, text, seed + len(images), settings))
                images.append(image)
    return images, record


def grid_scale(count: int, size: int, scale: int) -> int:
    """The largest scale up to `scale` at which grid.png, GRID_COLUMNS images a row, stays within GRID_PIXELS;
    more images than fit at scale 1 are refused."""
    columns = min(count, GRID_COLUMNS)
    pixels = columns * -(-count // columns) * size * size
    if pixels > GRID_PIXELS:
        most = columns * (GRID_PIXELS // (columns * size * size))
        raise LatentlabError(f"{count} images of {size}x{size} pixels make a grid.png of {pixels / 2**20:.0f} "
                             f"megapixels, over the limit of {GRID_PIXELS // 2**20}: ask for at most {most} "
                             "images per command")
    return min(scale, math.isqrt(GRID_PIXELS // pixels))
