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

from .blocks import Downsample, ResBlock, Upsample, check_widths, group_norm


@dataclass
class VAEConfig:
    image_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (64, 128, 128)  # width of each level; one downsampling between levels
    blocks_per_level: int = 1
    groups: int = 32
    scale_factor: float = 1.0  # multiplies latents after encoding; set from the data after training
    quant_conv: bool = False  # 1x1 convolutions on the latent moments and before decoding (Stable Diffusion's)
    downsample_padding: str = "symmetric"  # symmetric: 1 on every side; asymmetric: 1 right and below (SD's)
    attention_bias: bool = False  # biases on the mid-block attention's q, k, v (SD's)

    def __post_init__(self):
        self.channels = tuple(self.channels)
        check_widths(self.channels)
        for name in ("image_channels", "latent_channels", "blocks_per_level", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.scale_factor < float("inf"):
            raise ValueError(f"scale_factor must be a positive number, got {self.scale_factor}")
        if self.downsample_padding not in PADDINGS:
            raise ValueError(f"unknown downsample_padding {self.downsample_padding!r}; accepted: {', '.join(PADDINGS)}")

    @classmethod
    def stable_diffusion_1(cls) -> "VAEConfig":
        """Stable Diffusion 1.x's autoencoder (83.7M parameters; 512x512x3 to 64x64x4)."""
        return cls(channels=(128, 256, 512, 512), blocks_per_level=2, scale_factor=0.18215, quant_conv=True,
                   downsample_padding="asymmetric", attention_bias=True)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)


PADDINGS = ("symmetric", "asymmetric")


class SelfAttention2d(nn.Module):
    """x + attention over the pixels of norm(x), one head as wide as the channels."""

    def __init__(self, channels: int, groups: int, bias: bool):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels, bias=bias) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(h)[:, None] for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.to_out[0](h).transpose(1, 2).reshape(B, C, H, W)


class MidBlock(nn.Module):
    """Residual block, self-attention over pixels, residual block."""

    def __init__(self, channels: int, c: VAEConfig):
        super().__init__()
        first = ResBlock(channels, channels, groups=c.groups)  # built in the order they run (and initialise)
        attention = SelfAttention2d(channels, c.groups, c.attention_bias)
        self.resnets = nn.ModuleList([first, ResBlock(channels, channels, groups=c.groups)])
        self.attentions = nn.ModuleList([attention])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class EncoderLevel(nn.Module):
    def __init__(self, resnets: list[ResBlock], downsample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = nn.ModuleList([downsample]) if downsample is not None else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class DecoderLevel(nn.Module):
    def __init__(self, resnets: list[ResBlock], upsample: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([upsample]) if upsample is not None else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """Image -> the latent Gaussian's moments (mean and log-variance concatenated on channels)."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.image_channels, c.channels[0], 3, padding=1)
        self.down_blocks, ch = nn.ModuleList(), c.channels[0]
        for i, width in enumerate(c.channels):
            resnets = []
            for _ in range(c.blocks_per_level):
                resnets.append(ResBlock(ch, width, groups=c.groups))
                ch = width
            last = i == len(c.channels) - 1
            self.down_blocks.append(EncoderLevel(resnets, None if last else Downsample(ch, c.downsample_padding)))
        self.mid_block = MidBlock(ch, c)
        self.conv_norm_out = group_norm(ch, c.groups)
        self.conv_out = nn.Conv2d(ch, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    """Latent -> image; its levels run from the coarsest to the finest."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        ch = c.channels[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid_block = MidBlock(ch, c)
        self.up_blocks = nn.ModuleList()
        for i, width in reversed(list(enumerate(c.channels))):
            resnets = []
            for _ in range(c.blocks_per_level + 1):
                resnets.append(ResBlock(ch, width, groups=c.groups))
                ch = width
            self.up_blocks.append(DecoderLevel(resnets, Upsample(ch) if i > 0 else None))
        self.conv_norm_out = group_norm(ch, c.groups)
        self.conv_out = nn.Conv2d(ch, c.image_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


@dataclass
class DiagonalGaussian:
    """q(z | x) = N(mean, exp(logvar)), unscaled latent units."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """mean + std * noise, with `noise` ~ N(0, I) drawn from `generator` unless given."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + (0.5 * self.logvar).exp() * noise.to(self.mean.dtype)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per example, summed over latent elements."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments, latent = 2 * config.latent_channels, config.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, 1) if config.quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.quant_conv else None

    def posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z | x) in unscaled latent units."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def reconstruct(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images."""
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))

    def encode(self, x: torch.Tensor, *, sample: bool = True, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents, a sample of q(z | x) (with the given standard
        normal `noise`, or drawn from `generator`), or its mean."""
        q = self.posterior(x)
        z = q.sample(generator, noise) if sample else q.mean
        return z * self.config.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in about [-1, 1]."""
        return self.reconstruct(z / self.config.scale_factor)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Reconstruction and posterior, for training (unscaled latents)."""
        q = self.posterior(x)
        return self.reconstruct(q.sample(generator)), q
