"""A BERT encoder (Devlin et al. 2019), the architecture of all-MiniLM-L6-v2 (Wang et al. 2020), used
frozen as a pretrained text encoder: its per-token states are the U-Net's cross-attention context.

The module tree is transformers' `BertModel`, so its safetensors load without renaming (the file's
`embeddings.position_ids` and pooler are dropped in `io/convert.py`). Post-norm blocks:
x = LN(x + attn(x)); x = LN(x + FFN(x)), GELU (erf) in the feed-forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError


@dataclass
class BertConfig:
    vocab_size: int = 30522
    width: int = 384  # hidden size
    layers: int = 6
    heads: int = 12
    mlp_width: int = 1536  # intermediate size
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self):
        for name in ("vocab_size", "width", "layers", "heads", "mlp_width", "max_positions", "type_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    @classmethod
    def from_transformers(cls, path: str | Path) -> "BertConfig":
        """The config of a transformers `config.json` (a BERT model)."""
        try:
            c = json.loads(Path(path).read_text())
            return cls(vocab_size=c["vocab_size"], width=c["hidden_size"], layers=c["num_hidden_layers"],
                       heads=c["num_attention_heads"], mlp_width=c["intermediate_size"],
                       max_positions=c["max_position_embeddings"], type_vocab_size=c["type_vocab_size"],
                       layer_norm_eps=c["layer_norm_eps"])
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} is not a readable BERT config.json ({e})") from None


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.width)
        self.position_embeddings = nn.Embedding(c.max_positions, c.width)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.width)
        self.LayerNorm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        x = self.word_embeddings(ids) + self.position_embeddings.weight[:L] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.heads
        self.query, self.key, self.value = (nn.Linear(c.width, c.width) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (proj(x).view(B, L, self.heads, D // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))  # (B, heads, L, head_dim)
        keep = None if mask is None else mask.bool()[:, None, None, :]  # padded keys hidden from every query
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep).transpose(1, 2).reshape(B, L, D)


class DenseNorm(nn.Module):
    """LN(residual + dense(x)): BERT's post-norm output of a sub-layer."""

    def __init__(self, width_in: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseNorm(c.width, c.width, c.layer_norm_eps)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.width, c.mlp_width)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseNorm(c.mlp_width, c.width, c.layer_norm_eps)

    def forward(self, x, mask):
        x = self.attention(x, mask)  # self-attention
        return self.output(self.intermediate(x), x)  # feed-forward


class Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.layers))


class BertModel(nn.Module):
    """Token ids (B, L) and mask (B, L) -> per-token states (B, L, width)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x
