"""`latentlab cache-latents`: encode a data set once with the autoencoder (data/latents.py), for
`latentlab train --data` to read instead of the images."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import latents, sources
from ..errors import LatentlabError
from .options import common, defaults, flag
from .output import check_out
from .values import positive

CACHE, DATASET = defaults(latents.cache_latents), defaults(sources.open_dataset)


def add_parser(commands) -> None:
    c = commands.add_parser("cache-latents", help="encode a data set once with the autoencoder, for "
                                                  "`train --data OUT`")
    c.add_argument("--vae", required=True, help="the autoencoder folder (or a model folder: its vae/)")
    c.add_argument("--data", required=True, help="shapes, fashion-mnist, mnist, or a folder of captioned images")
    c.add_argument("--out", required=True, help="the cache folder to write")
    flag(c, CACHE, "count", type=positive(int), help="examples to encode (default: the whole set)")
    flag(c, DATASET, "image_size", type=int, choices=(32, 64))
    common(c, seeds=DATASET, model=False)
    c.set_defaults(func=run)


def run(args) -> None:
    from ..data.latents import cache_latents  # here, not above: tests replace these
    from ..data.sources import open_dataset
    from ..devices import resolve_device
    from ..training.diffusion import load_vae

    if not Path(args.vae).is_dir():
        raise LatentlabError(f"autoencoder folder {args.vae} does not exist; train one with latentlab train-vae")
    check_out(args.out, folder=True)
    data = open_dataset(args.data, image_size=args.image_size, seed=args.seed)
    if args.count is None and not hasattr(data, "__len__"):
        raise LatentlabError(f"{args.data} is endless: give --count, the number of examples to encode")
    index = cache_latents(data, load_vae(args.vae), args.out, count=args.count, device=resolve_device(args.device))
    print(json.dumps({"count": index["count"], "shards": len(index["shards"]), "out": args.out}))
