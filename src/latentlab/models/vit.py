"""A vision transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"): the image tower of the
contrastive image-text encoder (models/contrastive.py).

The image is cut into P x P patches, each projected to the width (a convolution of kernel and stride P); a
learned [CLS] token goes first, learned position embeddings are added, pre-norm transformer blocks follow
(the text encoder's), and the [CLS] token's final state, normalised, is the image's representation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .text_encoder import EncoderBlock


@dataclass
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    width: int = 192
    layers: int = 4
    head_dim: int = 64

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "width", "layers", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} is not a multiple of head_dim {self.head_dim}")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """Images (B, C, H, W) in [-1, 1] -> (B, width): the [CLS] token's state after the transformer."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        self.patch_embedding = nn.Conv2d(c.channels, c.width, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(c.width))
        self.position_embedding = nn.Parameter(torch.randn(1 + c.patches, c.width) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(c.width, c.head_dim) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels; this image encoder takes "
                             f"{size}x{size}")
        patches = self.patch_embedding(images).flatten(2).transpose(1, 2)  # (B, N, width)
        cls = self.cls_token.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.position_embedding
        for block in self.blocks:
            x = block(x, mask=None)
        return self.norm(x[:, 0])
