"""Convolutional building blocks shared by the U-Net and the autoencoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_widths(channels: tuple) -> None:
    """Per-level widths of a config: a non-empty list of positive integers."""
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(f"channels must be a list of positive integers, got {channels!r}")


def group_norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide the channels, up to `groups`."""
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=eps)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps to (B, dim) (Vaswani et al. 2017; Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


TIME_CONDITIONING = ("scale_shift", "additive")


class ResBlock(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions.

    With an embedding (timestep, pooled text) it conditions the block in one of two ways:
    "scale_shift" modulates the second normalisation, h = norm(h) * (1 + scale) + shift (adaptive
    group norm, Dhariwal & Nichol 2021); "additive" adds a projection of it before that norm
    (Ho et al. 2020; Stable Diffusion).
    """

    def __init__(self, in_channels: int, out_channels: int, *, embed_dim: int | None = None, groups: int = 32,
                 dropout: float = 0.0, eps: float = 1e-6, time_conditioning: str = "scale_shift"):
        super().__init__()
        if time_conditioning not in TIME_CONDITIONING:
            raise ValueError(f"unknown time_conditioning {time_conditioning!r}; accepted: {', '.join(TIME_CONDITIONING)}")
        self.scale_shift = time_conditioning == "scale_shift"
        self.norm1 = group_norm(in_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        projected = 2 * out_channels if self.scale_shift else out_channels
        self.time_emb_proj = nn.Linear(embed_dim, projected) if embed_dim else None
        self.norm2 = group_norm(out_channels, groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embedding(emb)
        h = self.conv1(F.silu(self.norm1(x)))
        if e is None:
            h = F.silu(self.norm2(h))
        elif self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (1 + scale) + shift)
        else:
            h = F.silu(self.norm2(h + e))
        h = self.conv2(self.dropout(h))
        return self.conv_shortcut(x) + h

    def embedding(self, emb: torch.Tensor | None) -> torch.Tensor | None:
        """The embedding projected to this block's conditioning, (B, C or 2C, 1, 1); None without one."""
        return None if self.time_emb_proj is None else self.time_emb_proj(F.silu(emb))[:, :, None, None]


class TimestepEmbedding(nn.Module):
    """The MLP over the sinusoidal timestep features: linear, SiLU, linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution, padded by 1 on every side ("symmetric") or
    only on the right and below ("asymmetric", Stable Diffusion's autoencoder)."""

    def __init__(self, channels: int, padding: str = "symmetric"):
        super().__init__()
        self.asymmetric = padding == "asymmetric"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
