"""Attention and the transformer blocks that carry self- and cross-attention inside the U-Net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import group_norm


class Attention(nn.Module):
    """Multi-head attention of x (B, N, C) to a context (B, L, D); self-attention when there is none.

    `mask` (B, L) is True where the context holds a token. One scaled_dot_product_attention call
    (flash or memory-efficient kernels where the device has them).
    """

    def __init__(self, dim: int, *, context_dim: int | None = None, head_dim: int = 32):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of the head width {head_dim}")
        self.heads = dim // head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers' layout: to_out.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        B, N, C = x.shape
        h = self.heads
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (z.view(B, -1, h, C // h).transpose(1, 2) for z in (q, k, v))  # (B, h, N|L, C/h)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](out.transpose(1, 2).reshape(B, N, C))


class GEGLU(nn.Module):
    """Gated GELU feed-forward input (Shazeer 2020): x W * gelu(x V)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, context_dim: int, head_dim: int = 32):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, head_dim=head_dim)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, context_dim=context_dim, head_dim=head_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # self-attention
        x = x + self.attn2(self.norm2(x), context, mask)  # cross-attention
        return x + self.ff(self.norm3(x))  # feed-forward


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map (B, C, H, W), added back as a residual."""

    def __init__(self, channels: int, context_dim: int, *, depth: int = 1, head_dim: int = 32, groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(TransformerBlock(channels, context_dim, head_dim) for _ in range(depth))
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        for block in self.blocks:
            h = block(h, context, mask)
        return x + self.proj_out(h).transpose(1, 2).view(B, C, H, W)
