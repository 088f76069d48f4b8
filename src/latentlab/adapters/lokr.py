"""Low-rank Kronecker product adaptation (LoKr; KronA, Edalati et al. 2022, as LyCORIS trains it):

    Delta W = w1 (x) w2                     (Kronecker product; h = W0 x + s (alpha / r) Delta W x)

W0 (out x in) is split as out = a b and in = c d (`factorization`, LyCORIS's and peft's split: divisor
pairs near the square root, or `factor` when it divides); w1 (a x c) is the small factor, w2 (b x d) the
large one, held as a rank-r product w2_a w2_b when r < max(b, d) / 2 (and w1 as w1_a w1_b too with
`decompose_both`, when r < max(a, c) / 2). A convolution's w2 is (b x d x k x k), or its rank-r product
(b x r)(r x d k k), or with `tucker` a Tucker core t2 (r x r x k x k) and two r-row factors, as for LoHa.

Initialised as peft does: w1 (or w1_a) zero, the rest like nn.Linear's weight, so a new adapter is the
identity (LyCORIS itself zeroes w2 instead). State-dict keys are peft's: lokr_w1 or lokr_w1_a, lokr_w1_b;
lokr_w2 or lokr_w2_a, lokr_w2_b (and lokr_t2). adapters/lycoris.py applies, scales and merges it.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from .inject import add_adapter
from .lora import DEFAULT_ADAPTER, UNET_ATTENTION
from .lycoris import LycorisLayer, tucker_kernel


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """dimension = m n as LyCORIS and peft split it: (factor, dimension / factor) when `factor` divides it;
    otherwise the divisor pair nearest the square root whose divisor stays within `factor` (-1: any),
    smaller first."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    limit = dimension if factor == -1 else factor
    m, n = 1, dimension
    while m < n:
        d = next(d for d in range(m + 1, dimension + 1) if dimension % d == 0)  # the next divisor
        if d > limit:
            break
        m, n = d, dimension // d
    return min(m, n), max(m, n)


class LoKrLayer(LycorisLayer):
    """A frozen nn.Linear or nn.Conv2d (`base`) plus named LoKr adapters."""

    label = "LoKr"

    def make_factors(self, rank: int, factor: int = -1, decompose_both: bool = False,
                     tucker: bool = False) -> dict[str, torch.Tensor]:
        """w1 (a x c) at zero, or w1_a (a x r) at zero and w1_b (r x c); w2 full, or its rank-r factors (with
        `tucker`, for kxk convolutions: a core and two factors), like nn.Linear's weight."""
        out, inputs = self.base.weight.shape[:2]
        (a, b), (c, d), kernel, r = factorization(out, factor), factorization(inputs, factor), self.kernel(), rank
        if decompose_both and r < max(a, c) / 2:
            f = {"lokr_w1_a": self.init_factor(a, r, zero=True), "lokr_w1_b": self.init_factor(r, c)}
        else:
            f = {"lokr_w1": self.init_factor(a, c, zero=True)}
        if r >= max(b, d) / 2:
            return {**f, "lokr_w2": self.init_factor(b, d, *kernel)}
        if tucker and kernel not in ((), (1, 1)):
            return {**f, "lokr_w2_a": self.init_factor(r, b), "lokr_w2_b": self.init_factor(r, d),
                    "lokr_t2": self.init_factor(r, r, *kernel)}
        return {**f, "lokr_w2_a": self.init_factor(b, r), "lokr_w2_b": self.init_factor(r, d * math.prod(kernel))}

    def update(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        """w1 (x) w2: (a b, c d) or (a b, c d, k, k) = W0's shape, or (out, in k k)."""
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]  # (a, c)
        if "lokr_w2" in f:
            w2 = f["lokr_w2"]  # (b, d), or (b, d, k, k)
        elif "lokr_t2" in f:
            w2 = tucker_kernel(f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])  # (b, d, k, k)
        else:
            w2 = f["lokr_w2_a"] @ f["lokr_w2_b"]  # (b, d k k)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2.contiguous())  # (a Tucker kernel comes out of einsum strided)


def add_lokr(model: nn.Module, adapter: str = DEFAULT_ADAPTER, *, rank: int = 4, alpha: float | None = None,
             factor: int = -1, decompose_both: bool = False, tucker: bool = False,
             targets: Iterable[str] | None = None, dtype: torch.dtype | None = None) -> list[str]:
    """Add LoKr adapter `adapter` to every linear layer and convolution of `model` named by `targets`
    (patterns; default UNET_ATTENTION): rank r of the decomposed factors, alpha (None: alpha = r), the split
    `factor`, `decompose_both`, `tucker` (see the module docstring). The adapter's weights are float32 unless
    `dtype` says otherwise; W0 is frozen. Returns the module names. All or nothing."""
    return add_adapter(model, LoKrLayer, adapter, UNET_ATTENTION if targets is None else targets, rank=rank,
                       alpha=alpha, factor=factor, decompose_both=decompose_both, tucker=tucker, dtype=dtype)
