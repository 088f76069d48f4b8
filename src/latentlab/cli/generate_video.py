"""`latentlab generate-video`: text prompts -> per prompt a looping GIF, an MP4 and a PNG of its frames side by side."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from ..clips import frame_strip, import_av, save_gif, save_mp4
from ..devices import DTYPES
from ..errors import LatentlabError
from ..grid import slug
from ..pipeline import default_model_path
from ..video_pipeline import SHIPPED_VIDEO_MODEL, VideoPipeline
from .options import SAMPLE, common, defaults, flag, sampler_options, sampling
from .output import check_out
from .values import lora_file, positive, prompt

GIF = defaults(save_gif)


def add_parser(commands) -> None:
    g = commands.add_parser("generate-video", help="generate clips from text prompts with a video model")
    g.add_argument("prompts", nargs="*", type=prompt, help="one or more text prompts")
    g.add_argument("--model", help="a video model folder, written by latentlab train-video"
                                   f"{' (default: the shipped ' + SHIPPED_VIDEO_MODEL + ')' if shipped() else ''}")
    common(g, model=False)
    sampling(g)
    g.add_argument("--out", default="videos", help="folder for the clips (default %(default)s)")
    g.add_argument("--frames", type=positive(int), default=None, help="frames per clip (default: the model's)")
    flag(g, SAMPLE, "negative_prompt", type=prompt, help="what to steer away from (replaces the empty prompt)")
    flag(g, GIF, "fps", type=positive(float), help="frames a second of the GIF and the MP4 (default %(default)s)")
    g.add_argument("--no-mp4", dest="mp4", action="store_false",
                   help="write no MP4, only the GIF and the frame strip (without PyAV installed, none is written)")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="the networks' weights and activations (default %(default)s; float16 or bfloat16 on a GPU)")
    g.add_argument("--adapter", type=lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add an adapter file at multiplier SCALE (default 1): a motion LoRA (train-video --lora-rank), "
                        "or any kind `lora train` writes for the image model; repeat for several")
    g.set_defaults(func=run)


def shipped() -> Path | None:
    path = default_model_path(SHIPPED_VIDEO_MODEL)
    return path if path.is_dir() else None


def run(args) -> None:
    if not args.prompts or any(not p.strip() for p in args.prompts):
        raise LatentlabError("give one or more non-empty prompts, e.g. latentlab generate-video \"a red circle "
                             "moves to the right\"")
    model = args.model or shipped()
    if model is None:
        raise LatentlabError("no video model given; train one with latentlab train-video and pass its folder as "
                             "--model")
    out = Path(args.out)
    check_out(out, folder=True)
    pipe = VideoPipeline.load(model, device=args.device, dtype=args.dtype)
    for path, scale in args.adapter or ():
        pipe.load_adapter(path, scale=scale)
    seed, _, _ = pipe.check_sample(len(args.prompts), steps=args.steps, guidance=args.guidance, seed=args.seed,
                                   sampler=args.sampler, **sampler_options(args))
    mp4 = args.mp4 and has_av()
    out.mkdir(parents=True, exist_ok=True)
    draw(pipe, args, seed, out, mp4)
    count, kinds = len(args.prompts), "GIF, MP4 and frame strip" if mp4 else "GIF and frame strip"
    print(f"wrote {count} clip{'s' if count > 1 else ''} ({kinds} each) to {out}")


def has_av() -> bool:
    """Whether MP4s can be written; where not, one line on stderr says so, and the command goes on."""
    try:
        import_av()
    except LatentlabError as e:
        print(f"latentlab: {e}; writing GIFs and frame strips only", file=sys.stderr)
        return False
    return True


def draw(pipe, args, seed: int, out: Path, mp4: bool) -> None:
    """Each prompt's clip (clip i seeded by seed + i), its files written as soon as it is done."""
    from tqdm import tqdm

    with tqdm(total=args.steps * len(args.prompts), desc="sampling", unit="step") as bar:
        for i, text in enumerate(args.prompts):
            frames = pipe([text], frames=args.frames, steps=args.steps, guidance=args.guidance, seed=seed + i,
                          sampler=args.sampler, negative_prompt=args.negative_prompt,
                          callback=lambda step, steps: bar.update(1), **sampler_options(args))[0]
            stem = out / f"{i:03d}-{slug(text)}"
            write(lambda path: save_gif(frames, path, fps=args.fps), stem.with_suffix(".gif"), i)
            if mp4:
                write(lambda path: save_mp4(frames, path, fps=args.fps), stem.with_suffix(".mp4"), i)
            write(lambda path: save_png(frame_strip(frames), path), stem.with_suffix(".png"), i)


def save_png(image, path: Path) -> None:
    from ..io import atomic_write

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def write(save, path: Path, written: int) -> None:
    """save(path); a failure says that the `written` clips before it are kept."""
    try:
        save(path)
    except OSError as e:
        raise LatentlabError(f"cannot write {path}: {e.strerror or e}; the {written} clips before it are in "
                             f"{path.parent}") from None
