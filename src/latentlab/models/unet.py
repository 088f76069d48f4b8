"""The denoising U-Net (Ronneberger et al. 2015; Ho et al. 2020; Rombach et al. 2022).

Encoder levels of residual blocks (each optionally followed by a spatial transformer with self- and
cross-attention to the text) down to a middle, then decoder levels that join the encoder's skip
features. The text enters twice: its tokens through cross-attention, and its pooled embedding,
added to the timestep embedding, through the scale and shift of every residual block's norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialTransformer
from .blocks import Downsample, ResBlock, Upsample, check_widths, group_norm, timestep_embedding


@dataclass
class UNetConfig:
    in_channels: int = 4  # latent channels in
    out_channels: int = 4  # predicted noise channels out
    channels: tuple[int, ...] = (128, 256)  # width of each level; level i runs at 1/2^i resolution
    blocks_per_level: int = 2  # residual blocks per encoder level (decoder levels have one more)
    attention_levels: tuple[bool, ...] = (True, True)  # which levels carry transformers
    transformer_depth: int = 1  # transformer blocks per spatial transformer
    head_dim: int = 32  # width of one attention head (when heads is None)
    heads: int | None = None  # heads per attention layer, whatever its width (Stable Diffusion 1.x: 8)
    context_dim: int = 256  # width of the text encoder's states
    groups: int = 32  # group-norm groups
    dropout: float = 0.0
    attention_gates: bool = False  # gate each skip connection by the decoder's features (Oktay et al. 2018)

    def __post_init__(self):
        self.channels, self.attention_levels = tuple(self.channels), tuple(self.attention_levels)
        check_widths(self.channels)
        if self.heads is not None and any(width % self.heads for width in self.channels):
            raise ValueError(f"every level's width {self.channels} must be a multiple of heads={self.heads}")
        if len(self.channels) != len(self.attention_levels):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries, "
                             f"channels has {len(self.channels)}; give one per level")


class UNetBlock(nn.Module):
    """A residual block, then a spatial transformer where the level has attention."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig, embed_dim: int, attention: bool):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, embed_dim=embed_dim, groups=config.groups,
                            dropout=config.dropout)
        head_dim = out_channels // config.heads if config.heads else config.head_dim
        self.attn = SpatialTransformer(out_channels, config.context_dim, depth=config.transformer_depth,
                                       head_dim=head_dim, groups=config.groups) if attention else None

    def forward(self, x, emb, context, mask):
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, mask)


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
    """The blocks of one resolution and the resampling that follows them (None at the last); on the
    decoder side, optionally one attention gate per block for the skip features it joins."""

    def __init__(self, blocks: list[UNetBlock], resample: nn.Module | None, gates: list[AttentionGate] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample
        self.gates = nn.ModuleList(gates) if gates else None


class UNet(nn.Module):
    """eps_theta(x_t, t, context, mask) -> eps, all tensors batched along dim 0."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        self.gradient_checkpointing = False  # recompute each block's activations in the backward pass
        width0 = c.channels[0]
        embed_dim = 4 * width0
        self.time_embed = nn.Sequential(nn.Linear(width0, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.context_embed = nn.Linear(c.context_dim, embed_dim)
        self.conv_in = nn.Conv2d(c.in_channels, width0, 3, padding=1)

        skips, ch, n_levels = [width0], width0, len(c.channels)
        self.down = nn.ModuleList()
        for i, (width, attn) in enumerate(zip(c.channels, c.attention_levels)):
            blocks = []
            for _ in range(c.blocks_per_level):
                blocks.append(UNetBlock(ch, width, c, embed_dim, attn))
                ch = width
                skips.append(ch)
            last = i == n_levels - 1
            self.down.append(Level(blocks, None if last else Downsample(ch)))
            if not last:
                skips.append(ch)

        self.mid = UNetBlock(ch, ch, c, embed_dim, attention=True)
        self.mid_res = ResBlock(ch, ch, embed_dim=embed_dim, groups=c.groups, dropout=c.dropout)

        self.up = nn.ModuleList()
        for i, (width, attn) in reversed(list(enumerate(zip(c.channels, c.attention_levels)))):
            blocks, gates = [], []
            for _ in range(c.blocks_per_level + 1):
                skip = skips.pop()
                blocks.append(UNetBlock(ch + skip, width, c, embed_dim, attn))
                gates.append(AttentionGate(skip, ch))
                ch = width
            self.up.append(Level(blocks, Upsample(ch) if i > 0 else None, gates if c.attention_gates else None))

        self.norm_out = group_norm(ch, c.groups)
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

    def _run(self, block: UNetBlock, h, emb, context, mask):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, mask, use_reentrant=False)
        return block(h, emb, context, mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        # embeddings: timestep + pooled text -> (B, 4 * width0)
        emb = self.time_embed(timestep_embedding(t, self.config.channels[0]).to(x.dtype))
        emb = emb + self.context_embed(pool(context, mask))

        h = self.conv_in(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = self._run(block, h, emb, context, mask)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        h = self.mid_res(self._run(self.mid, h, emb, context, mask), emb)
        for level in self.up:
            for j, block in enumerate(level.blocks):
                skip = skips.pop()
                if level.gates is not None:
                    skip = level.gates[j](skip, h)
                h = self._run(block, torch.cat([h, skip], dim=1), emb, context, mask)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def pool(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the context's tokens (B, L, D) -> (B, D), over the tokens the mask keeps."""
    if mask is None:
        return context.mean(dim=1)
    weights = mask.to(context.dtype)[..., None]
    return (context * weights).sum(1) / weights.sum(1).clamp(min=1)
