"""The video U-Net: an image U-Net's spatial layers, frozen, with temporal layers between them
(Blattmann et al. 2023, "Align your Latents"; models/temporal.py has the layers and the mixing).

A clip of T frames is a batch of T images to the spatial layers; the timestep and the text condition every
frame alike. After each residual block comes a temporal convolution, after each spatial transformer a temporal
transformer, each mixed into the spatial output by its factor alpha; each starts as the identity (the image model,
frame by frame). The state dict is the image U-Net's (`unet.`) and the temporal layers' (`temporal.`), so an image
model's U-Net loads into a video model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .temporal import TemporalAttention, TemporalConv, TemporalMix, to_clips, to_frames
from .unet import Level, UNet, UNetConfig


@dataclass
class TemporalConfig:
    convolutions: bool = True  # a temporal convolution after each residual block
    attention: bool = True  # a temporal transformer after each spatial transformer
    text: bool = True  # the temporal transformers attend to the text too (cross-attention)
    kernel: int = 3  # frames each temporal convolution sees
    head_dim: int | None = None  # width of a temporal attention head (None: the spatial one's)

    def __post_init__(self):
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number of frames, got {self.kernel}")
        if not (self.convolutions or self.attention):
            raise ValueError("a video U-Net needs temporal convolutions, temporal attention or both")
        if self.head_dim is not None and self.head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {self.head_dim}")


def levels(unet: UNet):
    """(name, level, the config's level it runs at) of each level of the U-Net: "down_blocks_0", ...,
    "mid_block", "up_blocks_0", ..."""
    n = len(unet.config.channels)
    yield from ((f"down_blocks_{i}", level, i) for i, level in enumerate(unet.down_blocks))
    yield "mid_block", unet.mid_block, n - 1
    yield from ((f"up_blocks_{i}", level, n - 1 - i) for i, level in enumerate(unet.up_blocks))


class TemporalLayers(nn.ModuleDict):
    """The temporal layers for a U-Net, each a `TemporalMix`, by the spatial layer it follows
    ("down_blocks_0_resnets_1" comes after down_blocks.0.resnets.1). A video model folder stores them apart from
    the image model's U-Net (temporal/ beside unet/)."""

    def __init__(self, unet: UNet, config: TemporalConfig | None = None):
        super().__init__()
        self.config = config = config or TemporalConfig()
        c = unet.config
        for name, level, at in levels(unet):
            width = c.channels[at]
            for j in range(len(level.resnets)):
                if config.convolutions:
                    self[f"{name}_resnets_{j}"] = TemporalMix(TemporalConv(width, groups=c.groups, eps=c.norm_eps,
                                                                           kernel=config.kernel))
                if config.attention and level.transformer(j) is not None:
                    self[f"{name}_attentions_{j}"] = TemporalMix(TemporalAttention(
                        width, context_dim=c.context_dim if config.text else None,
                        head_dim=config.head_dim or c.level_head_dim(at), groups=c.groups))

    def mix(self, key: str, z: torch.Tensor, frames: int, *condition) -> torch.Tensor:
        """The temporal layer `key` on z (B * T, C, H, W) (and the text, for attention), mixed in; z itself where
        there is none."""
        return self[key](z, frames, *condition) if key in self else z


class VideoUNet(nn.Module):
    """eps_theta(z_t, t, context, mask) over clips: z_t (B, C, T, H, W), channels first like a 3D convolution's
    input (so guidance, losses and samplers read channels at dim 1 as for images), t (B,), context (B, L, D)."""

    def __init__(self, unet: UNet, temporal: TemporalLayers | TemporalConfig | None = None):
        super().__init__()
        self.unet = unet
        self.temporal = temporal if isinstance(temporal, TemporalLayers) else TemporalLayers(unet, temporal)
        self.gradient_checkpointing = False
        self._names = {id(level): name for name, level, _ in levels(unet)}

    @property
    def config(self) -> UNetConfig:
        """The spatial U-Net's config: channels in and out, as an image U-Net's."""
        return self.unet.config

    def freeze_spatial(self) -> "VideoUNet":
        """Only the temporal layers train; the image model's weights stay as they are."""
        self.unet.requires_grad_(False)
        return self

    def enable_gradient_checkpointing(self, enabled: bool = True) -> "VideoUNet":
        """Keep only each layer's inputs in training, recomputing the rest in the backward pass."""
        self.gradient_checkpointing = enabled
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T = x.shape[0], x.shape[2]
        if t.dim() == 0:
            t = t.expand(B)
        emb = self.unet.embed(t, context, mask, x.dtype).repeat_interleave(T, dim=0)
        context = context.repeat_interleave(T, dim=0)
        mask = None if mask is None else mask.repeat_interleave(T, dim=0)
        out = self.unet.traverse(to_frames(x), emb, context, mask, partial(self._layer, frames=T))
        return to_clips(out, T)

    def _layer(self, level: Level, j: int, h, emb, context, mask, *, frames: int):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.layer, level, j, h, emb, context, mask, frames, use_reentrant=False)
        return self.layer(level, j, h, emb, context, mask, frames)

    def layer(self, level: Level, j: int, h, emb, context, mask, frames: int) -> torch.Tensor:
        """Residual block j of a level, its temporal convolution, its transformer, its temporal transformer."""
        name = self._names[id(level)]
        h = self.temporal.mix(f"{name}_resnets_{j}", level.resnets[j](h, emb), frames)
        if level.transformer(j) is not None:
            h = self.temporal.mix(f"{name}_attentions_{j}", level.transformer(j)(h, context, mask), frames, context,
                                  mask)
        return h
