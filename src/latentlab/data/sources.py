"""The data sets a run can name: `--data shapes | shapes-wide | fashion-mnist | mnist | FOLDER`, where a folder
holds captioned images (data/folder.py) or latents cached by `latentlab cache-latents` (data/latents.py).
shapes-wide is the shapes world with a quarter of the colours and shapes replaced by the concepts of
data/concept.py: for training autoencoders that carry the concepts, never for the diffusion models that are
to be taught them afterwards."""

from __future__ import annotations

from pathlib import Path

from ..errors import LatentlabError
from .dataset import CaptionedImages

NAMED = ("shapes", "shapes-wide", "fashion-mnist", "mnist")
WIDE_P_NEW = 0.25  # shapes-wide: the chance of a new colour, and of a new shape, for each object


def open_dataset(spec: str, *, image_size: int = 32, seed: int = 0, split: str = "train",
                 **options) -> CaptionedImages:
    """A data set by name, or an image folder with captions (data/folder.py) by path. `options` go to
    the shapes world (p_two, ...)."""
    if spec == "shapes":
        from .shapes import ShapesDataset

        return ShapesDataset(seed=seed, split=split, image_size=image_size, **options)
    if spec == "shapes-wide":  # for autoencoders: the world with the concepts of data/concept.py mixed in
        from .shapes import ShapesDataset

        return ShapesDataset(seed=seed, split=split, image_size=image_size, **{"p_new": WIDE_P_NEW, **options})
    if spec == "fashion-mnist":
        from .mnist import fashion_mnist

        return fashion_mnist(split, image_size=image_size, seed=seed)
    if spec == "mnist":
        from .mnist import mnist

        return mnist(split, image_size=image_size, seed=seed)
    if Path(spec).is_dir():
        from .folder import ImageFolder
        from .latents import LatentDataset, is_latent_cache

        if is_latent_cache(spec):
            return LatentDataset(spec, seed=seed)

        return ImageFolder(spec, image_size=image_size, seed=seed)
    raise LatentlabError(f"unknown data {spec!r}; accepted: {', '.join(NAMED)}, a folder of captioned images, or a "
                         "folder of cached latents")


def caption_corpus_of(spec: str, data: CaptionedImages, *, seed: int = 0, n: int = 20_000) -> list[str]:
    """Captions to fit a tokenizer to: the shapes world's every wording, or the set's own captions."""
    if spec == "shapes":
        from .shapes import caption_corpus

        return caption_corpus(n, seed=seed)
    if hasattr(data, "captions"):  # a latent cache, an image folder
        return list(data.captions[:n])
    return data.items(data.indices(0, min(n, len(data))))[1]  # one epoch's worth; no pixels converted
