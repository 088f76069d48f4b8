"""Temporal layers: what turns an image U-Net into a video one (Blattmann et al. 2023, "Align your Latents").

The image model's spatial layers see each frame alone, as a batch of B * T images. After each spatial layer
l_theta a temporal layer l_phi looks across the T frames of every pixel, and the two are mixed by a learned
factor alpha (eq. 3 of the paper):

    z' = alpha * z + (1 - alpha) * l_phi(z),      z = l_theta(...)  of shape (B * T, C, H, W).

Each temporal layer is a residual block whose last projection starts at zero, so a new one is the identity,
l_phi(z) = z, and before training the video model is exactly the image model applied frame by frame, whatever
alpha is. alpha starts at 1/2, where z' = z + (1 - alpha) (l_phi(z) - z) passes the temporal layers half their
gradient from the first step. (alpha = 1 would give the same start with random layers, but then no gradient
reaches l_phi until alpha moves, and alpha does not move while l_phi is random: trained so, alpha stayed
within 0.91 to 1.09 over 1,038 steps and the model learned no motion; records/video/README.md.)
Two kinds of temporal layer:
- `TemporalConv`: a residual block of 3D convolutions with kernels (3, 1, 1), after each residual block;
- `TemporalAttention`: self-attention over the frames of each pixel, with sinusoidal frame position
  embeddings, then cross-attention to the text and a feed-forward layer, after each spatial transformer.
  The cross-attention is this project's addition: the spatial layers read the text frame by frame, and what a
  caption says about motion ("moves to the right") is only of use to layers that see the frames together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, FeedForward
from .blocks import group_norm, timestep_embedding


def to_clips(z: torch.Tensor, frames: int) -> torch.Tensor:
    """(B * T, C, H, W) -> (B, C, T, H, W)."""
    BT, C, H, W = z.shape
    return z.view(BT // frames, frames, C, H, W).transpose(1, 2)


def to_frames(z: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B * T, C, H, W)."""
    B, C, T, H, W = z.shape
    return z.transpose(1, 2).reshape(B * T, C, H, W)


ALPHA_START = 0.5  # the mixing factor of a new temporal layer


def zero(layer: nn.Module) -> nn.Module:
    """The layer with its weight and bias set to zero."""
    for p in layer.parameters():
        nn.init.zeros_(p)
    return layer


class TemporalMix(nn.Module):
    """z' = alpha z + (1 - alpha) l_phi(z), for a temporal layer l_phi; alpha starts at `ALPHA_START`."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.alpha = nn.Parameter(torch.tensor(ALPHA_START))

    def forward(self, z: torch.Tensor, frames: int, *condition) -> torch.Tensor:
        return self.alpha * z + (1 - self.alpha) * self.layer(z, frames, *condition)


class TemporalConv(nn.Module):
    """A residual block of two convolutions along time, kernel (3, 1, 1): each pixel's features are mixed with
    the same pixel's in the neighbouring frames. The second convolution starts at zero: a new block is the
    identity."""

    def __init__(self, channels: int, *, groups: int = 32, eps: float = 1e-6, kernel: int = 3):
        super().__init__()
        padding = (kernel // 2, 0, 0)
        self.norm1 = group_norm(channels, groups, eps)
        self.conv1 = nn.Conv3d(channels, channels, (kernel, 1, 1), padding=padding)
        self.norm2 = group_norm(channels, groups, eps)
        self.conv2 = zero(nn.Conv3d(channels, channels, (kernel, 1, 1), padding=padding))

    def forward(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        x = to_clips(z, frames)
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return to_frames(x + h)


class TemporalAttention(nn.Module):
    """A transformer over the T frames of each pixel, added back as a residual like the spatial one: the
    normalised features projected in; self-attention across frames; cross-attention to the text (with a
    `context_dim`); a feed-forward layer (each pre-norm and residual); projected out. Each frame's token
    carries a sinusoidal embedding of its index, projected to the width, so attention knows the order of the
    frames. The out projection starts at zero: a new transformer is the identity."""

    def __init__(self, channels: int, *, context_dim: int | None = None, head_dim: int = 32, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.proj_in, self.proj_out = nn.Linear(channels, channels), zero(nn.Linear(channels, channels))
        self.frame_embedding = nn.Linear(channels, channels)
        self.norm1, self.attn1 = nn.LayerNorm(channels), Attention(channels, head_dim=head_dim)
        self.norm2 = self.attn2 = None
        if context_dim is not None:
            self.norm2 = nn.LayerNorm(channels)
            self.attn2 = Attention(channels, context_dim=context_dim, head_dim=head_dim)
        self.norm3, self.ff = nn.LayerNorm(channels), FeedForward(channels)

    def forward(self, z: torch.Tensor, frames: int, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """z (B * T, C, H, W); context (B * T, L, D) and mask (B * T, L) as the spatial layers see them."""
        B, C, T, H, W = to_clips(z, frames).shape
        tokens = to_clips(self.norm(z), frames).permute(0, 3, 4, 2, 1).reshape(B * H * W, T, C)  # one row a pixel
        position = timestep_embedding(torch.arange(T, device=z.device), C).to(z.dtype)
        x = self.proj_in(tokens) + self.frame_embedding(position)[None]
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.cross_attention(self.norm2(x), context[::frames], None if mask is None else mask[::frames])
        x = x + self.ff(self.norm3(x))
        h = self.proj_out(x).view(B, H, W, T, C).permute(0, 3, 4, 1, 2).reshape(B * T, C, H, W)
        return z + h

    def cross_attention(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """attn2(x, each clip's text) for the rows x (B * H * W, T, C) of B clips, context (B, L, D): the text's
        keys and values projected once per clip, then shared by its H * W pixels."""
        pixels = x.shape[0] // context.shape[0]
        k, v = (p(context).repeat_interleave(pixels, dim=0) for p in (self.attn2.to_k, self.attn2.to_v))
        mask = None if mask is None else mask.repeat_interleave(pixels, dim=0)
        return self.attn2.attend(self.attn2.to_q(x), k, v, mask)
