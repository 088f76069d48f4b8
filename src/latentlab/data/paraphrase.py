"""Captions the training templates never produce, for measuring how a text encoder generalises.

Two kinds, for single-object scenes:
  templates  new sentence structures around the training vocabulary ("could you draw ...")
  words      the training templates' structure with words they never use: synonyms of the colours,
             shapes, sizes and positions ("a tiny crimson disc near the upper edge")
"""

from __future__ import annotations

import random

from .shapes import POSITION_WORDS, SIZE_WORDS, Scene, _article

PARAPHRASE_KINDS = ("templates", "words")

NEW_TEMPLATES = (
    "could you draw {a} {size} {colour} {shape} {pos}?",
    "i would like to see {a} {colour} {shape}, {size} in size, placed {pos}",
    "{pos} we find {a} {shape}; it is {colour} and {size}",
    "draw me one {colour} {shape} of {size} size {pos}",
    "the image shows a single {size} {shape} coloured {colour}, {pos}",
)
NEW_WORDS = {
    "red": ("crimson", "scarlet"), "blue": ("navy", "azure"), "green": ("emerald",), "yellow": ("golden", "lemon"),
    "purple": ("violet", "lilac"), "orange": ("tangerine", "amber"),
    "circle": ("disc", "round dot"), "square": ("box", "block"), "triangle": ("three-sided shape", "wedge"),
    "small": ("miniature", "petite"), "large": ("huge", "giant"),
    "left": ("near the left edge", "on the left-hand side"), "right": ("near the right edge", "on the right-hand side"),
    "top": ("near the upper edge", "up high"), "bottom": ("near the lower edge", "down low"),
    "centre": ("right in the middle", "at the very center"),
}
TEMPLATE = "{a} {size} {colour} {shape} {pos}"  # the first training template


def paraphrase(scene: Scene, kind: str, rng: random.Random) -> str:
    """A caption of a one-object scene in wording of `kind` (see the module docstring)."""
    if kind not in PARAPHRASE_KINDS:
        raise ValueError(f"unknown paraphrase kind {kind!r}; accepted: {', '.join(PARAPHRASE_KINDS)}")
    if len(scene.objects) != 1:
        raise ValueError("paraphrases are written for one-object scenes")
    (obj,) = scene.objects
    if kind == "templates":
        words = {"size": rng.choice(SIZE_WORDS[obj.size]), "colour": obj.colour, "shape": obj.shape,
                 "pos": rng.choice(POSITION_WORDS[obj.position])}
        template = rng.choice(NEW_TEMPLATES)
    else:
        words = {"size": rng.choice(NEW_WORDS[obj.size]), "colour": rng.choice(NEW_WORDS[obj.colour]),
                 "shape": rng.choice(NEW_WORDS[obj.shape]), "pos": rng.choice(NEW_WORDS[obj.position])}
        template = TEMPLATE
    return template.format(a=_article(words["size"]), **words)
