"""How well a contrastive image-text model (contrastive_model.py) knows its worlds: zero-shot classification and
retrieval, as Radford et al. (2021) measure CLIP.

- `zero_shot_attributes`: fresh single-object images of the shapes world (test split); for each attribute
  (colour, shape, size, position) the candidates are the image's canonical caption with that attribute set to
  each of its values ("a small red circle on the left", "a small blue circle on the left", ...); right when
  the true caption is the most similar.
- `zero_shot_classes`: Fashion-MNIST's test images against the ten class prompts ("a photo of a T-shirt").
- `retrieval`: recall@k both ways over a set of image-caption pairs: an image's top k captions hold its own
  (by text: a copy of the caption counts), and a caption's top k images hold one of its own.
"""

from __future__ import annotations

import dataclasses

import torch

from ..contrastive_model import ContrastiveModel
from ..data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesDataset, caption

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES), "position": tuple(POSITIONS)}


def zero_shot_attributes(model: ContrastiveModel, *, images: int = 500, seed: int = 0) -> dict[str, float]:
    """The share of images whose every attribute is read right, attribute by attribute (and "all")."""
    data = ShapesDataset(seed=seed, split="test", p_two=0.0, image_size=model.image_size)
    pixels, _, scenes = data.batch(0, images)
    embedded = model.encode_images(pixels)  # (N, E)
    right = {}
    for attribute, values in ATTRIBUTES.items():
        prompts = [caption(dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], **{attribute: v}),)))
                   for scene in scenes for v in values]  # N * len(values), each image's candidates together
        candidates = model.encode_prompts(prompts).view(images, len(values), -1)
        chosen = torch.einsum("ne,nve->nv", embedded, candidates).argmax(dim=1)
        truth = torch.tensor([values.index(getattr(scene.objects[0], attribute)) for scene in scenes])
        right[attribute] = chosen == truth
    return {**{k: v.float().mean().item() for k, v in right.items()},
            "all": torch.stack(list(right.values())).all(dim=0).float().mean().item(), "images": images}


def zero_shot_classes(model: ContrastiveModel, data, prompts: list[str], *, images: int | None = None) -> dict:
    """The share of a labelled set's images (labels 0 .. len(prompts) - 1) nearest their class's prompt."""
    n = min(images or len(data), len(data))
    pixels, _, labels = data.batch(0, n)
    if pixels.shape[-1] != model.image_size:
        raise ValueError(f"images of {pixels.shape[-1]} pixels for a model of {model.image_size}")
    chosen = (model.encode_images(pixels) @ model.encode_prompts(prompts).T).argmax(dim=1)
    per_class = [(chosen[torch.tensor(labels) == k] == k).float().mean().item() for k in range(len(prompts))]
    return {"accuracy": (chosen == torch.tensor(labels)).float().mean().item(), "per_class": per_class, "images": n}


def retrieval(model: ContrastiveModel, images: torch.Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)) -> dict:
    """Recall@k, image -> text and text -> image, over the pairs (images[i], captions[i])."""
    similarity = model.encode_images(images) @ model.encode_prompts(captions).T  # (N, N)
    index = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions])
    same = ids[:, None] == ids[None, :]  # caption j is image i's own
    out = {"pairs": len(captions), "distinct_captions": len(index)}
    for k in ks:
        top_texts = similarity.topk(min(k, len(captions)), dim=1).indices  # each image's k captions
        top_images = similarity.T.topk(min(k, len(captions)), dim=1).indices  # each caption's k images
        out[f"image_to_text_r@{k}"] = same.gather(1, top_texts).any(dim=1).float().mean().item()
        out[f"text_to_image_r@{k}"] = same.gather(1, top_images).any(dim=1).float().mean().item()
    return out
