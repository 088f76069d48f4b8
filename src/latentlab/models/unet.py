"""The denoising U-Net (Ronneberger et al. 2015; Ho et al. 2020; Rombach et al. 2022).

Encoder levels of residual blocks (each optionally followed by a spatial transformer with self- and
cross-attention to the text) down to a middle, then decoder levels that join the encoder's skip
features. The timestep conditions every residual block through its normalisation; so, optionally,
does the text's pooled embedding, while its tokens enter through cross-attention.

The module tree is diffusers' `UNet2DConditionModel` (down_blocks.i.resnets.j, .attentions.j,
.downsamplers.0, mid_block, up_blocks, ...): at `UNetConfig.stable_diffusion_1()` this is Stable
Diffusion 1.x's U-Net, and a diffusers state dict loads with no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer
from .blocks import (TIME_CONDITIONING, Downsample, ResBlock, TimestepEmbedding, Upsample, check_widths, group_norm,
                     timestep_embedding)


@dataclass
class UNetConfig:
    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # predicted channels out (twice the latent's with a learned variance)
    channels: tuple[int, ...] = (128, 256)  # width of each level; level i runs at 1/2^i resolution
    blocks_per_level: int = 2  # residual blocks per encoder level (decoder levels have one more)
    attention_levels: tuple[bool, ...] = (True, True)  # which levels carry transformers (the middle always does)
    transformer_depth: int | tuple[int, ...] = 1  # transformer blocks per spatial transformer, or one per level
    head_dim: int = 32  # width of one attention head (when heads is None)
    heads: int | tuple[int, ...] | None = None  # heads per attention layer, or per level (Stable Diffusion 1.x: 8)
    context_dim: int = 256  # width of the text encoder's states
    groups: int = 32  # group-norm groups
    dropout: float = 0.0
    attention_gates: bool = False  # gate each skip connection by the decoder's features (Oktay et al. 2018)
    time_conditioning: str = "scale_shift"  # how the embedding enters each residual block: or "additive" (SD's)
    pooled_text: bool = True  # add the mean of the text's tokens to the timestep embedding (SD: no)
    linear_projection: bool = True  # transformers' projections in and out: linear, or 1x1 convolutions (SD 1.x)
    norm_eps: float = 1e-6  # epsilon of the residual blocks' and the output's group norms (SD: 1e-5)

    def __post_init__(self):
        self.channels, self.attention_levels = tuple(self.channels), tuple(self.attention_levels)
        check_widths(self.channels)
        for name in ("in_channels", "out_channels", "blocks_per_level", "head_dim", "context_dim", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("transformer_depth", "heads"):
            value = getattr(self, name)
            if value is not None and any(v < 1 for v in (value if isinstance(value, (list, tuple)) else [value])):
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")
        levels = len(self.channels)
        if len(self.attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, "
                             f"channels has {levels}; give one per level")
        for name in ("transformer_depth", "heads"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                value = tuple(value)
                setattr(self, name, value)
                if len(value) != levels:
                    raise ValueError(f"{name} has {len(value)} entries, channels has {levels}; give one per level "
                                     "or a single number")
        for i, width in enumerate(self.channels):
            heads = self.level_heads(i)
            if heads is not None and width % heads:
                raise ValueError(f"level {i}'s width {width} is not a multiple of its {heads} heads")
            if heads is None and width % self.head_dim:
                raise ValueError(f"level {i}'s width {width} is not a multiple of head_dim={self.head_dim}")
        if self.time_conditioning not in TIME_CONDITIONING:
            raise ValueError(f"unknown time_conditioning {self.time_conditioning!r}; "
                             f"accepted: {', '.join(TIME_CONDITIONING)}")

    @classmethod
    def stable_diffusion_1(cls) -> "UNetConfig":
        """Stable Diffusion 1.x's U-Net (859.5M parameters)."""
        return cls(channels=(320, 640, 1280, 1280), blocks_per_level=2, attention_levels=(True, True, True, False),
                   heads=8, context_dim=768, time_conditioning="additive", pooled_text=False,
                   linear_projection=False, norm_eps=1e-5)

    def level_heads(self, level: int) -> int | None:
        return self.heads[level] if isinstance(self.heads, tuple) else self.heads

    def level_head_dim(self, level: int) -> int:
        heads = self.level_heads(level)
        return self.channels[level] // heads if heads else self.head_dim

    def level_depth(self, level: int) -> int:
        depth = self.transformer_depth
        return depth[level] if isinstance(depth, tuple) else depth


class AttentionGate(nn.Module):
    """Attention U-Net's additive gate (Oktay et al. 2018, eq. 1-2): a per-pixel weight in (0, 1) for the
    encoder's skip features x, from x and the decoder's features g at the same resolution:
        alpha = sigmoid(psi(relu(W_x x + W_g g))),   output alpha * x.
    """

    def __init__(self, skip_channels: int, gate_channels: int):
        super().__init__()
        inner = max(skip_channels // 2, 1)
        self.W_x = nn.Conv2d(skip_channels, inner, 1, bias=False)
        self.W_g = nn.Conv2d(gate_channels, inner, 1)
        self.psi = nn.Conv2d(inner, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.W_x(x) + self.W_g(g))))  # (B, 1, H, W)
        return alpha * x


class Level(nn.Module):
    """The residual blocks of one resolution, each followed by a spatial transformer where the level has
    attention, then the resampling to the next level (none after the last). On the decoder side,
    optionally one attention gate per block for the skip features it joins."""

    def __init__(self, resnets: list[ResBlock], attentions: list[SpatialTransformer] | None = None, *,
                 downsample: nn.Module | None = None, upsample: nn.Module | None = None,
                 gates: list[AttentionGate] | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsamplers = nn.ModuleList([downsample]) if downsample is not None else None
        self.upsamplers = nn.ModuleList([upsample]) if upsample is not None else None
        self.gates = nn.ModuleList(gates) if gates else None

    def layer(self, j: int, h, emb, context, mask):
        """Residual block j, then its transformer if it has one (the middle's second block has none)."""
        h = self.resnets[j](h, emb)
        return h if self.transformer(j) is None else self.transformer(j)(h, context, mask)

    def transformer(self, j: int) -> SpatialTransformer | None:
        """The spatial transformer after residual block j, if any."""
        return self.attentions[j] if self.attentions is not None and j < len(self.attentions) else None

    def layer_parameters(self, j: int) -> list[nn.Parameter]:
        """The parameters layer(j, ...) reads."""
        modules = [self.resnets[j]] + ([self.transformer(j)] if self.transformer(j) is not None else [])
        return [p for module in modules for p in module.parameters()]


class UNet(nn.Module):
    """eps_theta(x_t, t, context, mask) -> eps, all tensors batched along dim 0."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.gradient_checkpointing = False  # recompute each block's activations in the backward pass
        width0 = c.channels[0]
        embed_dim = 4 * width0
        self.conv_in = nn.Conv2d(c.in_channels, width0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(width0, embed_dim)
        self.context_embed = nn.Linear(c.context_dim, embed_dim) if c.pooled_text else None

        def resnet(cin, cout):
            return ResBlock(cin, cout, embed_dim=embed_dim, groups=c.groups, dropout=c.dropout, eps=c.norm_eps,
                            time_conditioning=c.time_conditioning)

        def transformer(level, width):
            return SpatialTransformer(width, c.context_dim, depth=c.level_depth(level), head_dim=c.level_head_dim(level),
                                      groups=c.groups, linear_projection=c.linear_projection, dropout=c.dropout)

        skips, ch, n_levels = [width0], width0, len(c.channels)
        self.down_blocks = nn.ModuleList()
        for i, (width, attn) in enumerate(zip(c.channels, c.attention_levels)):
            resnets = []
            for _ in range(c.blocks_per_level):
                resnets.append(resnet(ch, width))
                ch = width
                skips.append(ch)
            last = i == n_levels - 1
            attentions = [transformer(i, width) for _ in resnets] if attn else None
            self.down_blocks.append(Level(resnets, attentions, downsample=None if last else Downsample(ch)))
            if not last:
                skips.append(ch)

        self.mid_block = Level([resnet(ch, ch), resnet(ch, ch)], [transformer(n_levels - 1, ch)])

        self.up_blocks = nn.ModuleList()
        for i, (width, attn) in reversed(list(enumerate(zip(c.channels, c.attention_levels)))):
            resnets, gates = [], []
            for _ in range(c.blocks_per_level + 1):
                skip = skips.pop()
                resnets.append(resnet(ch + skip, width))
                gates.append(AttentionGate(skip, ch))
                ch = width
            attentions = [transformer(i, width) for _ in resnets] if attn else None
            self.up_blocks.append(Level(resnets, attentions, upsample=Upsample(ch) if i > 0 else None,
                                        gates=gates if c.attention_gates else None))

        self.conv_norm_out = group_norm(ch, c.groups, c.norm_eps)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)
        self._zero_init_outputs()

    def _zero_init_outputs(self):
        """Each residual branch and the output start at zero, so the network starts as a near-identity."""
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.weight), nn.init.zeros_(module.conv2.bias)
            if isinstance(module, SpatialTransformer):
                nn.init.zeros_(module.proj_out.weight), nn.init.zeros_(module.proj_out.bias)
        nn.init.zeros_(self.conv_out.weight), nn.init.zeros_(self.conv_out.bias)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "UNet":
        """Trade compute for memory in training: keep only each block's inputs, recompute the rest."""
        self.gradient_checkpointing = enabled
        return self

    def _layer(self, level: Level, j: int, h, emb, context, mask):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self.checkpointed(level, j, h, emb, context, mask)
        return level.layer(j, h, emb, context, mask)

    def checkpointed(self, level: Level, j: int, *inputs) -> torch.Tensor:
        """level.layer(j, *inputs), keeping only its inputs: its activations are recomputed in the backward pass."""
        return checkpoint(level.layer, j, *inputs, use_reentrant=False,
                          preserve_rng_state=self.training and self.config.dropout > 0)

    def embed(self, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None, dtype: torch.dtype):
        """The embedding every residual block sees: timestep (+ pooled text) -> (B, 4 * width0)."""
        emb = self.time_embedding(timestep_embedding(t, self.config.channels[0]).to(dtype))
        if self.context_embed is not None:
            emb = emb + self.context_embed(pool(context, mask))
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.traverse(x, self.embed(t, context, mask, x.dtype), context, mask, self._layer)

    def traverse(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
                 layer) -> torch.Tensor:
        """The encoder, the middle and the decoder, with `layer(level, j, h, emb, context, mask)` running block j
        of a level (residual block and transformer): the U-Net's own `_layer`, or a video model's, which adds its
        temporal layers (models/video_unet.py)."""
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for j in range(len(level.resnets)):
                h = layer(level, j, h, emb, context, mask)
                skips.append(h)
            if level.downsamplers is not None:
                h = level.downsamplers[0](h)
                skips.append(h)
        for j in range(len(self.mid_block.resnets)):
            h = layer(self.mid_block, j, h, emb, context, mask)
        for level in self.up_blocks:
            for j in range(len(level.resnets)):
                skip = skips.pop()
                if level.gates is not None:
                    skip = level.gates[j](skip, h)
                h = layer(level, j, torch.cat([h, skip], dim=1), emb, context, mask)
            if level.upsamplers is not None:
                h = level.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))

def pool(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the context's tokens (B, L, D) -> (B, D), over the tokens the mask keeps."""
    if mask is None:
        return context.mean(dim=1)
    weights = mask.to(context.dtype)[..., None]
    return (context * weights).sum(1) / weights.sum(1).clamp(min=1)
