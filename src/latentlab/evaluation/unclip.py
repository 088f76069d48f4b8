"""Measuring an unCLIP model (unclip_pipeline.py) on the shapes world.

- `variation_fidelity`: variations of rendered single-object images, each judged against the source's scene:
  how often they keep its shape and colour (the issue's goal: >= 90%), its size and position; and how much they
  vary (the pixel distance between two variations of one source, beside the distance from the source).
- `EmbeddingOnly`: the model with the decoder given the prior's embedding alone (no caption), for
  `prompt_adherence`, which takes any object with `sample` and `image_size`.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..data.judge import ATTRIBUTES, judge, score
from ..data.shapes import ShapesDataset
from ..unclip_pipeline import UnCLIPPipeline


class EmbeddingOnly:
    """An unCLIP model whose decoder reads the prior's image embedding alone, not the caption too."""

    def __init__(self, pipe: UnCLIPPipeline):
        self.pipe, self.image_size = pipe, pipe.image_size

    def sample(self, prompts: list[str], **options) -> torch.Tensor:
        return self.pipe.sample(prompts, decoder_text=False, **options)


def variation_fidelity(pipe: UnCLIPPipeline, *, sources: int = 100, count: int = 4, split: str = "test",
                       seed: int = 1234, steps: int = 50, guidance: float = 4.0, sampler: str = "ddim",
                       batch_size: int = 100) -> dict:
    """`count` variations of each of `sources` rendered single-object images of `split`, judged against the
    source's scene. "kept" per attribute (and "shape and colour", the goal's measure; "all": every attribute and
    exactly one object); "variation" the mean RMS pixel difference (in [0, 1] units) between two variations of
    one source and between a variation and its source; "sources_judged_right" the judge on the sources
    themselves (its own error bounds the rest)."""
    data = ShapesDataset(seed=seed, split=split, image_size=pipe.image_size, p_two=0.0)
    images, _, scenes = data.batch(0, sources)
    embeds = pipe.embed_images(images)
    kept: dict[str, float] = defaultdict(float)
    between, from_source, drawn = 0.0, 0.0, []
    for start in range(0, sources, max(1, batch_size // count)):
        part = slice(start, min(sources, start + max(1, batch_size // count)))
        z = embeds[part].repeat_interleave(count, dim=0)
        drawn.append(pipe.decode_embeddings(z, steps=steps, guidance=guidance, sampler=sampler,
                                            seed=seed + start * count).cpu())
    drawn = torch.cat(drawn).view(sources, count, *images.shape[1:])
    for scene, source, variations in zip(scenes, images, drawn):
        for image in variations:
            result = score(scene, judge(image))
            for key in (*ATTRIBUTES, "count", "all"):
                kept[key] += result[key]
            kept["shape and colour"] += result["shape"] and result["colour"]
        between += rms(variations[:, None], variations[None]).sum().item() / max(1, count * (count - 1))
        from_source += rms(variations, source[None]).mean().item()
    total = sources * count
    return {"sources": sources, "count": count, "split": split, "steps": steps, "guidance": guidance,
            "sampler": sampler, "seed": seed,
            "kept": {key: value / total for key, value in kept.items()},
            "variation": {"between_variations": between / sources, "from_source": from_source / sources},
            "sources_judged_right": sum(score(s, judge(x))["all"] for s, x in zip(scenes, images)) / sources}


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference over the last three dims of images in [-1, 1], in [0, 1] units."""
    return ((a - b) / 2).pow(2).mean(dim=(-3, -2, -1)).sqrt()
