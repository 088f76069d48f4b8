"""The KL-regularised autoencoder of latent diffusion (Kingma & Welling 2014; Rombach et al. 2022).

The encoder maps an image (B, 3, H, W) in [-1, 1] to a diagonal Gaussian over latents
(B, latent_channels, H / 2^(levels-1), W / 2^(levels-1)); the decoder maps latents back. The latent
scale factor (1 / std of the training latents, measured after training) is owned here: `encode`
returns scaled latents with about unit variance, and `decode` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .blocks import Downsample, ResBlock, Upsample, check_widths, group_norm


@dataclass
class VAEConfig:
    image_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 128)  # width of each level; one downsampling between levels
    blocks_per_level: int = 1
    groups: int = 32
    scale_factor: float = 1.0  # multiplies latents after encoding; set from the data after training

    def __post_init__(self):
        self.channels = tuple(self.channels)
        check_widths(self.channels)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)


class MidBlock(nn.Module):
    """Residual block, self-attention over pixels, residual block."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.res1 = ResBlock(channels, channels, groups=groups)
        self.norm = group_norm(channels, groups)
        self.attn = Attention(channels, head_dim=channels)
        self.res2 = ResBlock(channels, channels, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x)
        B, C, H, W = x.shape
        h = self.attn(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        return self.res2(x + h.transpose(1, 2).view(B, C, H, W))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.image_channels, c.channels[0], 3, padding=1)
        layers, ch = [], c.channels[0]
        for i, width in enumerate(c.channels):
            for _ in range(c.blocks_per_level):
                layers.append(ResBlock(ch, width, groups=c.groups))
                ch = width
            if i < len(c.channels) - 1:
                layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(ch, c.groups)
        self.norm_out = group_norm(ch, c.groups)
        self.conv_out = nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.channels[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid = MidBlock(ch, c.groups)
        layers = []
        for i, width in reversed(list(enumerate(c.channels))):
            for _ in range(c.blocks_per_level + 1):
                layers.append(ResBlock(ch, width, groups=c.groups))
                ch = width
            if i > 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(ch, c.groups)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, exp(logvar)), unscaled latent units."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + (0.5 * self.logvar).exp() * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over latent elements."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) in unscaled latent units."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def encode(self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents, a sample of q(z | x) (or its mean)."""
        q = self.posterior(x)
        z = q.sample(generator) if sample else q.mean
        return z * self.config.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in about [-1, 1]."""
        return self.decoder(z / self.config.scale_factor)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction and posterior, for training (unscaled latents)."""
        q = self.posterior(x)
        return self.decoder(q.sample(generator)), q
