"""Concept accuracy: how well a model draws a colour or shape it was taught afterwards (data/concept.py).

Prompts are fresh captions of the concept's "test" split (never the "train" split that fills the
training folder), one object each. The judge reads the images with the training palette plus a concept
colour, or the training shapes plus a concept shape; every other colour and shape keeps its place, so a
model that draws blue for "cyan" (a square for "diamond") scores a wrong colour (shape), and `read` says
which colour (shape) it drew instead. Ordinary prompts are measured as before, with the palette and
shapes alone (evaluation/adherence.py).

`pair_accuracy` asks for a new colour and a new shape at once ("a pink star"; data/concept.py
`ConceptPairDataset`), each named by its own word: whether a model taught the two apart (training/continual.py)
can compose them. The judge reads with the palette plus the colour and the shapes plus the shape, and `read`
says which colour and which shape were drawn.

`vae_round_trip` reads the ground-truth images of the same prompts after a pass through the
pipeline's autoencoder (encode to the posterior mean, decode): what a model that reproduced its
training latents exactly would score. It is a guide, not a bound (sampled latents need not be the
encoder's), but a low one says the autoencoder itself does not carry the concept: the shipped shapes
autoencoder, trained on the palette alone, turns cyan into blue-green gradients, and only about half
of the round trips read right on every attribute (diamonds: about 96%).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from ..data.concept import ConceptDataset, ConceptPairDataset, concept_kind
from ..data.judge import judge, score
from ..data.shapes import COLOURS, NEW_COLOURS, SHAPES, Scene
from ..pipeline import Pipeline


def judge_options(concepts) -> dict:
    """The judge's keyword arguments for reading several concepts at once: the training palette plus the concept
    colours, the training shapes plus the concept shapes; each key only where some concept is of its kind."""
    colours = [c for c in concepts if concept_kind(c) == "colour"]
    shapes = [c for c in concepts if concept_kind(c) == "shape"]
    options: dict = {}
    if colours:
        options["palette"] = {**COLOURS, **{c: NEW_COLOURS[c] for c in colours}}
    if shapes:
        options["shapes"] = (*SHAPES, *shapes)
    return options


def concept_judge_options(concept: str) -> dict:
    """The judge's keyword arguments for a concept: the training palette plus a concept colour, or the
    training shapes plus a concept shape."""
    return judge_options([concept])


def read_concepts(scenes: list[Scene], images: torch.Tensor, concepts) -> dict:
    """The judge's reading of images (B, 3, H, W) in [-1, 1] drawn for one-object `scenes` of the concepts (one
    concept, or a colour and a shape), judged with `judge_options(concepts)`: accuracy per attribute and for
    whole prompts ("all"), `read`: for each kind of the concepts ("colour", "shape") the value read for the
    largest object (fractions; "none" where nothing was found), and `passed`: each prompt's "all"."""
    options = judge_options(concepts)
    kinds = list(dict.fromkeys(concept_kind(c) for c in concepts))
    totals: dict[str, float] = defaultdict(float)
    read: dict[str, Counter] = {kind: Counter() for kind in kinds}
    passed = []
    for scene, image in zip(scenes, images):
        detections = judge(image, **options)
        result = score(scene, detections)
        for key, ok in result.items():
            totals[key] += ok
        for kind in kinds:
            read[kind][getattr(detections[0], kind) if detections else "none"] += 1
        passed.append(result["all"])
    n = len(scenes)
    return {"accuracy": {key: value / n for key, value in totals.items()},
            "read": {kind: {name: count / n for name, count in read[kind].most_common()} for kind in kinds},
            "passed": passed}


def read_concept(scenes: list[Scene], images: torch.Tensor, concept: str) -> dict:
    """The judge's reading of images (B, 3, H, W) in [-1, 1] drawn for one-object `scenes` of the concept:
    accuracy per attribute and for whole prompts ("all"), and `read`: the concept's attribute (colour or
    shape) read for the largest object (fractions; "none" where nothing was found)."""
    reading = read_concepts(scenes, images, [concept])
    return {**reading, "read": reading["read"][concept_kind(concept)]}


def _draw(pipe: Pipeline, captions: list[str], *, seed: int, batch_size: int, **options) -> torch.Tensor:
    """The pipeline's images of `captions`, float32 on the CPU, drawn in chunks of `batch_size`; chunk [start,
    start + batch_size) with seed `seed + start`, so that prompt i's noise is seeded by `seed + i` whatever the
    batch size."""
    chunks = []
    for start in range(0, len(captions), batch_size):
        chunks.append(pipe.sample(captions[start:start + batch_size], seed=seed + start, **options).float().cpu())
    return torch.cat(chunks)


def concept_accuracy(pipe: Pipeline, *, concept: str = "cyan", word: str | None = None, prompts: int = 200,
                     seed: int = 1234, steps: int = 50, guidance: float = 4.0, sampler: str = "ddim",
                     batch_size: int = 100, round_trip: bool = True, callback=None, **sampler_options) -> dict:
    """Accuracy per attribute and for whole prompts over `prompts` one-object prompts of `concept` (named
    `word` in the prompts, default the concept's name), like `prompt_adherence`'s report, plus `kind`
    ("colour" or "shape"), `read` and, with `round_trip`, `vae_round_trip` (module docstring)."""
    data = ConceptDataset(concept=concept, seed=seed, split="test", image_size=pipe.image_size, word=word)
    examples = [data.example(i) for i in range(prompts)]
    scenes = [scene for scene, _ in examples]
    images = _draw(pipe, [c for _, c in examples], seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
                   sampler=sampler, callback=callback, **sampler_options)
    reading = read_concept(scenes, images, concept)
    passed = reading.pop("passed")
    report = {
        "concept": concept, "kind": concept_kind(concept), "word": data.word, "prompts": prompts, "objects": 1,
        "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
        **{k: v for k, v in sampler_options.items() if v is not None}, **reading,
        "failures": [caption for (_, caption), ok in zip(examples, passed) if not ok][:20],
    }
    if round_trip:
        report["vae_round_trip"] = read_concept(scenes, autoencoder_round_trip(pipe, data, prompts, batch_size),
                                                concept)["accuracy"]
    return report


def pair_accuracy(pipe: Pipeline, *, colour: str, shape: str, words: dict[str, str] | None = None,
                  prompts: int = 200, seed: int = 1234, steps: int = 50, guidance: float = 4.0, sampler: str = "ddim",
                  batch_size: int = 100, callback=None, **sampler_options) -> dict:
    """Accuracy per attribute and for whole prompts over `prompts` one-object prompts of a new colour and a new
    shape at once ("a pink star", data/concept.py `ConceptPairDataset`; `words` names them, default their names),
    judged with the palette plus the colour and the shapes plus the shape; `read` says which colour and which
    shape were drawn (fractions), `failures` the first 20 prompts not right on every attribute."""
    data = ConceptPairDataset(colour=colour, shape=shape, seed=seed, split="test", image_size=pipe.image_size,
                              words=words)
    examples = [data.example(i) for i in range(prompts)]
    images = _draw(pipe, [c for _, c in examples], seed=seed, batch_size=batch_size, steps=steps, guidance=guidance,
                   sampler=sampler, callback=callback, **sampler_options)
    reading = read_concepts([scene for scene, _ in examples], images, [colour, shape])
    passed = reading.pop("passed")
    return {
        "colour": colour, "shape": shape, "words": data.words, "prompts": prompts, "steps": steps,
        "guidance": guidance, "sampler": sampler, "seed": seed,
        **{k: v for k, v in sampler_options.items() if v is not None}, **reading,
        "failures": [caption for (_, caption), ok in zip(examples, passed) if not ok][:20],
    }


@torch.no_grad()
def autoencoder_round_trip(pipe: Pipeline, data: ConceptDataset, count: int, batch_size: int = 100) -> torch.Tensor:
    """Ground-truth images 0 .. count - 1 of `data`, encoded to the posterior mean and decoded by `pipe.vae`."""
    out = []
    for start in range(0, count, batch_size):
        images = data.batch(start, min(batch_size, count - start))[0].to(pipe.device, pipe.dtype)
        out.append(pipe.vae.decode(pipe.vae.encode(images, sample=False)).float().cpu())
    return torch.cat(out)
