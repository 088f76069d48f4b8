"""Data: the shapes world and its judge; Fashion-MNIST and MNIST; captioned image folders; latent caches.
Every set is an endless, deterministic stream of examples (data/dataset.py); `open_dataset` opens one by name."""

from .dataset import CaptionedImages, FiniteDataset
from .folder import ImageFolder
from .judge import judge, score
from .latents import LatentDataset, cache_latents
from .mnist import fashion_mnist, mnist
from .shapes import ShapesDataset, caption, render, sample_scene
from .sources import open_dataset

__all__ = ["CaptionedImages", "FiniteDataset", "ImageFolder", "LatentDataset", "ShapesDataset", "cache_latents",
           "caption", "fashion_mnist", "judge", "mnist", "open_dataset", "render", "sample_scene", "score"]
