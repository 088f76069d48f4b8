"""Adapter layers (Houlsby et al. 2019): a bottleneck after a sub-layer, added back as a residual.

After the output projection W0 of an attention or feed-forward sub-layer (y = W0 x), each adapter maps
y through a down-projection D (d -> m, m << d), a nonlinearity and an up-projection U (m -> d)
initialised to zero, so that a new adapter is the identity:

    y' = y + s U f(D y)

Several named adapters apply one after another. The nonlinearity sits between D and U, so an adapter
cannot be folded into W0: it costs its two products at inference, merged or not (`mergeable` is False).
`add_bottleneck` places adapters after self-attention, cross-attention and/or the feed-forward sub-layer
(`PLACEMENTS`) of the U-Net's transformer blocks and of our and CLIP's text encoder layers.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentlabError
from .base import AdapterDict, AdapterLayer, check_adapter_name
from .inject import target_modules, unchanged_on_error, wrap

# where adapters go: the output projection of each kind of sub-layer, by module-name pattern (the U-Net's
# transformer blocks and our text encoder: attn1, attn2, attn, ff; CLIP: self_attn.out_proj, mlp.fc2)
PLACEMENTS = {
    "self_attention": (r"attn1\.to_out\.0", r"attn\.to_out\.0", r"self_attn\.out_proj"),
    "cross_attention": (r"attn2\.to_out\.0",),
    "feed_forward": (r"ff\.net\.2", r"mlp\.fc2"),
}
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class BottleneckLayer(AdapterLayer):
    """A frozen linear output projection W0 (`base`) followed by named bottleneck adapters."""

    label = "bottleneck"
    mergeable = False

    def __init__(self, base: nn.Linear):
        if not isinstance(base, nn.Linear):
            raise LatentlabError(f"bottleneck adapters follow linear output projections, not {type(base).__name__}")
        super().__init__(base)
        self.down, self.up = AdapterDict(), AdapterDict()
        self.activation: dict[str, str] = {}

    def create(self, name: str, width: int = 16, activation: str = "gelu", dtype: torch.dtype | None = None) -> None:
        """D (width x d) initialised as nn.Linear's, U (d x width) and its bias at zero."""
        if not isinstance(width, int) or width < 1:
            raise LatentlabError(f"a bottleneck's width must be a positive integer, got {width!r}")
        if activation not in ACTIVATIONS:
            raise LatentlabError(f"unknown activation {activation!r}; accepted: {', '.join(ACTIVATIONS)}")
        d = self.base.out_features
        factory = dict(device=self.base.weight.device, dtype=dtype or torch.float32)
        self.down[name], self.up[name] = nn.Linear(d, width, **factory), nn.Linear(width, d, **factory)
        nn.init.zeros_(self.up[name].weight), nn.init.zeros_(self.up[name].bias)
        self.activation[name] = activation

    def destroy(self, name: str) -> None:
        del self.down[name], self.up[name], self.activation[name]

    def delta(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """s U f(D y), in y's dtype: the adapter's term for the sub-layer's output y."""
        D, U = self.down[name], self.up[name]
        h = ACTIVATIONS[self.activation[name]](F.linear(y, D.weight.to(y.dtype), D.bias.to(y.dtype)))
        return self.scale[name] * F.linear(h, U.weight.to(y.dtype), U.bias.to(y.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for name in self.active():  # one after another: y <- y + s U f(D y)
            y = y + self.delta(name, y)
        return y

    def trainable(self, name: str) -> list[nn.Parameter]:
        return [*self.down[name].parameters(), *self.up[name].parameters()]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{part}.{key}": t.detach() for part, table in (("down", self.down), ("up", self.up))
                for key, t in table[name].state_dict().items()}


def add_bottleneck(model: nn.Module, adapter: str = "default", *, width: int = 16,
                   placement: Iterable[str] = ("self_attention", "cross_attention", "feed_forward"),
                   activation: str = "gelu", dtype: torch.dtype | None = None) -> list[str]:
    """Add bottleneck adapter `adapter` after every sub-layer of `placement` (PLACEMENTS' keys) in `model`;
    W0 frozen, the adapter float32 unless `dtype` says otherwise. Returns the module names. All or nothing."""
    check_adapter_name(adapter, "bottleneck adapter")
    placement = list(placement)
    unknown = [p for p in placement if p not in PLACEMENTS]
    if unknown or not placement:
        raise LatentlabError(f"unknown placement {', '.join(map(repr, unknown)) or 'none'}; accepted: "
                             f"{', '.join(PLACEMENTS)}")
    names = target_modules(model, [p for key in placement for p in PLACEMENTS[key]])
    if not names:
        raise LatentlabError(f"this model has no sub-layer output projection for placement {placement}")
    with unchanged_on_error([model], adapter):
        for name in names:
            wrap(model, name, BottleneckLayer).add(adapter, width=width, activation=activation, dtype=dtype)
    return names
