"""Attention and the transformer blocks that carry self- and cross-attention inside the U-Net."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .activation_memory import LayerNorm, geglu
from .blocks import group_norm
from .frozen_transformer import frozen_transformer_block
from .group_norm import group_norm_act
from .precision import to_autocast_dtype


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
        x = to_autocast_dtype(x)  # cast once for the three projections that read it
        context = x if context is None else to_autocast_dtype(context)
        B, N, C = x.shape
        h = self.heads
        if context is x:
            q, k, v = projections(x, self.to_q, self.to_k, self.to_v)
        else:
            q, (k, v) = self.to_q(x), projections(context, self.to_k, self.to_v)
        q, k, v = (z.view(B, -1, h, C // h).transpose(1, 2) for z in (q, k, v))  # (B, h, N|L, C/h)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[1](self.to_out[0](out.transpose(1, 2).reshape(B, N, C)))


def projections(x: torch.Tensor, *layers: nn.Module) -> tuple[torch.Tensor, ...]:
    """Each layer applied to x. Layers that offer `stacked(layers, x)` (adapters in training,
    adapters/lora.py) compute them as one product of their stacked weights, where they can."""
    stacked = getattr(type(layers[0]), "stacked", None)
    out = None if stacked is None else stacked(layers, x)
    return tuple(layer(x) for layer in layers) if out is None else out


class GEGLU(nn.Module):
    """Gated GELU feed-forward input (Shazeer 2020): x W * gelu(x V).

    W and V are stored as one projection (diffusers' `proj`, W's rows first). At inference they are
    applied as two products, so that each half comes out contiguous and the gating runs on whole
    tensors rather than strided halves; in training as one, whose weight gradient then needs no
    gathering from two slices, and whenever `proj` is not a plain linear layer (wrapped by an adapter)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.inner = inner
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_autocast_dtype(x)
        proj = self.proj
        if hasattr(proj, "plain_layer"):  # a wrapping layer (an adapter) that adds nothing now is its base layer
            proj = proj.plain_layer() or proj
        if not isinstance(proj, nn.Linear) or torch.is_grad_enabled() and proj.weight.requires_grad:
            return geglu(*proj(x).chunk(2, dim=-1))
        weight, bias, n = proj.weight, proj.bias, self.inner
        return geglu(F.linear(x, weight[:n], bias[:n]), F.linear(x, weight[n:], bias[n:]))


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
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, head_dim=head_dim, dropout=dropout)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim=context_dim, head_dim=head_dim, dropout=dropout)
        self.norm3, self.ff = LayerNorm(dim), FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        fused = frozen_transformer_block(self, x, context, mask)  # training adapters on a frozen block
        if fused is not None:
            return fused
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
        projection = nn.Linear if linear_projection else (lambda a, b: nn.Conv2d(a, b, 1))
        self.proj_in = projection(channels, channels)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, context_dim, head_dim, dropout)
                                                for _ in range(depth))
        self.proj_out = projection(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = group_norm_act(x, self.norm, silu=False).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = project(self.proj_in, h)  # contiguous
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        return x + project(self.proj_out, h).transpose(1, 2).view(B, C, H, W)


def project(layer: nn.Linear | nn.Conv2d, tokens: torch.Tensor) -> torch.Tensor:
    """A linear layer, or a 1x1 convolution, applied to tokens (B, N, C): a 1x1 convolution over a map
    is a linear layer over its pixels, and runs as one here, with no copy to or from the map's layout."""
    if isinstance(layer, nn.Conv2d):
        return F.linear(tokens, layer.weight.flatten(1), layer.bias)
    return layer(tokens)  # a linear layer, or a wrapped layer (an adapter), which accepts tokens either way
