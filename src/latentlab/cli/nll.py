"""`latentlab nll`: bits per dimension, the variational bound on held-out images (evaluation/likelihood.py)."""

from __future__ import annotations

from ..diffusion import VARIANCES
from ..evaluation import likelihood
from ..errors import LatentlabError
from .options import common, defaults, flag, load_model
from .output import check_out, write_report
from .values import positive

BOUND = defaults(likelihood.bits_per_dim)


def add_parser(commands) -> None:
    n = commands.add_parser("nll", help="bits per dimension: the variational bound on held-out images")
    common(n, seeds=BOUND)
    flag(n, BOUND, "images", type=positive(int), help="test images (default %(default)s)")
    flag(n, BOUND, "batch_size", type=positive(int))
    flag(n, BOUND, "variance", choices=VARIANCES,
         help="reverse variance (default: learned if the model learned one, else small)")
    n.add_argument("--out", default=None, help="write the report as JSON here")
    n.set_defaults(func=run)


def run(args) -> None:
    from tqdm import tqdm

    from ..evaluation import bits_per_dim  # here, not above: tests replace it

    if args.out:
        check_out(args.out, folder=False)
    pipe = load_model(args)
    if hasattr(pipe, "check_prior"):
        raise LatentlabError(f"--model {args.model} is an unCLIP model, whose decoder reads image embeddings; nll "
                             "bounds a text-to-image model's likelihood (its text model is shapes-default, or the "
                             "folder it was trained from)")
    with tqdm(total=args.images, desc="bound", unit="image") as bar:

        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        report = bits_per_dim(pipe, images=args.images, batch_size=args.batch_size, variance=args.variance,
                              seed=args.seed, callback=progress)
    bits = report["bits_per_dim"]
    print(f"latent: {bits['latent']:.4f} bits/dim (prior {bits['latent_prior']:.4f}, decoder "
          f"{bits['latent_decoder']:.4f})  pixel: {bits['pixel']:.4f} bits/dim (reconstruction "
          f"{bits['pixel_reconstruction']:.4f})  variance {report['variance']}, {report['images']} images")
    if args.out:
        write_report(args.out, report)
