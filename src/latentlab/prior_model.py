"""DALL-E 2's prior as a user holds it: the diffusion prior (models/prior.py) with the contrastive model whose
text it reads and whose image embeddings it draws.

    prior = PriorModel.load("runs/prior")
    z = prior.sample(["a small red circle on the left"], steps=50, guidance=2.0, seed=0)   # (B, E) unit vectors

The embedding is diffused at unit variance per component: z_0 = sqrt(E) * the unit image embedding. A folder
holds prior/ (config.json, model.safetensors), diffusion.json and prior.json (which contrastive model, by the
name or path it was trained with).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .contrastive_model import ContrastiveModel
from .diffusion import DiffusionConfig, classifier_free_guidance, get_sampler, make_denoiser
from .errors import CheckpointError
from .io import atomic_write, read_json
from .io.checkpoint import load_component, read_config, save_component
from .models.prior import DiffusionPrior, PriorConfig

PRIOR, DIFFUSION, INDEX = "prior", "diffusion.json", "prior.json"


def text_states(clip: ContrastiveModel, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive text tower's token states (B, L, D) and mask (B, L) for the prompts, on its device; L the
    longest prompt's tokens (the padding after it changes no real token's state: attention masks it out)."""
    ids, mask = (t.to(clip.device) for t in clip.tokenizer(list(prompts)))
    L = int(mask.sum(dim=1).max())
    ids, mask = ids[:, :L], mask[:, :L]
    with torch.no_grad():
        return clip.encoder.text_encoder(ids, mask), mask


class PriorModel:
    def __init__(self, prior: DiffusionPrior, clip: ContrastiveModel, diffusion: DiffusionConfig, clip_name: str):
        self.prior, self.clip, self.diffusion, self.clip_name = prior, clip, diffusion, clip_name

    @property
    def scale(self) -> float:
        """sqrt(E): unit embeddings times this have unit variance per component."""
        return math.sqrt(self.prior.config.embed_dim)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> "PriorModel":
        path = Path(path)
        if not (path / INDEX).is_file():
            raise CheckpointError(f"{path} is not a prior folder (no {INDEX}); train one with `latentlab train-prior`")
        clip_name = read_json(path / INDEX).get("clip")
        if not isinstance(clip_name, str):
            raise CheckpointError(f"{path / INDEX} names no contrastive model (its \"clip\" field)")
        clip = ContrastiveModel.load(clip_name, device=device)
        prior = load_component(path / PRIOR, DiffusionPrior, PriorConfig).eval().to(clip.device)
        return cls(prior, clip, read_config(path / DIFFUSION, DiffusionConfig), clip_name)

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
        """Write the prior folder; `dtype` (e.g. torch.float16) casts the stored weights."""
        path = Path(path)
        save_component(path / PRIOR, self.prior, dtype=dtype)
        atomic_write(path / DIFFUSION, json.dumps(dataclasses.asdict(self.diffusion), indent=2) + "\n")
        atomic_write(path / INDEX, json.dumps({"clip": self.clip_name}, indent=2) + "\n")

    @torch.no_grad()
    def sample(self, prompts: list[str], *, steps: int = 50, guidance: float = 2.0, seed: int = 0,
               sampler: str = "ddim") -> torch.Tensor:
        """An image embedding per prompt, (B, E) unit vectors on the CPU; prompt i's noise seeded by seed + i."""
        device = self.clip.device
        states, masks = text_states(self.clip, [*prompts, *[""] * len(prompts)])  # one length for both halves
        (context, uncond), (mask, uncond_mask) = states.chunk(2), masks.chunk(2)
        network = classifier_free_guidance(self.prior, context, mask, uncond, uncond_mask, guidance)
        E = self.prior.config.embed_dim
        z_T = torch.stack([torch.randn(E, generator=torch.Generator().manual_seed(seed + i))
                           for i in range(len(prompts))]).to(device)
        z_0 = get_sampler(sampler)(make_denoiser(network, self.diffusion.prediction), z_T,
                                   self.diffusion.alphas_cumprod().to(device), steps)
        return F.normalize(z_0.float().cpu(), dim=-1)
