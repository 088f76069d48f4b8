"""A video decoder: the image autoencoder's decoder, frozen, with temporal layers between its residual blocks
(Blattmann et al. 2023, "Align your Latents", sec. 3.1.1: the decoder is fine-tuned on video so that frames
decoded from a clip's latents do not flicker).

The image decoder sees each frame alone, so two frames whose latents differ a little may be decoded with
details that differ a lot: flicker. After each of its residual blocks (the mid block's two and every up
level's) a temporal convolution (models/temporal.py `TemporalConv`) looks across the T frames of each pixel,
mixed in by its factor alpha (eq. 3 of the paper):

    h' = alpha * h + (1 - alpha) * TemporalConv(h),      h = ResBlock(...)  of shape (B * T, C, H, W).

A new TemporalConv is the identity (its last convolution starts at zero), so before training the video decoder
is exactly the image decoder applied frame by frame; alpha starts at 1/2 (models/temporal.py says why).
The temporal layers are a component of their own (`DecoderTemporalLayers`, with a config), which a video model
folder stores as vae_temporal/ beside the image model's vae/ (video_pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .temporal import TemporalConv, TemporalMix
from .vae import AutoencoderKL, Decoder


@dataclass
class VideoDecoderConfig:
    kernel: int = 3  # frames each temporal convolution sees

    def __post_init__(self):
        if isinstance(self.kernel, bool) or not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number of frames, got {self.kernel!r}")


def residual_blocks(decoder: Decoder):
    """(name, residual block) of each of the decoder's residual blocks, in the order they run: "mid_block_resnets_0",
    "mid_block_resnets_1", "up_blocks_0_resnets_0", ..."""
    yield from ((f"mid_block_resnets_{j}", resnet) for j, resnet in enumerate(decoder.mid_block.resnets))
    for i, level in enumerate(decoder.up_blocks):
        yield from ((f"up_blocks_{i}_resnets_{j}", resnet) for j, resnet in enumerate(level.resnets))


class DecoderTemporalLayers(nn.ModuleDict):
    """A `TemporalMix(TemporalConv)` after each residual block of a decoder, by the block it follows
    ("up_blocks_1_resnets_0" comes after up_blocks.1.resnets.0), as wide as the block's output and normalised
    with the decoder's groups."""

    def __init__(self, decoder: Decoder, config: VideoDecoderConfig | None = None):
        super().__init__()
        self.config = config = config or VideoDecoderConfig()
        for name, resnet in residual_blocks(decoder):
            norm = resnet.norm2  # the block's own output normalisation: its width, groups and eps
            self[name] = TemporalMix(TemporalConv(norm.num_channels, groups=norm.num_groups, eps=norm.eps,
                                                  kernel=config.kernel))


class VideoDecoder(nn.Module):
    """Latents of clips -> frames: the image decoder's layers with a temporal layer after each residual block.
    `forward(z, frames)`: z (B * T, C, h, w), unscaled latents as `Decoder.forward` takes them, the T frames of
    each clip consecutive -> (B * T, 3, H, W)."""

    def __init__(self, decoder: Decoder, temporal: DecoderTemporalLayers | VideoDecoderConfig | None = None):
        super().__init__()
        self.decoder = decoder
        self.temporal = temporal if isinstance(temporal, DecoderTemporalLayers) else DecoderTemporalLayers(decoder,
                                                                                                          temporal)

    @property
    def config(self) -> VideoDecoderConfig:
        return self.temporal.config

    def freeze_spatial(self) -> "VideoDecoder":
        """Only the temporal layers train; the image decoder's weights stay as they are."""
        self.decoder.requires_grad_(False)
        return self

    def forward(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        """Decoder.forward, step by step, with each residual block's temporal layer after it."""
        d, mix = self.decoder, self.temporal
        h = d.conv_in(z)  # (B * T, C, h, w)
        # the mid block (MidBlock.forward): residual block, self-attention over pixels, residual block
        h = mix["mid_block_resnets_0"](d.mid_block.resnets[0](h), frames)
        h = d.mid_block.attentions[0](h)
        h = mix["mid_block_resnets_1"](d.mid_block.resnets[1](h), frames)
        # the up levels, coarsest first (DecoderLevel.forward): residual blocks, then the upsampling
        for i, level in enumerate(d.up_blocks):
            for j, resnet in enumerate(level.resnets):
                h = mix[f"up_blocks_{i}_resnets_{j}"](resnet(h), frames)
            if level.upsamplers is not None:
                h = level.upsamplers[0](h)
        return d.conv_out(F.silu(d.conv_norm_out(h)))  # (B * T, 3, H, W)

    def decode(self, vae: AutoencoderKL, z: torch.Tensor, frames: int) -> torch.Tensor:
        """Scaled latents (B * T, C, h, w) of clips of `frames` frames -> frames in about [-1, 1]: what
        `vae.decode` does frame by frame (unscale, post-quantisation convolution, decoder), with this decoder.
        `vae` is the autoencoder whose decoder this is."""
        z = z / vae.config.scale_factor
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return self(z, frames)
