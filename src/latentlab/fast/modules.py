"""The networks' modules, computed faster: each a subclass of a models/ class with another forward.

A fast module holds no state of its own: fast/install.py swaps a module's class for its fast subclass,
so its parameters, buffers and state-dict keys stay as they were, and swaps it back. Each forward computes
the plain module's maths (up to float rounding) and hands over to the plain forward wherever its speed-up
does not apply:

- `FastAttention`: the input cast once to the compute dtype for the projections that read it, and q, k, v
  of trained LoRA layers as one stacked product (fast/lora.py).
- `FastGEGLU`: at inference the projection's two halves as two products (each half contiguous, the gating
  on whole tensors); in training as one, and the gating saving only its inputs (fast/activation_memory.py).
- `FastTransformerBlock`: a frozen block trained through its adapters as one autograd node
  (fast/frozen_transformer.py).
- `FastSpatialTransformer`: 1x1 projections applied to the tokens as linear maps, with no copies between
  the map's layout and the tokens'.
- `FastResBlock`: normalisation and SiLU in one step (fast/group_norm.py, Triton on channels-last CUDA
  maps at inference); a frozen block in training as one autograd node (fast/activation_memory.py).
- `FastGroupNorm`: fast/group_norm.py's normalisation.
- `FastUNet`: gradient checkpointing by fast/checkpointing.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters.base import AdapterLayer
from ..adapters.lora import LoRALayer
from ..models.attention import GEGLU, Attention, SpatialTransformer, TransformerBlock
from ..models.blocks import ResBlock
from ..models.unet import UNet
from .activation_memory import frozen_res_block, geglu
from .checkpointing import checkpoint
from .frozen_transformer import frozen_transformer_block
from .group_norm import group_norm_act
from .lora import stacked
from .precision import to_autocast_dtype


class FastAttention(Attention):
    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = to_autocast_dtype(x)  # cast once for the three projections that read it
        context = x if context is None else to_autocast_dtype(context)
        if context is x:
            q, k, v = _projections(x, self.to_q, self.to_k, self.to_v)
        else:
            q, (k, v) = self.to_q(x), _projections(context, self.to_k, self.to_v)
        return self.attend(q, k, v, mask)


def _projections(x: torch.Tensor, *layers: nn.Module) -> tuple[torch.Tensor, ...]:
    """Each layer applied to x: as one stacked product where they train LoRA adapters, else one by one."""
    out = stacked(layers, x)
    return tuple(layer(x) for layer in layers) if out is None else out


class FastGEGLU(GEGLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_autocast_dtype(x)
        proj = self.proj
        if isinstance(proj, AdapterLayer) and not proj.active():  # an adapter layer adding nothing now
            proj = proj.base
        if not isinstance(proj, nn.Linear) or torch.is_grad_enabled() and proj.weight.requires_grad:
            return geglu(*proj(x).chunk(2, dim=-1))
        weight, bias, n = proj.weight, proj.bias, self.inner
        return geglu(F.linear(x, weight[:n], bias[:n]), F.linear(x, weight[n:], bias[n:]))


class FastTransformerBlock(TransformerBlock):
    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        fused = frozen_transformer_block(self, x, context, mask)  # training adapters on a frozen block
        return super().forward(x, context, mask) if fused is None else fused


class FastSpatialTransformer(SpatialTransformer):
    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not (_takes_tokens(self.proj_in) and _takes_tokens(self.proj_out)):
            return super().forward(x, context, mask)
        B, C, H, W = x.shape
        h = _tokenwise(self.proj_in, self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C), contiguous
        for block in self.transformer_blocks:
            h = block(h, context, mask)
        return x + _tokenwise(self.proj_out, h).transpose(1, 2).view(B, C, H, W)


def _takes_tokens(layer: nn.Module) -> bool:
    """Whether a projection applies to tokens (B, N, C): linear layers, 1x1 convolutions, LoRA on either."""
    return isinstance(layer, (nn.Linear, nn.Conv2d, LoRALayer))


def _tokenwise(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """A linear layer, or a 1x1 convolution read as one, applied to tokens (B, N, C)."""
    if isinstance(layer, nn.Conv2d):
        return F.linear(tokens, layer.weight.flatten(1), layer.bias)
    return layer(tokens)  # a linear layer, or LoRA, which applies a 1x1 convolution to tokens too


class FastResBlock(ResBlock):
    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        e = self.embedding(emb)
        frozen = frozen_res_block(self, x, e) if e is None or not self.scale_shift else None  # training, frozen
        if frozen is not None:
            return frozen
        h = self.conv1(group_norm_act(x, self.norm1))
        if e is None:
            h = group_norm_act(h, self.norm2)
        elif self.scale_shift:
            n, (scale, shift) = self.norm2, e.chunk(2, dim=1)
            h = F.silu(F.group_norm(h, n.num_groups, n.weight, n.bias, n.eps) * (1 + scale) + shift)
        else:
            h = group_norm_act(h + e, self.norm2)
        return self.conv_shortcut(x) + self.conv2(self.dropout(h))


class FastGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_act(x, self, silu=False)


class FastUNet(UNet):
    def checkpointed(self, level, j: int, *inputs) -> torch.Tensor:
        return checkpoint(level.layer, j, *inputs, parameters=level.layer_parameters(j),
                          preserve_rng_state=self.training and self.config.dropout > 0)
