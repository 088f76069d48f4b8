"""Prefix tuning (Li & Liang 2021; P-tuning v2, Liu et al. 2022): learned keys and values that every
query of an attention also attends to.

For an attention with keys K and values V (L of them, width C), an adapter holds P key vectors P_k and
P_v and attends over [P_k; K], [s P_v; V]: the prefix steers every layer it sits in without touching the
weights or the input. While training, the prefix is reparameterised (Li & Liang section 4.3: optimising it
directly is unstable): [P_k, P_v] = MLP(E), E (P x e) and a two-layer tanh MLP to 2C. `freeze` computes it
once and drops E and the MLP, leaving 2 P C numbers per attention. Masks gain P columns that always attend.

The prefix adds keys, not input tokens: it takes none of a text encoder's token positions (SD's 77 stay
usable), unlike prompt tuning's soft tokens. It cannot be merged into a weight, and a new prefix is not the
identity (its keys take part of the softmax). `PrefixLayer` wraps the networks' `Attention` (the U-Net's
self- and cross-attention, our text encoder's), `CLIPPrefixLayer` CLIP's causal self-attention.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentlabError
from ..models.attention import Attention
from ..models.clip import CLIPAttention
from .base import AdapterDict, AdapterLayer, check_adapter_name
from .inject import matches, unchanged_on_error, wrap

TARGETS = ("attn1", "attn2", "attn", "self_attn")  # the U-Net's, our text encoder's and CLIP's attentions


class Prefix(nn.Module):
    """P keys and values (2, P, C): MLP(E) while reparameterised, plain tensors (`kv`) once frozen."""

    def __init__(self, length: int, width: int, hidden: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        factory = dict(dtype=dtype, device=device)
        self.length, self.width = length, width
        self.embedding = nn.Parameter(torch.randn(length, hidden, **factory))
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden, **factory), nn.Tanh(),
                                 nn.Linear(hidden, 2 * width, **factory))
        self.kv: nn.Parameter | None = None

    def forward(self) -> torch.Tensor:
        if self.kv is not None:
            return self.kv
        return self.mlp(self.embedding).view(self.length, 2, self.width).transpose(0, 1)

    @torch.no_grad()
    def freeze(self) -> None:
        """Keep [P_k, P_v] as computed now; drop E and the MLP."""
        if self.kv is None:
            self.kv = nn.Parameter(self().clone())
            del self.embedding, self.mlp


class PrefixLayer(AdapterLayer):
    """The networks' Attention (`base`, frozen) with named prefixes of its keys and values."""

    label = "prefix"
    mergeable = False
    kinds: tuple[type, ...] = (Attention,)

    def __init__(self, base: nn.Module):
        if not isinstance(base, self.kinds):
            raise LatentlabError(f"{type(self).__name__} wraps {', '.join(k.__name__ for k in self.kinds)}, "
                                 f"not {type(base).__name__}")
        super().__init__(base)
        self.prefix = AdapterDict()

    @property
    def width(self) -> int:
        return out_features(self.base.to_k)

    def create(self, name: str, length: int = 8, hidden: int = 64, dtype: torch.dtype | None = None) -> None:
        for what, value in (("length", length), ("hidden width", hidden)):
            if not isinstance(value, int) or value < 1:
                raise LatentlabError(f"a prefix's {what} must be a positive integer, got {value!r}")
        weight = next(self.base.parameters())
        self.prefix[name] = Prefix(length, self.width, hidden, dtype or torch.float32, weight.device)

    def destroy(self, name: str) -> None:
        del self.prefix[name]

    def trainable(self, name: str) -> list[nn.Parameter]:
        return list(self.prefix[name].parameters())

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {f"prefix.{key}": t.detach() for key, t in self.prefix[name].state_dict().items()}

    def freeze(self) -> None:
        """Drop every adapter's reparameterisation (after training)."""
        for name in self.adapters:
            self.prefix[name].freeze()

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """[P_k; K] and [s P_v; V] over the active prefixes, for k and v (B, L, C); and the prefixes' length."""
        kv = [(p[0], self.scale[n] * p[1]) for n in self.active() for p in [self.prefix[n]().to(k.dtype)]]
        if not kv:
            return k, v, 0
        B = k.shape[0]
        pk, pv = (torch.cat(parts).expand(B, -1, -1) for parts in zip(*kv))
        return torch.cat([pk, k], dim=1), torch.cat([pv, v], dim=1), pk.shape[1]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        attn = self.base
        context = x if context is None else context
        k, v, P = self.keys_values(attn.to_k(context), attn.to_v(context))
        if mask is not None and P:
            mask = torch.cat([mask.new_ones(mask.shape[0], P), mask], dim=1)  # (B, P + L): the prefix attends
        return attn.attend(attn.to_q(x), k, v, mask)


class CLIPPrefixLayer(PrefixLayer):
    """CLIP's causal self-attention with named prefixes: every token also attends to the prefix."""

    kinds = (CLIPAttention,)

    @property
    def width(self) -> int:
        return out_features(self.base.k_proj)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attn, (B, L, D) = self.base, x.shape
        k, v, P = self.keys_values(attn.k_proj(x), attn.v_proj(x))
        if P:
            mask = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], dim=-1)  # (B|1, 1, L, P + L)
        q, k, v = (t.view(B, -1, attn.heads, D // attn.heads).transpose(1, 2) for t in (attn.q_proj(x), k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.out_proj(out.transpose(1, 2).reshape(B, L, D))


def add_prefix(model: nn.Module, adapter: str = "default", *, length: int = 8, hidden: int = 64,
               targets: Iterable[str] = TARGETS, dtype: torch.dtype | None = None) -> list[str]:
    """Add prefix `adapter` (`length` keys and values, reparameterised through a width-`hidden` MLP) to every
    attention of `model` named by `targets`; the networks frozen. Returns the module names. All or nothing."""
    check_adapter_name(adapter, "prefix")
    targets = list(targets)
    names = [n for n, m in model.named_modules()
             if isinstance(m, (Attention, CLIPAttention, PrefixLayer)) and matches(n, targets)
             and not n.endswith(".base")]
    if not names:
        raise LatentlabError(f"no attention of this model matches the prefix targets {targets}")
    with unchanged_on_error([model], adapter):
        for name in names:
            kind = CLIPPrefixLayer if isinstance(_unwrapped(model.get_submodule(name)), CLIPAttention) else PrefixLayer
            wrap(model, name, kind).add(adapter, length=length, hidden=hidden, dtype=dtype)
    return names


def _unwrapped(module: nn.Module) -> nn.Module:
    return _unwrapped(module.base) if isinstance(module, AdapterLayer) else module


def out_features(layer: nn.Module) -> int:
    """A linear projection's output width, through the adapter layers wrapping it (LoRA on k, say)."""
    return _unwrapped(layer).out_features


def freeze_prefixes(model: nn.Module) -> None:
    """Drop the reparameterising MLPs of every prefix in `model` (after training)."""
    for module in model.modules():
        if isinstance(module, PrefixLayer):
            module.freeze()
