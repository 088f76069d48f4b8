"""How well a contrastive image-text model (contrastive_model.py) knows its worlds: zero-shot classification and
retrieval, as Radford et al. (2021) measure CLIP.

- `zero_shot_attributes`: fresh single-object images of the shapes world (test split); for each attribute
  (colour, shape, size, position) the candidates are the image's canonical caption with that attribute set to
  each of its values ("a small red circle on the left", "a small blue circle on the left", ...); right when
  the true caption is the most similar.
- `zero_shot_classes`: Fashion-MNIST's test images against the ten class prompts ("a photo of a T-shirt").
- `retrieval`: recall@k both ways over a set of image-caption pairs: an image's top k captions hold its own
  (by text: a copy of the caption counts; or by what the caption says: another wording of the scene counts),
  and a caption's top k images hold one of its own.
- `clip_score_adherence`: the model as a metric of a text-to-image model (the CLIP score, Hessel et al. 2021:
  100 times the cosine of an image with its prompt), beside the shapes judge on the same images, and how well
  the score tells the judge's right images from its wrong ones (the ROC curve's area, `auc`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..contrastive_model import ContrastiveModel
from ..data.judge import judge, score
from ..data.shapes import COLOURS, POSITIONS, SHAPES, SIZES, ShapesDataset, caption
from ..pipeline import Pipeline
from .adherence import draw, prompt_examples

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


def equal_pairs(keys: list) -> torch.Tensor:
    """(N, N) booleans: whether keys i and j are equal (one hashable key per item: a caption, a scene's)."""
    index = {key: k for k, key in enumerate(dict.fromkeys(keys))}
    ids = torch.tensor([index[key] for key in keys])
    return ids[:, None] == ids[None, :]


def retrieval(model: ContrastiveModel, images: torch.Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5),
              keys: list | None = None) -> dict:
    """Recall@k, image -> text and text -> image, over the pairs (images[i], captions[i]). A hit is a caption
    equal to the image's own, or with `keys` (one per pair: what a caption says, such as the scene's canonical
    caption) one whose key equals its own: another wording of the same scene counts."""
    similarity = model.encode_images(images) @ model.encode_prompts(captions).T  # (N, N)
    keys = captions if keys is None else keys
    same = equal_pairs(keys)  # caption j is image i's own
    out = {"pairs": len(captions), "distinct": len(set(keys))}
    for k in ks:
        top_texts = similarity.topk(min(k, len(captions)), dim=1).indices  # each image's k captions
        top_images = similarity.T.topk(min(k, len(captions)), dim=1).indices  # each caption's k images
        out[f"image_to_text_r@{k}"] = same.gather(1, top_texts).any(dim=1).float().mean().item()
        out[f"text_to_image_r@{k}"] = same.gather(1, top_images).any(dim=1).float().mean().item()
    return out


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """The chance that a positive scores above a negative, ties counting half (the area under the ROC curve);
    None without both positives and negatives."""
    pos, neg = scores[positive.bool()], scores[~positive.bool()]
    if not len(pos) or not len(neg):
        return None
    above = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    return above.mean().item()


def clip_score_adherence(pipe: Pipeline, model: ContrastiveModel, *, prompts: int = 200, split: str = "test",
                         objects: int = 1, seed: int = 1234, batch_size: int = 100, paraphrase: str | None = None,
                         **sampling) -> dict:
    """`prompt_adherence`'s prompts and images (the same seeds), scored by the model and by the judge: the mean
    CLIP score, the judge's whole-prompt accuracy, and the AUC of the score against the judge's verdict."""
    if pipe.image_size != model.image_size:
        raise ValueError(f"the contrastive model takes {model.image_size}x{model.image_size} images; this model "
                         f"draws {pipe.image_size}x{pipe.image_size}")
    examples = prompt_examples(pipe, prompts=prompts, split=split, objects=objects, seed=seed, paraphrase=paraphrase)
    captions = [c for _, c in examples]
    images = draw(pipe, captions, seed=seed, batch_size=batch_size, **sampling)
    scores = model.similarity(images, captions)
    right = torch.tensor([score(scene, judge(image))["all"] for (scene, _), image in zip(examples, images)])
    return {"prompts": prompts, "split": split, "objects": objects, "paraphrase": paraphrase, "seed": seed,
            "clip_score": 100 * scores.mean().item(), "judge_all": right.float().mean().item(),
            "clip_score_right": 100 * scores[right].mean().item() if right.any() else None,
            "clip_score_wrong": 100 * scores[~right].mean().item() if not right.all() else None,
            "auc": auc(scores, right), **{k: v for k, v in sampling.items() if v is not None}}
