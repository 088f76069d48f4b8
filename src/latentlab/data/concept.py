"""A concept the shapes model has never seen: single objects of a new colour (shapes.NEW_COLOURS) or a new
shape (shapes.NEW_SHAPES), for teaching a trained model from a few captioned images (LoRA or fine-tuning) and
measuring what it learned (evaluation/concept.py).

Each example is one object of the concept; the other attributes (a new colour's shape, a new shape's palette
colour, size and position) are drawn at random, with the shapes world's jitter and caption templates. Streams
are fixed by (concept, split, seed, index) and apart from the shapes world's: the "train" split fills the
folder a model learns from, the "test" split gives the evaluation's prompts.

The concept word in captions is the concept's own name ("a small cyan circle at the top", "a red diamond on
the left"), not a DreamBooth-style rare identifier ("a small sks circle"; Ruiz et al. 2023). DreamBooth picks
a rare token because a large pretrained text encoder already gives ordinary words a meaning that fights the
new one; the shapes model's tokenizer and text encoder never met "cyan" or "diamond" at all (the BPE spells
them in pieces), so the plain word is as new to the model as "sks" would be, while the captions and the
evaluation's prompts read as a user would write them. Pieces can overlap known words: cyan's last piece "an"
is the article the model knows from "an orange ...", a pull towards orange that training must undo (the
shipped model draws orange or yellow for nine in ten cyan prompts; the evaluation's `read`). `word` names the
concept by any other lower-case word, "sks" included, or by a learned token such as "<pink>"
(training/continual.py).

`ConceptPairDataset` draws a new colour and a new shape in one object ("a pink star"), each named by its own
word: prompts that ask a model taught the two concepts apart to compose them (evaluation/concept.py
`pair_accuracy`). Its streams are fixed by (colour, shape, split, seed, index), apart from every single concept's.

The shipped autoencoder was trained on the shapes world alone. It does not carry cyan faithfully (its round
trip turns a cyan shape into a blue-green gradient); it carries diamonds (evaluation/concept.py,
`vae_round_trip`).

    python -m latentlab.data.concept --out DIR [--concept NAME] [--count 100] [--seed 0] [--word sks]

NAME: a new colour (cyan, pink, brown) or a new shape (diamond, star, hexagon, cross, ring); CONCEPTS lists them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import LatentlabError
from .folder import EXTENSIONS
from .shapes import (COLOURS, JITTER, NEW_COLOURS, NEW_SHAPES, POSITIONS, SHAPES, SIZES, ShapeObject, Scene,
                     ShapesDataset, caption, render)

CONCEPTS = (*NEW_COLOURS, *NEW_SHAPES)
CONCEPT_SPLITS = ("train", "test")
MANIFEST = "concept.json"


def concept_kind(concept: str) -> str:
    """The attribute a concept is a new value of, "colour" or "shape"; unknown concepts raise ValueError."""
    if concept in NEW_COLOURS:
        return "colour"
    if concept in NEW_SHAPES:
        return "shape"
    raise LatentlabError(f"unknown concept {concept!r}; accepted: {', '.join(CONCEPTS)}")


def check_concept(concept: str, word: str | None = None) -> str:
    """The caption word of a concept; unknown concepts and unusable words raise ValueError."""
    concept_kind(concept)
    word = concept if word is None else word
    if not re.fullmatch(r"[a-z]+|<[a-z]+>", word):
        raise LatentlabError(f"the concept word must be one lower-case word (a-z), or one in angle brackets (a "
                             f"learned token, <pink>), got {word!r}")
    return word


def concept_scene(rng: random.Random, concept: str) -> Scene:
    """One object of the concept: its other attributes uniform (a new colour's shape, a new shape's palette
    colour; size, position), the centre jittered like the shapes world's."""
    if concept_kind(concept) == "colour":
        shape, colour = rng.choice(SHAPES), concept
    else:
        shape, colour = concept, rng.choice(list(COLOURS))
    return object_scene(rng, shape, colour)


def object_scene(rng: random.Random, shape: str, colour: str) -> Scene:
    """One object of this shape and colour, its size and position uniform, its centre jittered like the shapes
    world's: the draws after the concept's own, shared by single concepts and pairs."""
    obj = ShapeObject(shape, colour, rng.choice(list(SIZES)), rng.choice(list(POSITIONS)))
    return Scene((obj,), None, ((rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)),))


def _check_split_and_size(split: str, image_size: int) -> None:
    if split not in CONCEPT_SPLITS:
        raise LatentlabError(f"unknown concept split {split!r}; accepted: {', '.join(CONCEPT_SPLITS)}")
    if image_size not in (32, 64):
        raise LatentlabError(f"image size {image_size} is not supported; accepted: 32, 64")


class ConceptDataset:
    """Example i of a concept's split: (scene, caption) fixed by (concept, split, seed, i); `batch` renders."""

    def __init__(self, *, concept: str = "cyan", seed: int = 0, split: str = "train", image_size: int = 32,
                 word: str | None = None):
        _check_split_and_size(split, image_size)
        self.word = check_concept(concept, word)
        self.concept, self.seed, self.split, self.image_size = concept, seed, split, image_size

    def example(self, index: int) -> tuple[Scene, str]:
        rng = random.Random(f"concept/{self.concept}/{self.split}/{self.seed}/{index}")  # str seeds hash by SHA-512
        scene = concept_scene(rng, self.concept)
        return scene, caption(scene, rng, words={self.concept: self.word})

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        """Examples start .. start + n - 1 as (images (n, 3, H, W) in [-1, 1], captions, scenes)."""
        scenes, captions = zip(*(self.example(i) for i in range(start, start + n)))
        return render(list(scenes), self.image_size, device), list(captions), list(scenes)


def check_pair(colour: str, shape: str, words: dict[str, str] | None = None) -> dict[str, str]:
    """The caption words of a concept pair, {colour: word, shape: word}; a colour not of NEW_COLOURS, a shape
    not of NEW_SHAPES, words for anything else, unusable words and one word for both raise LatentlabError."""
    if colour not in NEW_COLOURS:
        raise LatentlabError(f"a concept pair's colour must be a new colour, got {colour!r}; accepted: "
                             f"{', '.join(NEW_COLOURS)}")
    if shape not in NEW_SHAPES:
        raise LatentlabError(f"a concept pair's shape must be a new shape, got {shape!r}; accepted: "
                             f"{', '.join(NEW_SHAPES)}")
    words = words or {}
    if set(words) - {colour, shape}:
        raise LatentlabError(f"words name the pair's colour and shape only, got {', '.join(map(repr, words))}; "
                             f"accepted: {colour!r}, {shape!r}")
    checked = {concept: check_concept(concept, words.get(concept)) for concept in (colour, shape)}
    if checked[colour] == checked[shape]:
        raise LatentlabError(f"the colour and the shape need different words, got {checked[colour]!r} for both")
    return checked


class ConceptPairDataset:
    """Example i of a concept pair's split: one object of a new colour and a new shape ("a pink star"), its size
    and position uniform; (scene, caption) fixed by (colour, shape, split, seed, i), apart from every single
    concept's stream; `batch` renders. `words` maps the colour or the shape to its caption word (default its
    name; a learned token such as "<pink>" too), so that a model taught each concept on its own can be asked
    for both at once (evaluation/concept.py `pair_accuracy`)."""

    def __init__(self, *, colour: str, shape: str, seed: int = 0, split: str = "test", image_size: int = 32,
                 words: dict[str, str] | None = None):
        self.words = check_pair(colour, shape, words)
        _check_split_and_size(split, image_size)
        self.colour, self.shape, self.seed, self.split, self.image_size = colour, shape, seed, split, image_size

    def example(self, index: int) -> tuple[Scene, str]:
        rng = random.Random(f"concept-pair/{self.colour}/{self.shape}/{self.split}/{self.seed}/{index}")
        scene = object_scene(rng, self.shape, self.colour)
        return scene, caption(scene, rng, words=self.words)

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        """Examples start .. start + n - 1 as (images (n, 3, H, W) in [-1, 1], captions, scenes)."""
        scenes, captions = zip(*(self.example(i) for i in range(start, start + n)))
        return render(list(scenes), self.image_size, device), list(captions), list(scenes)


def _save(data, count: int, out: Path, stem: str) -> None:
    """Examples 0 .. count - 1 of `data` as STEM-0000.png and STEM-0000.txt, ..."""
    for start in range(0, count, 256):
        images, captions, _ = data.batch(start, min(256, count - start))
        pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)
        for i, (image, text) in enumerate(zip(pixels, captions), start=start):
            Image.fromarray(np.ascontiguousarray(image)).save(out / f"{stem}-{i:04d}.png")
            (out / f"{stem}-{i:04d}.txt").write_text(text + "\n", encoding="utf-8")


def write_concept_folder(out: str | Path, concept: str = "cyan", count: int = 100, seed: int = 0,
                         image_size: int = 32, *, word: str | None = None, prior: int = 0) -> Path:
    """Write `count` captioned concept images (CONCEPT-0000.png + .txt, ...) to `out`, the folder format
    data/folder.py reads, and a concept.json saying how they were made.

    `prior` adds that many ordinary scenes of the shapes world's training split (prior-0000.png, ...):
    DreamBooth's prior preservation, with ground truth in place of the model's own samples. Refuses a
    folder that already holds images, so a folder never mixes two runs.
    """
    data = ConceptDataset(concept=concept, seed=seed, split="train", image_size=image_size, word=word)
    if count < 1 or prior < 0:
        raise LatentlabError(f"count must be at least 1 and prior at least 0, got count={count}, prior={prior}")
    out = Path(out)
    if out.is_dir() and any(p.suffix.lower() in EXTENSIONS for p in out.rglob("*")):
        raise LatentlabError(f"{out} already holds images; give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _save(data, count, out, concept)
    if prior:
        _save(ShapesDataset(seed=seed, split="train", image_size=image_size), prior, out, "prior")
    manifest = {"concept": concept, "kind": concept_kind(concept), "word": data.word, "count": count, "seed": seed,
                "split": "train", "image_size": image_size, "prior": prior}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentlab.data.concept",
                                     description="Write a captioned image folder of a new colour or shape.")
    parser.add_argument("--out", required=True, help="the folder to write (new or empty)")
    parser.add_argument("--concept", "--colour", default="cyan",
                        help=f"one of {', '.join(CONCEPTS)} (default %(default)s)")
    parser.add_argument("--count", type=int, default=100, help="concept images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, choices=(32, 64), default=32)
    parser.add_argument("--word", default=None, help="the concept's word in captions (default: its name)")
    parser.add_argument("--prior", type=int, default=0, help="also this many ordinary training scenes (default 0)")
    args = parser.parse_args(argv)
    try:
        out = write_concept_folder(args.out, args.concept, args.count, args.seed, args.image_size, word=args.word,
                                   prior=args.prior)
    except ValueError as e:  # LatentlabError included
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.count} {args.concept} images{f' and {args.prior} prior images' if args.prior else ''} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
