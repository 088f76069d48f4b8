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

    def __init__(self, dim: int, *, context_dim: int | None = None, head_dim: int = 32, dropout: float = 0.0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not a multiple of the head width {head_dim}")
        self.heads = dim // head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])  # diffusers' layout: to_out.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return self.attend(self.to_q(x), self.to_k(context), self.to_v(context), mask)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per head, then the output projection: q (B, N, C), k and v (B, L, C)."""
        B, N, C = q.shape
        h = self.heads
        q, k, v = (z.view(B, -1, h, C // h).transpose(1, 2) for z in (q, k, v))  # (B, h, N|L, C/h)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(B, N, C)))


class GEGLU(nn.Module):
    """Gated GELU feed-forward input (Shazeer 2020): x W * gelu(x V), with W and V stored as one
    projection (diffusers' `proj`, W's rows first)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.inner = inner
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the text, feed-forward."""

    def __init__(self, dim: int, context_dim: int, head_dim: int = 32, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, head_dim=head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim=context_dim, head_dim=head_dim, dropout=dropout)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # self-attention
        x = x + self.attn2(self.norm2(x), context, mask)  # cross-attention
        return x + self.ff(self.norm3(x))  # feed-forward


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map (B, C, H, W), added back as a residual
    (diffusers' Transformer2DModel). The projections in and out are linear layers over the tokens, or
    the equivalent 1x1 convolutions over the map (`linear_projection=False`, Stable Diffusion 1.x)."""

    def __init__(self, channels: int, context_dim: int, *, depth: int = 1, head_dim: int = 32, groups: int = 32,
                 linear_projection: bool = True, dropout: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.linear_projection = linear_projection
        projection = nn.Linear if linear_projection else (lambda a, b: nn.Conv2d(a, b, 1))
        self.proj_in = projection(channels, channels)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, context_dim, head_dim, dropout)
                                                for _ in range(depth))
        self.proj_out = projection(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.project(self.proj_in, self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        return x + self.project(self.proj_out, h.transpose(1, 2).reshape(B, C, H, W))

    def project(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`layer` applied to each pixel's channels of x (B, C, H, W): a linear layer, or a 1x1 convolution."""
        return layer(x.movedim(1, -1)).movedim(-1, 1) if self.linear_projection else layer(x)
