"""What img2img keeps, against its strength, on the shapes world.

Each case is a rendered single-object scene of the split and the canonical caption of another scene, one whose
object differs in every attribute (colour, shape, size, position). At each strength the judge reads the
result's largest object and counts, per attribute, whether it is the source's ("kept") or the prompt's
("followed"). Strength 0 is the autoencoder's round trip of the source; strength 1 draws the prompt anew. The
curve between is SDEdit's trade (Meng et al. 2022): what of the image survives how much re-noising, and which
attributes go first.
"""

from __future__ import annotations

import dataclasses
import random

from ..data.judge import ATTRIBUTES, judge
from ..data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, Scene, ShapesDataset, caption
from ..pipeline import Pipeline

VALUES = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}


def other_scenes(n: int, split: str, seed: int, size: int):
    """(sources (n, 3, H, W), their scenes, the scenes the prompts ask for, the prompts)."""
    images, _, scenes = ShapesDataset(seed=seed, split=split, image_size=size, p_two=0.0).batch(0, n)
    rng, asked = random.Random(seed), []
    for scene in scenes:
        (obj,) = scene.objects
        other = {a: rng.choice([v for v in VALUES[a] if v != getattr(obj, a)]) for a in ATTRIBUTES}
        asked.append(Scene(objects=(dataclasses.replace(obj, **other),), jitter=scene.jitter))
    return images, scenes, asked, [caption(s) for s in asked]


def strength_curve(pipe: Pipeline, strengths=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), *, cases: int = 100,
                   split: str = "test", seed: int = 1234, steps: int = 50, guidance: float = 4.0,
                   sampler: str = "ddim", batch_size: int = 100) -> dict:
    """Per strength, the share of results whose largest object keeps each of the source's attributes, follows
    each of the prompt's, and keeps or follows all four."""
    images, sources, asked, prompts = other_scenes(cases, split, seed, pipe.image_size)
    rows = []
    for strength in strengths:
        drawn = [x for s in range(0, cases, batch_size)
                 for x in pipe.img2img(images[s:s + batch_size], prompts[s:s + batch_size], strength=strength,
                                       steps=steps, guidance=guidance, sampler=sampler, seed=seed + s).cpu()]
        kept = {a: 0 for a in (*ATTRIBUTES, "all")}
        followed = dict(kept)
        for source, scene, image in zip(sources, asked, drawn):
            detections = judge(image)
            for counts, target in ((kept, source.objects[0]), (followed, scene.objects[0])):
                same = [bool(detections) and getattr(detections[0], a) == getattr(target, a) for a in ATTRIBUTES]
                for attribute, ok in zip(ATTRIBUTES, same):
                    counts[attribute] += ok
                counts["all"] += all(same)
        rows.append({"strength": strength, "kept": {a: v / cases for a, v in kept.items()},
                     "followed": {a: v / cases for a, v in followed.items()}})
    return {"cases": cases, "split": split, "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
            "curve": rows}
