"""A contrastive image-text encoder (Radford et al. 2021, "CLIP"), trained in the project: DALL-E 2's image and
text embeddings (Ramesh et al. 2022), and a text-image similarity for any model and prompt set.

Two towers map an image and a caption into one space of unit vectors:

    i = W_i f(image) / |.|,    t = W_t g(caption) / |.|,    logits = exp(s) i t^T,

f the vision transformer's [CLS] state (models/vit.py), g the text encoder's state at the caption's last real
token ([EOS]: it has attended to the whole caption), W_i and W_t linear projections, s a learned log scale
(1 / temperature, CLIP's initial temperature 0.07, capped at 100 as CLIP caps it). Training
(training/contrastive.py) pulls each image towards its caption and away from the batch's other captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .text_encoder import TextEncoder, TextEncoderConfig
from .vit import ViT, ViTConfig

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap on exp(s)


@dataclass
class ContrastiveConfig:
    image: ViTConfig = field(default_factory=ViTConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    embed_dim: int = 128  # the shared space's width
    temperature: float = 0.07  # the initial temperature; learned from there

    def __post_init__(self):
        if isinstance(self.image, dict):
            self.image = ViTConfig(**self.image)
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"temperature must be in (0, 1], got {self.temperature}")


class ContrastiveEncoder(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] and token ids and mask (B, L) -> unit embeddings (B, embed_dim)."""

    def __init__(self, config: ContrastiveConfig):
        super().__init__()
        self.config = c = config
        self.image_encoder = ViT(c.image)
        self.text_encoder = TextEncoder(c.text)
        self.image_projection = nn.Linear(c.image.width, c.embed_dim, bias=False)
        self.text_projection = nn.Linear(c.text.width, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.temperature)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = self.text_encoder(ids, mask)  # (B, L, width)
        last = mask.long().sum(dim=1) - 1  # each caption's [EOS]
        pooled = states[torch.arange(len(ids), device=ids.device), last]
        return F.normalize(self.text_projection(pooled), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(s), the inverse temperature, capped."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The logits exp(s) i t^T (B_images, B_captions)."""
        return self.scale() * self.encode_image(images) @ self.encode_text(ids, mask).T
