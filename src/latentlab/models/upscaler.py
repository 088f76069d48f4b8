"""A diffusion super-resolution network (Saharia et al. 2022, SR3; Stable Diffusion's x4 upscaler).

The U-Net (models/unet.py, unchanged) denoises the high-resolution image x_t and reads the low-resolution image
y, upsampled to x's size, concatenated with it along the channels. The low-resolution image is itself noised
to level s by the forward process before it is read, and s is told to the network ("noise conditioning
augmentation", Ho et al. 2022, Cascaded Diffusion Models): trained over a range of s, the upscaler learns not to
trust every pixel of y, so the artefacts of a generated image do not come out sharpened. s enters as SD's x4
upscaler's `class_labels` do, a sinusoid and an MLP added to the timestep embedding:

    y_s = sqrt(abar_s) up(y) + sqrt(1 - abar_s) e,    e ~ N(0, I)
    emb = time(t) + level(s)
    out = U-Net([x_t ; y_s], emb)

The upscaler reads no text: the low-resolution image fixes what is drawn. The U-Net's cross-attention (its
middle always has a transformer) reads a single zero token, which it turns into a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import TimestepEmbedding, timestep_embedding
from .unet import UNet


@dataclass
class NoiseLevelConfig:
    width: int = 64  # the sinusoid's width (the U-Net's first level's, as for the timestep)
    embed_dim: int = 256  # the U-Net's timestep embedding width (4 x its first level's)

    def __post_init__(self):
        for name in ("width", "embed_dim"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be at least 2, got {getattr(self, name)}")

    @classmethod
    def for_unet(cls, unet: UNet) -> "NoiseLevelConfig":
        width = unet.config.channels[0]
        return cls(width=width, embed_dim=4 * width)


class NoiseLevelEmbedding(nn.Module):
    """s (B,) -> level(s) (B, embed_dim): the augmentation's noise level, as the timestep is embedded."""

    def __init__(self, config: NoiseLevelConfig):
        super().__init__()
        self.config = config
        self.mlp = TimestepEmbedding(config.width, config.embed_dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(s, self.config.width))


class Upscaler(nn.Module):
    """eps_theta(x_t, t | y_s, s): the U-Net on [x_t ; y_s] with level(s) added to its timestep embedding."""

    def __init__(self, unet: UNet, level: NoiseLevelEmbedding):
        super().__init__()
        if unet.config.in_channels % 2 or unet.config.out_channels * 2 != unet.config.in_channels:
            raise ValueError(f"an upscaler's U-Net reads the image and the low-resolution image, twice the channels it "
                             f"predicts; got {unet.config.in_channels} in and {unet.config.out_channels} out")
        if unet.config.pooled_text:
            raise ValueError("an upscaler reads no text: its U-Net's pooled_text must be off")
        self.unet, self.level = unet, level

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y_s: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        B = x_t.shape[0]
        t, s = (v.expand(B) if v.dim() == 0 else v for v in (t, s))
        context = x_t.new_zeros(B, 1, self.unet.config.context_dim)
        emb = self.unet.embed(t, context, None, x_t.dtype) + self.level(s).to(x_t.dtype)
        return self.unet.traverse(torch.cat([x_t, y_s.to(x_t.dtype)], dim=1), emb, context, None, self.unet._layer)
