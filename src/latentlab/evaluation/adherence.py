"""Prompt adherence: generate from captions of known scenes and let the judge read the images."""

from __future__ import annotations

import random
from collections import defaultdict
from functools import lru_cache

import torch

from ..data.judge import judge, score
from ..data.paraphrase import paraphrase as reword
from ..data.shapes import ShapesDataset
from ..pipeline import Pipeline
from .intervals import proportion, wilson


def prompt_adherence(pipe: Pipeline, *, prompts: int = 200, split: str = "test", objects: int = 1, seed: int = 1234,
                     steps: int = 50, guidance: float = 4.0, sampler: str = "ddim", batch_size: int = 100,
                     canonical: bool = False, paraphrase: str | None = None, callback=None,
                     **sampler_options) -> dict:
    """Accuracy per attribute and for whole prompts, over `prompts` scenes of `objects` objects each.

    Prompts are fresh captions of the split (`test`: the training distribution, unseen examples;
    `heldout`: colour-shape pairs never trained on), with random wording unless `canonical`.
    `paraphrase` ("templates" or "words", one object only) rewords the captions in ways the training
    templates never produce (`data/paraphrase.py`). `sampler_options` (variance, eta, spacing) go to the sampler.
    Each accuracy comes with its 95% interval (Wilson's); two-object rows add the relation's accuracy among
    images whose objects lie on its axis, and what guessing would score.
    """
    examples = prompt_examples(pipe, prompts=prompts, split=split, objects=objects, seed=seed, canonical=canonical,
                             paraphrase=paraphrase)
    totals: dict[str, float] = defaultdict(float)
    failures = []
    images = draw(pipe, [c for _, c in examples], seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
                  sampler=sampler, callback=callback, **sampler_options)
    for (scene, caption), image in zip(examples, images):
        result = score(scene, judge(image))
        for key, ok in result.items():
            totals[key] += ok
        if not result["all"] and len(failures) < 20:
            failures.append(caption)
    return {
        "prompts": prompts, "split": split, "objects": objects, "paraphrase": paraphrase, "steps": steps,
        "guidance": guidance,
        "sampler": sampler, "seed": seed, **{k: v for k, v in sampler_options.items() if v is not None},
        "accuracy": {key: value / prompts for key, value in totals.items()},
        "interval": {key: wilson(int(value), prompts) for key, value in totals.items()},
        **({"relation given the axis": relation_given_axis(totals), "chance": CHANCE} if objects == 2 else {}),
        "failures": failures,
        "captions": [caption for _, caption in examples],
    }


# what guessing would score: one relation of four; the order along the right axis, one of two
CHANCE = {"relation": 0.25, "relation given the axis": 0.5}


def relation_given_axis(totals: dict) -> dict:
    """The share of images with the relation right among those with the objects on its axis (chance: 1/2)."""
    return proportion(int(totals["relation"]), int(totals["relation axis"]))


def prompt_examples(pipe: Pipeline, *, prompts: int, split: str, objects: int, seed: int,
                    canonical: bool = False, paraphrase: str | None = None) -> list[tuple]:
    """`prompt_adherence`'s (scene, caption) pairs."""
    data = ShapesDataset(seed=seed, split=split, image_size=pipe.image_size, p_two=float(objects == 2),
                         canonical_captions=canonical)
    examples = [data.example(i) for i in range(prompts)]
    if paraphrase is not None:
        examples = [(scene, reword(scene, paraphrase, random.Random(seed * 7919 + i)))
                    for i, (scene, _) in enumerate(examples)]
    return examples


def draw(pipe: Pipeline, captions: list[str], *, seed: int, batch_size: int, **sampling):
    """One image per caption, (N, 3, H, W) on the CPU, in batches; image i from the noise of seed + i."""
    return torch.cat([pipe.sample(captions[s:s + batch_size], seed=seed + s, **sampling).cpu()
                      for s in range(0, len(captions), batch_size)])


TRAINING_DRAWS = 100_000  # training captions sampled to check the prompts against


@lru_cache(maxsize=4)
def training_captions(objects: int, draws: int = TRAINING_DRAWS, seed: int = 0) -> frozenset[str]:
    """The distinct captions among the first `draws` of the training stream of `objects`-object scenes."""
    data = ShapesDataset(seed=seed, split="train", p_two=float(objects == 2))
    return frozenset(data.example(i)[1] for i in range(draws))


def seen_in_training(captions: list[str], objects: int, draws: int = TRAINING_DRAWS) -> float:
    """The share of `captions` that occur word for word among `draws` training captions (a lower bound on the
    share a model trained for longer has seen): the template space of one object is small, so its test
    captions are all training captions; only new wording or held-out pairs are new to the model."""
    seen = training_captions(objects, draws)
    return sum(c in seen for c in captions) / len(captions)
