"""DALL-E 2's diffusion prior (Ramesh et al. 2022, sec. 2.1): a caption's contrastive text states to an image
embedding, by diffusion over the embedding.

A transformer reads one sequence: the caption's token states from the contrastive model's text tower
(projected to the width; the text embedding is their [EOS] state, projected, so it is among them), an embedding
of the timestep t, the noised image embedding z_t, and a learned query token; the query's final state,
projected, is the prediction of the clean embedding z_0 (unCLIP predicts z_0 directly rather than the noise).
The diffusion maths is the image models' (diffusion/), over vectors (B, E) instead of latents.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import timestep_embedding
from .text_encoder import EncoderBlock


@dataclass
class PriorConfig:
    embed_dim: int = 128  # E: the image embedding's width (the contrastive model's shared space)
    context_dim: int = 192  # the text tower's width
    width: int = 256
    layers: int = 4
    head_dim: int = 64

    def __post_init__(self):
        for name in ("embed_dim", "context_dim", "width", "layers", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} is not a multiple of head_dim {self.head_dim}")


class DiffusionPrior(nn.Module):
    """(z_t (B, E), t (B,), text states (B, L, context_dim), mask (B, L)) -> predicted z_0 (B, E)."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = c = config
        self.text_in = nn.Linear(c.context_dim, c.width)
        self.time_in = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.z_in = nn.Linear(c.embed_dim, c.width)
        self.query = nn.Parameter(torch.zeros(c.width))
        self.slots = nn.Parameter(torch.randn(3, c.width) * 0.02)  # tells the time, z_t and query tokens apart
        self.blocks = nn.ModuleList(EncoderBlock(c.width, c.head_dim) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.embed_dim)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B = z_t.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        time = self.time_in(timestep_embedding(t, self.config.width).to(z_t.dtype))
        tail = torch.stack([time, self.z_in(z_t), self.query.expand(B, -1)], dim=1) + self.slots  # (B, 3, W)
        x = torch.cat([self.text_in(context), tail], dim=1)
        if mask is not None:
            mask = torch.cat([mask.bool(), mask.new_ones(B, 3, dtype=torch.bool)], dim=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.out(self.norm(x[:, -1]))
