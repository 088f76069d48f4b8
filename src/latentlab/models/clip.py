"""CLIP's text transformer (Radford et al. 2021), the text encoder of Stable Diffusion 1.x.

Token and position embeddings, pre-norm blocks with causal self-attention, a final layer norm; the
pooled output is the final state at the end token. Attribute names follow the checkpoint keys of
transformers' `CLIPTextModel` (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...), so a
`text_encoder/model.safetensors` loads with `load_state_dict(strict=True)` and no key map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": F.gelu}


@dataclass
class CLIPTextConfig:
    """Defaults: the text tower of openai/clip-vit-large-patch14, Stable Diffusion 1.x's text encoder."""
    vocab_size: int = 49408
    width: int = 768  # D, the width of every token state (transformers: hidden_size)
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072  # transformers: intermediate_size
    max_positions: int = 77  # the longest token sequence, start and end tokens included
    activation: str = "quick_gelu"  # or "gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # "<|endoftext|>"; the pooled output is taken at its first occurrence

    def __post_init__(self):
        for name in ("vocab_size", "width", "layers", "heads", "mlp_width", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; accepted: {sorted(ACTIVATIONS)}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(f"eos_token_id {self.eos_token_id} is outside the vocabulary [0, {self.vocab_size})")


class CLIPEmbeddings(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.position_embedding = nn.Embedding(c.max_positions, c.width)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(input_ids) + self.position_embedding.weight[: input_ids.shape[1]]


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biased projections, scale 1/sqrt(head width); one SDPA call."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.heads = c.heads
        self.q_proj, self.k_proj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)
        self.v_proj, self.out_proj = nn.Linear(c.width, c.width), nn.Linear(c.width, c.width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = (p(x).view(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, h, L, D/h)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B|1, 1, L, L), True = attend
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class CLIPMLP(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c.width, c.mlp_width), nn.Linear(c.mlp_width, c.width)
        self.activation = ACTIVATIONS[c.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm block: causal self-attention, then the MLP."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(c.width, eps=c.layer_norm_eps), CLIPAttention(c)
        self.layer_norm2, self.mlp = nn.LayerNorm(c.width, eps=c.layer_norm_eps), CLIPMLP(c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)  # self-attention
        return x + self.mlp(self.layer_norm2(x))  # feed-forward


# Containers without a forward: they give the weights their checkpoint names; CLIPTextModel runs them.
class CLIPEncoder(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(c) for _ in range(c.layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(c)
        self.encoder = CLIPEncoder(c)
        self.final_layer_norm = nn.LayerNorm(c.width, eps=c.layer_norm_eps)


class CLIPTextModel(nn.Module):
    """Token ids (B, L) -> (last_hidden_state (B, L, D), pooled (B, D)), as transformers' CLIPTextModel.

    `attention_mask` (B, L), True or 1 at real tokens, hides the padded keys from every query (on top
    of the causal mask); None attends to every earlier token. `skip` ("clip skip") takes the states
    `skip` layers before the last and applies the final layer norm to them, as diffusers'
    `encode_prompt(clip_skip=...)` does; 1 is the penultimate layer. `pooled` is the final layer's
    normed state at each row's first end token (`eos_token_id`) and does not depend on `skip`.
    """

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        c, t = self.config, self.text_model
        B, L = input_ids.shape
        if L > c.max_positions:
            raise ValueError(f"{L} tokens exceed the {c.max_positions} positions of the text encoder")
        if not 0 <= skip < c.layers:
            raise ValueError(f"skip must be in [0, {c.layers}), got {skip}")
        is_eos = input_ids == c.eos_token_id
        if not is_eos.any(dim=1).all():
            raise ValueError(f"every row of input_ids needs the end token {c.eos_token_id}")

        mask = torch.ones(L, L, dtype=torch.bool, device=input_ids.device).tril()[None, None]  # (1, 1, L, L) causal
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, L, L): no padded keys

        x = t.embeddings(input_ids)  # (B, L, D)
        states = [x]
        for layer in t.encoder.layers:
            x = layer(x, mask)
            states.append(x)
        last = t.final_layer_norm(x)
        pooled = last[torch.arange(B, device=last.device), is_eos.int().argmax(dim=1)]  # (B, D) first end token
        if skip:
            last = t.final_layer_norm(states[-1 - skip])
        return last, pooled
