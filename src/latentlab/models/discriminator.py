"""The patch discriminator of the autoencoder's adversarial loss (pix2pix's PatchGAN, Isola et al. 2017, as
latent diffusion's autoencoder uses it, Esser et al. 2021; Rombach et al. 2022).

It maps an image (B, C, H, W) to a grid of logits (B, 1, h, w), one per overlapping patch: "is this patch
real?". With `layers` = n the receptive field of a logit is 16, 34, 70 pixels for n = 1, 2, 3 (then
142, ...); on 32x32 images the default n = 3 sees the whole image in each of its 2x2 logits.

Normalisation is GroupNorm, not pix2pix's BatchNorm. BatchNorm couples the examples of a batch, so the
discriminator could tell a batch of reconstructions from a batch of real images by their statistics
rather than by each image; it behaves differently in training and evaluation (running statistics);
and under several processes each normalises by its own shard unless it is synchronised, so a run's
result would depend on how many processes ran it. GroupNorm normalises each example by itself: none
of this arises, and real and reconstructed images can go through in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import group_norm


@dataclass
class PatchDiscriminatorConfig:
    in_channels: int = 3
    channels: int = 64  # width of the first convolution; doubled at each later one, up to 8x
    layers: int = 3  # stride-2 convolutions (the first without normalisation); pix2pix's n_layers
    groups: int = 32  # GroupNorm groups (as many as divide the width, up to this)

    def __post_init__(self):
        if self.layers < 1 or self.channels < 1 or self.in_channels < 1:
            raise ValueError(f"in_channels, channels and layers must be positive, got {self}")


MAX_MULTIPLIER = 8  # the width stops doubling at 8 x channels


def conv_block(c_in: int, c_out: int, stride: int, groups: int) -> nn.Sequential:
    """4x4 convolution (bias-free: the norm's shift replaces it), GroupNorm, LeakyReLU(0.2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride, padding=1, bias=False), group_norm(c_out, groups),
                         nn.LeakyReLU(0.2))


class PatchDiscriminator(nn.Module):
    """Image (B, C, H, W) -> patch logits (B, 1, H / 2^layers - 2, W / 2^layers - 2)."""

    def __init__(self, config: PatchDiscriminatorConfig):
        super().__init__()
        self.config = c = config
        widths = [c.channels * min(2**i, MAX_MULTIPLIER) for i in range(c.layers + 1)]
        # stride 2, no normalisation: H -> H / 2
        self.conv_in = nn.Sequential(nn.Conv2d(c.in_channels, widths[0], 4, 2, padding=1), nn.LeakyReLU(0.2))
        # layers - 1 blocks of stride 2 (H / 2 -> H / 2^layers), then one of stride 1 (-> H / 2^layers - 1)
        blocks = [conv_block(widths[i - 1], widths[i], 2, c.groups) for i in range(1, c.layers)]
        blocks.append(conv_block(widths[-2], widths[-1], 1, c.groups))
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = nn.Conv2d(widths[-1], 1, 4, 1, padding=1)  # one logit per patch: -> H / 2^layers - 2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolution weights ~ N(0, 0.02) (DCGAN's, as pix2pix), biases 0; GroupNorm scale 1, shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.blocks(self.conv_in(x)))
