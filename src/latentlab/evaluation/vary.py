"""Midjourney's V button, measured on the shapes world: variations of a text model's own images, drawn as
`Grid.vary` draws them (img2img of the image with its own prompt, at `grid.VARY_STRENGTH`).

A good variation still shows the prompt and is not the same picture: per case, the model draws the caption's
image (the grid image), then `count` variations of it from fresh seeds. Reported: the share of grid images and of
variations the judge reads right on every attribute (with 95% intervals), the share of variations still right
where their source was, and two pixel distances (RMS, intensities in [0, 1]): each variation to its source (how
much changed) and between variations of one source (how much they differ from each other).
"""

from __future__ import annotations

import itertools

import torch

from ..data.judge import judge, score
from ..data.shapes import ShapesDataset
from ..grid import VARY_STRENGTH
from .intervals import mean_interval, proportion


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per pair (B,), images in [-1, 1] measured in [0, 1]."""
    return ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(1).sqrt()


def share(right: list[bool]) -> dict:
    return proportion(sum(right), len(right))


def variation_report(pipe, *, cases: int = 100, count: int = 4, strength: float = VARY_STRENGTH, split: str = "test",
                     p_two: float = 0.0, seed: int = 1234, steps: int = 50, guidance: float = 4.0,
                     batch_size: int = 100) -> dict:
    """The figures above for `cases` captions of the split (`p_two` of them two-object scenes)."""
    _, captions, scenes = ShapesDataset(seed=0, split=split, image_size=pipe.image_size, p_two=p_two).batch(0, cases)
    options = {"steps": steps, "guidance": guidance}
    sources = torch.cat([pipe.sample(captions[i:i + batch_size], seed=seed + i, **options).cpu()
                         for i in range(0, cases, batch_size)])
    repeated, prompts = sources.repeat_interleave(count, 0), [c for c in captions for _ in range(count)]
    seeds = seed + cases  # variations draw from seeds after the sources'
    varied = torch.cat([pipe.img2img(repeated[i:i + batch_size], prompts[i:i + batch_size], strength=strength,
                                     seed=seeds + i, **options).cpu() for i in range(0, len(prompts), batch_size)])
    source_right = [score(scene, judge(image))["all"] for scene, image in zip(scenes, sources)]
    varied_right = [score(scenes[j // count], judge(image))["all"] for j, image in enumerate(varied)]
    groups = varied.view(cases, count, *varied.shape[1:])
    between = torch.cat([rms(groups[:, a], groups[:, b]) for a, b in itertools.combinations(range(count), 2)])
    return {"cases": cases, "count": count, "strength": strength, "split": split, "p_two": p_two, "steps": steps,
            "guidance": guidance, "seed": seed,
            "grid images right": share(source_right), "variations right": share(varied_right),
            "variations right where the source was": share([r for j, r in enumerate(varied_right)
                                                            if source_right[j // count]]),
            "distance to the source": mean_interval(rms(varied, repeated)),
            "distance between variations": mean_interval(between)}
