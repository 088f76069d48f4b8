"""Weight-Decomposed Low-Rank Adaptation (DoRA, Liu et al. 2024): LoRA on a weight's direction, with its
magnitude trained apart.

Section 4.1 of the paper writes the adapted weight as a magnitude times a unit direction,

    W' = m (W0 + c B A) / ||W0 + c B A||_c        (eq. 5; c = alpha / r, B A LoRA's update)

where ||.||_c is the norm of each output's weights (the row of a linear layer's (out x in) weight, the
filter of a convolution's), and m, one number per output, starts at ||W0||_c, so that with B = 0 a new
adapter is the identity. A, B and m train; the norm is a constant to the gradient (section 4.3: it
still follows B A, but no gradient flows through it), as in peft. With g = m / ||W0 + c B A||_c the
adapter's term of the output is

    W' x - W0 x = (g - 1) W0 x + g c B A x

computed from W0 x (the base layer's output less its bias) and LoRA's low-rank product, never from W'.

The user's multiplier s interpolates between the base and the adapted layer, h = W0 x + s (W' - W0) x:
0 is the base layer exactly, 1 as trained (what peft computes). peft's own `set_scale` scales c instead,
which leaves m / ||W0|| in place at 0; the interpolation keeps the adapter interface's promise.

Merging adds s (W' - W0) to the base weight. W' depends on W0 itself (not only on the adapter), so a
merged adapter keeps the weight it added, in W0's dtype, to be unmerged exactly in any order, and every
adapter normalises against W0 without the ones merged (the layer's output is the same merged or not).

State-dict keys are peft's, relative to the layer: `lora_A.weight`, `lora_B.weight` and
`lora_magnitude_vector` (m: (out,) for a linear layer, (1, out, 1, 1) for a convolution, as peft holds it).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .base import AdapterDict
from .inject import add_adapter
from .lora import DEFAULT_ADAPTER, UNET_ATTENTION, LoRALayer


class DoRALayer(LoRALayer):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus named DoRA adapters: LoRA's A and B, and a magnitude m."""

    label = "DoRA"

    def __init__(self, base: nn.Linear | nn.Conv2d):
        super().__init__(base)
        self.lora_magnitude_vector = AdapterDict()  # adapter -> {"weight": m}
        self._merged_delta: dict[str, torch.Tensor] = {}  # adapter -> the weight merging added to W0

    def create(self, name: str, rank: int = 4, alpha: float | None = None, dropout: float = 0.0,
               dtype: torch.dtype | None = None) -> None:
        """LoRA's A and B (B at zero), and m = ||W0||_c: the adapter starts as the identity."""
        super().create(name, rank=rank, alpha=alpha, dropout=dropout, dtype=dtype)
        m = self.weight_norm(name).to(self.lora_A[name].weight.dtype)  # ||W0 + c B A||_c with B = 0
        shape = (-1,) if isinstance(self.base, nn.Linear) else (1, -1, 1, 1)  # peft's shapes
        self.lora_magnitude_vector[name] = nn.ParameterDict({"weight": nn.Parameter(m.view(shape))})

    def destroy(self, name: str) -> None:
        super().destroy(name)
        del self.lora_magnitude_vector[name]
        self._merged_delta.pop(name, None)  # (kept in W0 when removed with keep_merged)

    def trainable(self, name: str) -> list[nn.Parameter]:
        return [*super().trainable(name), self.magnitude(name)]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return {**super().adapter_state_dict(name), "lora_magnitude_vector": self.magnitude(name).detach()}

    # ------------------------------------------------------------------ the decomposition

    def magnitude(self, name: str) -> nn.Parameter:
        return self.lora_magnitude_vector[name]["weight"]

    def weight0(self) -> torch.Tensor:
        """W0: the base weight without the adapters merged into it."""
        W = self.base.weight
        if not self._merged_delta:
            return W
        return (W.float() - sum(d.float() for d in self._merged_delta.values())).to(W.dtype)

    @torch.no_grad()
    def weight_norm(self, name: str) -> torch.Tensor:
        """||W0 + c B A||_c (out,), float32: a constant to the gradient (section 4.3)."""
        A, B = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        V = self.weight0().float().flatten(1) + self.lora_scaling(name) * (B.flatten(1) @ A.flatten(1))
        return torch.linalg.vector_norm(V, dim=1)

    def lora_scaling(self, name: str) -> float:
        """c = alpha / r: the factor of B A in the direction (the user's multiplier s is not in it)."""
        return self._alpha[name] / self.rank(name)

    def gain(self, name: str) -> torch.Tensor:
        """g = m / ||W0 + c B A||_c (out,), float32; m keeps its gradient."""
        return self.magnitude(name).float().flatten() / self.weight_norm(name)

    def merge_factor(self, name: str) -> float:
        return self._scale[name]  # (with c = 0 the adapter still rescales W0: only s = 0 removes it)

    def delta_weight(self, name: str, factor: float | None = None) -> torch.Tensor:
        """s (W' - W0) = s (g (W0 + c B A) - W0) in W0's shape, float32 (at `factor` instead of s when given)."""
        A, B = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        W0 = self.weight0().float().flatten(1)
        V = W0 + self.lora_scaling(name) * (B.flatten(1) @ A.flatten(1))  # (out, in k k)
        delta = self.gain(name)[:, None] * V - W0
        return delta.view(self.base.weight.shape) * (self._scale[name] if factor is None else factor)

    # ------------------------------------------------------------------ merging

    @torch.no_grad()
    def merge(self, name: str) -> None:
        """W0 <- W0 + s (W' - W0), keeping that weight to unmerge it exactly."""
        if name in self._merged:
            return
        factor = self.merge_factor(name)
        delta = self.delta_weight(name, factor).to(self.base.weight.dtype)
        self._add_to_base(delta)
        self._merged_delta[name], self._merged[name] = delta, factor
        self._active = None

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self._merged:
            return
        self._add_to_base(-self._merged_delta.pop(name).float())
        del self._merged[name]
        self._active = None

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.on_tokens(x)
        out = self.product(self.base.weight, x, tokens, self.base.bias) if tokens else self.base(x)
        active = self.active()
        if active:  # W0 x, shared by the adapters: the output less its bias, unless some are merged into W
            merged = bool(self._merged_delta)
            Wx = self.product(self.weight0(), x, tokens, down=True) if merged else self.unbiased(out, tokens)
            for name in active:
                out = out + self.dora_delta(name, x, Wx)
        return out

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.dora_delta(name, x, self.product(self.weight0(), x, self.on_tokens(x), down=True))

    def dora_delta(self, name: str, x: torch.Tensor, Wx: torch.Tensor) -> torch.Tensor:
        """s ((g - 1) W0 x + g c B A x) for input x, given W0 x (both through dropout, as peft, when it applies)."""
        tokens = self.on_tokens(x)
        dropout = self.lora_dropout[name]
        if isinstance(dropout, nn.Dropout) and dropout.training:
            x = dropout(x)
            Wx = self.product(self.weight0(), x, tokens, down=True)
        A, B = self.lora_A[name].weight.to(x.dtype), self.lora_B[name].weight.to(x.dtype)
        BAx = self.product(B, self.product(A, x, tokens, down=True), tokens)
        g = self.gain(name).to(x.dtype)
        g = g[:, None, None] if x.dim() == 4 else g  # over the output channels of (B, C, H, W), else the last axis
        return self._scale[name] * ((g - 1) * Wx + g * (self.lora_scaling(name) * BAx))

    def unbiased(self, out: torch.Tensor, tokens: bool) -> torch.Tensor:
        """The base layer's output less its bias: W0 x."""
        bias = self.base.bias
        if bias is None:
            return out
        return out - (bias[:, None, None] if out.dim() == 4 and not tokens else bias)


def add_dora(model: nn.Module, adapter: str = DEFAULT_ADAPTER, *, rank: int = 4, alpha: float | None = None,
             dropout: float = 0.0, targets: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Add DoRA adapter `adapter` to every linear layer and convolution of `model` named by `targets`
    (patterns; default UNET_ATTENTION), rank r and alpha as LoRA's (None: alpha = r). The adapter's weights
    are float32 unless `dtype` says otherwise; W0 is frozen. Returns the module names. All or nothing."""
    return add_adapter(model, DoRALayer, adapter, UNET_ATTENTION if targets is None else targets,
                       rank=rank, alpha=alpha, dropout=dropout, dtype=dtype)
