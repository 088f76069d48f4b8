"""LyCORIS's adapters (LoHa, LoKr): an update Delta W built from small factors, applied as a weight.

Where LoRA's update is a product B A that can be applied to x factor by factor, LoHa's (a Hadamard
product, adapters/loha.py) and LoKr's (a Kronecker product, adapters/lokr.py) cannot: the layer builds
Delta W from the factors at every call, in W0's shape, and applies it as W0's kind of layer (a linear map,
or a convolution with W0's kernel, stride and padding):

    h = W0 x + sum_a  s_a (alpha_a / r_a) Delta W_a x

with `s_a` the adapter's multiplier (0 removes it exactly). Being a weight, it merges into W0 and out
again. A 1x1 convolution also takes tokens (B, N, C), as the linear layer over channels it is.

`LycorisLayer` holds each adapter's factors in one nn.ParameterDict under peft's names ("hada_w1_a",
"lokr_w1", ...), which are its state-dict keys relative to the layer; a variant says which factors it
makes (`make_factors`) and how they build Delta W (`update`).
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LatentlabError
from .base import AdapterDict, AdapterLayer, check_float32


class LycorisLayer(AdapterLayer):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus named adapters whose update is a weight built from factors."""

    def __init__(self, base: nn.Linear | nn.Conv2d):
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise LatentlabError(f"{self.label} wraps linear layers and convolutions, not {type(base).__name__}")
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise LatentlabError(f"{self.label} needs an ungrouped convolution; this one has {base.groups} groups")
        super().__init__(base)
        self.factors = AdapterDict()  # adapter -> nn.ParameterDict {peft's key: factor}
        self._rank: dict[str, int] = {}
        self._alpha: dict[str, float] = {}

    alpha = property(lambda self: MappingProxyType(self._alpha), doc="adapter -> alpha")

    def rank(self, name: str) -> int:
        return self._rank[name]

    # ------------------------------------------------------------------ what a variant defines

    def make_factors(self, rank: int, **options) -> dict[str, torch.Tensor]:
        """A new adapter's factors, initialised (float32, on W0's device), by peft's key."""
        raise NotImplementedError

    def update(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """Delta W from the factors `f`, before alpha / r, in W0's shape or one that flattens to it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the interface

    def create(self, name: str, rank: int = 4, alpha: float | None = None, dtype: torch.dtype | None = None,
               **options) -> None:
        """The factors as `make_factors` makes them (in `dtype`, float32 by default); alpha None: alpha = r."""
        if not isinstance(rank, int) or rank < 1:
            raise LatentlabError(f"{self.label} rank must be a positive integer, got {rank}")
        if alpha is not None:
            check_float32(f"{self.label} alpha", alpha)
        made = self.make_factors(rank, **options)
        self.factors[name] = nn.ParameterDict({k: nn.Parameter(t.to(dtype or torch.float32)) for k, t in made.items()})
        self._rank[name], self._alpha[name] = rank, float(rank if alpha is None else alpha)

    def destroy(self, name: str) -> None:
        del self.factors[name], self._rank[name], self._alpha[name]

    def trainable(self, name: str) -> list[nn.Parameter]:
        return list(self.factors[name].values())

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {key: p.detach() for key, p in self.factors[name].items()}

    def scaling(self, name: str) -> float:
        """s alpha / r: the factor of Delta W in W."""
        return self._scale[name] * self._alpha[name] / self._rank[name]

    def merge_factor(self, name: str) -> float:
        return self.scaling(name)

    def delta_weight(self, name: str, factor: float | None = None) -> torch.Tensor:
        """s (alpha / r) Delta W in W0's shape, float32 (at `factor` instead of s alpha / r when given)."""
        delta = self.update({k: p.float() for k, p in self.factors[name].items()}).reshape(self.base.weight.shape)
        return delta * (self.scaling(name) if factor is None else factor)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.product(self.base.weight, x, self.base.bias) if self.on_tokens(x) else self.base(x)
        for name in self.active():  # (scale 0 is exactly the base layer)
            out = out + self.delta(name, x)
        return out

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """s (alpha / r) Delta W x, with Delta W built in x's dtype."""
        weight = self.update({k: p.to(x.dtype) for k, p in self.factors[name].items()})
        return self.product(weight.reshape(self.base.weight.shape) * self.scaling(name), x)

    def on_tokens(self, x: torch.Tensor) -> bool:
        """Whether x is tokens (B, N, C) for a convolution (a 1x1 one: a linear layer over channels)."""
        return x.dim() == 3 and isinstance(self.base, nn.Conv2d)

    def product(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x through W0's kind of layer with `weight`: a linear map, or a convolution with W0's geometry."""
        base = self.base
        if isinstance(base, nn.Linear) or self.on_tokens(x):
            if isinstance(base, nn.Conv2d) and base.kernel_size != (1, 1):
                raise LatentlabError(f"a {base.kernel_size} convolution cannot be applied to tokens")
            return F.linear(x, weight.flatten(1), bias)
        return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation)

    # ------------------------------------------------------------------ shapes

    def kernel(self) -> tuple[int, ...]:
        """W0's kernel size: () for a linear layer."""
        return tuple(self.base.kernel_size) if isinstance(self.base, nn.Conv2d) else ()

    def init_factor(self, *shape: int, zero: bool = False) -> torch.Tensor:
        """A float32 factor on W0's device, initialised as nn.Linear's weight (LyCORIS's and peft's choice), or
        at zero."""
        t = torch.empty(shape, device=self.base.weight.device)
        return nn.init.zeros_(t) if zero else nn.init.kaiming_uniform_(t, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: r={self._rank[n]} alpha={self._alpha[n]:g} scale={self._scale[n]:g}"
                         f"{' merged' if n in self._merged else ''}" for n in self.adapters)


def tucker_kernel(t: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """A kxk kernel (out, in, k, k) from a Tucker core t (r, r, k, k) and factors w_a (r, out), w_b (r, in):
    sum_ij t[i, j] w_a[i, p] w_b[j, q] (peft's `make_weight_cp`)."""
    return torch.einsum("ijkl,ip,jq->pqkl", t, w_a, w_b)
