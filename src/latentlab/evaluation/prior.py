"""How close DALL-E 2's prior (prior_model.py) lands to the image embeddings of the images a caption describes,
against the two answers without a prior (Ramesh et al. 2022, sec. 5.1, compare the prior with feeding the text
embedding itself): the caption's text embedding, and a plain regression from text embedding to image embedding
(ridge, fitted in closed form on training pairs).

For fresh captions of a split: the cosine of each answer with the true image's embedding (the image the caption
was rendered from), and how often the answer's nearest image among the split's is one of the same scene.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.shapes import ShapesDataset, caption
from ..prior_model import PriorModel
from .contrastive import equal_pairs


def ridge(x: torch.Tensor, y: torch.Tensor, penalty: float = 1e-3) -> torch.Tensor:
    """W minimising |x W - y|^2 + penalty |W|^2 (with a bias column on x): (E + 1, E)."""
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    return torch.linalg.solve(x.T @ x + penalty * len(x) * eye, x.T @ y.double()).float()


def regressed(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([x, torch.ones(len(x), 1)], dim=1) @ w, dim=-1)


def fit_regression(model: PriorModel, fit: int = 5_000) -> torch.Tensor:
    """The ridge regression from text to image embedding, fitted on `fit` training pairs of the shapes world."""
    clip = model.clip
    images, captions, _ = ShapesDataset(seed=1, split="train", image_size=clip.image_size).batch(0, fit)
    return ridge(clip.encode_prompts(captions), clip.encode_images(images))


def prior_accuracy(model: PriorModel, *, prompts: int = 500, split: str = "test", seed: int = 1234, steps: int = 50,
                   guidance: float = 2.0, fit: int = 5_000, batch_size: int = 250,
                   regression: torch.Tensor | None = None) -> dict:
    """The figures of the module's doc; `regression` (`fit_regression(model, fit)`) fitted here when None."""
    clip = model.clip
    data = ShapesDataset(seed=0, split=split, image_size=clip.image_size)
    images, captions, scenes = data.batch(0, prompts)
    truth, text = clip.encode_images(images), clip.encode_prompts(captions)
    w = fit_regression(model, fit) if regression is None else regression
    answers = {"prior": torch.cat([model.sample(captions[s:s + batch_size], steps=steps, guidance=guidance,
                                                seed=seed + s) for s in range(0, prompts, batch_size)]),
               "regression": regressed(text, w), "text embedding": text}
    same = equal_pairs([caption(scene) for scene in scenes])
    out = {"prompts": prompts, "split": split, "steps": steps, "guidance": guidance, "fit": fit}
    for name, z in answers.items():
        nearest = (z @ truth.T).argmax(dim=1)
        out[name] = {"cosine": (z * truth).sum(dim=1).mean().item(),
                     "nearest_image_of_the_scene": same[torch.arange(prompts), nearest].float().mean().item()}
    return out
