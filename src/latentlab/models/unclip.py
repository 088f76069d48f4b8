"""DALL-E 2's decoder (Ramesh et al. 2022, sec. 2.1): the latent U-Net conditioned on an image embedding.

unCLIP's decoder is GLIDE's text-conditional U-Net with the contrastive model's image embedding z_i added twice:
projected into the timestep embedding that every residual block reads, and projected into `tokens` extra
context tokens beside the caption's, which cross-attention reads:

    emb     = time(t) [+ pooled text] + W_e z
    context = [text states ; reshape(W_c z, (tokens, context_dim))],    z = sqrt(E) z_i

z_i the unit image embedding, scaled to unit variance per component.

The U-Net is the project's own (models/unet.py), unchanged; the image-embedding path is this module's
`ImageConditioning`. A dropped embedding (classifier-free guidance) is the zero vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .unet import UNet


@dataclass
class ImageConditioningConfig:
    embed_dim: int = 128  # E: the image embedding's width (the contrastive model's shared space)
    time_dim: int = 256  # the U-Net's timestep embedding width (4 x its first level's)
    context_dim: int = 192  # the U-Net's context width (the text encoder's)
    tokens: int = 4  # extra context tokens made from the embedding (DALL-E 2: four)

    def __post_init__(self):
        for name in ("embed_dim", "time_dim", "context_dim", "tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def for_unet(cls, unet: UNet, embed_dim: int, **options) -> "ImageConditioningConfig":
        c = unet.config
        return cls(embed_dim=embed_dim, time_dim=4 * c.channels[0], context_dim=c.context_dim, **options)


class ImageConditioning(nn.Module):
    """z_i (B, E) -> (W_e z_i (B, time_dim), the extra context tokens (B, tokens, context_dim)).

    W_e starts at zero, so a decoder made from a text model starts as that model in its timestep path."""

    def __init__(self, config: ImageConditioningConfig):
        super().__init__()
        self.config = c = config
        self.to_time = nn.Linear(c.embed_dim, c.time_dim)
        self.to_tokens = nn.Linear(c.embed_dim, c.tokens * c.context_dim)
        nn.init.zeros_(self.to_time.weight), nn.init.zeros_(self.to_time.bias)

    def forward(self, z_i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        z = z_i * math.sqrt(c.embed_dim)
        return self.to_time(z), self.to_tokens(z).view(len(z), c.tokens, c.context_dim)


class UnCLIPDecoder(nn.Module):
    """eps_theta(x_t, t, context, mask, image_embed) -> eps: the U-Net, read by the image embedding too."""

    def __init__(self, unet: UNet, conditioning: ImageConditioning):
        super().__init__()
        if conditioning.config.time_dim != 4 * unet.config.channels[0] or \
                conditioning.config.context_dim != unet.config.context_dim:
            raise ValueError(f"image conditioning of time width {conditioning.config.time_dim} and context width "
                             f"{conditioning.config.context_dim} does not fit a U-Net of time width "
                             f"{4 * unet.config.channels[0]} and context width {unet.config.context_dim}")
        self.unet, self.conditioning = unet, conditioning

    @property
    def config(self):
        """The U-Net's config: channels in and out, as a text U-Net's."""
        return self.unet.config

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None,
                image_embed: torch.Tensor | None = None) -> torch.Tensor:
        if image_embed is None:
            raise ValueError("the unCLIP decoder needs image_embed (B, E); a dropped one is zeros")
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        to_time, tokens = self.conditioning(image_embed.to(x.dtype))
        emb = self.unet.embed(t, context, mask, x.dtype) + to_time
        context = torch.cat([context, tokens.to(context.dtype)], dim=1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, tokens.shape[1])], dim=1)
        return self.unet.traverse(x, emb, context, mask, self.unet._layer)
