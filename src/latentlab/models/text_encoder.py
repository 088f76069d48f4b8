"""A small transformer text encoder, trained from scratch together with the denoiser.

Token and position embeddings, pre-norm transformer blocks with bidirectional self-attention over
the real tokens, a final layer norm. Its per-token states are the U-Net's cross-attention context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attention, FeedForward
from .clip import CLIPTextModel
from .tokenizer import Tokenizer


@dataclass
class TextEncoderConfig:
    vocab_size: int = 512
    max_length: int = 32  # tokens, [BOS] and [EOS] included
    width: int = 192  # the context width D the U-Net attends to
    layers: int = 4
    head_dim: int = 64

    def __post_init__(self):
        for name in ("vocab_size", "max_length", "width", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.layers < 0:
            raise ValueError(f"layers must be 0 or more, got {self.layers}")
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} is not a multiple of head_dim {self.head_dim}")


class EncoderBlock(nn.Module):
    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, head_dim=head_dim)
        self.norm2, self.ff = nn.LayerNorm(width), FeedForward(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)  # self-attention over the real tokens
        return x + self.ff(self.norm2(x))  # feed-forward


class TextEncoder(nn.Module):
    """Token ids (B, L) and mask (B, L) -> context (B, L, width)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Parameter(torch.randn(c.max_length, c.width) * 0.01)
        self.blocks = nn.ModuleList(EncoderBlock(c.width, c.head_dim) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def encode_prompts(tokenizer: Tokenizer, encoder: nn.Module, prompts: list[str]):
    """Prompts -> (context (B, L, D), mask (B, L) or None) on the encoder's device. "" is the unconditional prompt.

    CLIP follows Stable Diffusion: the U-Net attends to all `max_length` states, padding included
    (mask None); its causal attention already keeps the padding out of the real tokens' states.
    """
    device = next(encoder.parameters()).device
    ids, mask = tokenizer(prompts)
    ids, mask = ids.to(device), mask.to(device)
    if isinstance(encoder, CLIPTextModel):
        return encoder(ids)[0], None
    return encoder(ids, mask), mask
