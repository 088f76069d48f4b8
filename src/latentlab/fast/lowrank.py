"""A frozen linear layer plus a trained low-rank term, for training: y = x W^T + b + s (x A^T) B^T.

LoRA (adapters/lora.py) trains A (r x in) and B (out x r) beside a frozen W (out x in). Several layers
that read the same x (q, k and v of an attention) stack into one: W = [W_1; ...; W_n],
A = [A_1; ...; A_n], B = diag(B_1, ..., B_n), so three products serve them all. `Factors` holds one
such product's operands in the compute dtype, `forward` and `backward` compute it and its gradients
directly with matrix products: the forward pass three (B's added into W's output in place), the backward
pass five, the input's gradient g W + s (g B) A accumulated in place. They serve LoRA's own autograd node
and the frozen transformer block (fast/frozen_transformer.py), which runs a whole block as one node.

With A = B = None, Factors is a plain frozen linear layer: y = x W^T + b, and backward gives the
input's gradient alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .precision import compute_copy, stacked_copy


class Factors(NamedTuple):
    """Operands of y = x W^T + b + s (x A^T) B^T in the compute dtype, detached; `params` are the trained
    float32 A_1..A_n, B_1..B_n, which receive the gradients (a convolution's 4-d A and B included)."""

    W: torch.Tensor
    bias: torch.Tensor | None
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scaling: float = 0.0
    n: int = 1
    params: tuple[torch.Tensor, ...] = ()

    @property
    def trains(self) -> bool:
        return bool(self.params)


def frozen_linear(layers: tuple[nn.Module, ...], dtype: torch.dtype) -> Factors | None:
    """Factors of frozen linear layers (nn.Linear, or 1x1 convolutions read as one over tokens) that read the
    same input, stacked when several (which then have no bias and equal 2-d shapes); None otherwise."""
    if not all(_frozen_matrix(layer) for layer in layers):
        return None
    if len(layers) == 1:
        bias = layers[0].bias
        return Factors(compute_copy(layers[0].weight, dtype).flatten(1),
                       None if bias is None else compute_copy(bias, dtype))
    if any(layer.bias is not None or layer.weight.dim() != 2 for layer in layers) \
            or len({layer.weight.shape for layer in layers}) > 1:
        return None
    return Factors(stacked_copy(tuple(layer.weight for layer in layers), dtype), None, n=len(layers))


def _frozen_matrix(layer: nn.Module) -> bool:
    """A frozen nn.Linear, or a frozen ungrouped 1x1 convolution."""
    if not (type(layer) is nn.Linear or isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1)
            and layer.groups == 1):
        return False
    return not layer.weight.requires_grad and (layer.bias is None or not layer.bias.requires_grad)


def forward(x2: torch.Tensor, f: Factors) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, h) for x2 (M, in): y (M, out), and h = x2 A^T (M, n r) that the backward pass reads."""
    out = F.linear(x2, f.W, f.bias)  # every operand is in x2's dtype already, so autocast casts nothing
    if f.A is None:
        return out, None
    h = F.linear(x2, f.A)
    return out.addmm_(h, f.B.t(), alpha=f.scaling), h


def backward(g: torch.Tensor, x2: torch.Tensor, h: torch.Tensor | None, f: Factors, input_grad: bool = True,
             param_grads: bool = True) -> tuple[torch.Tensor | None, tuple[torch.Tensor | None, ...]]:
    """(dx2, grads of f.params) from y's gradient g (M, out). The parameters' gradients come out of the
    products in their dtype (float32 from bf16 operands, on CUDA; elsewhere cast)."""
    g = g.to(f.W.dtype)
    s, n = f.scaling, f.n
    if f.A is None:
        return (g @ f.W if input_grad else None), ()
    gB = g @ f.B  # dL/dh / s, (M, n r)
    dx = (g @ f.W).addmm_(gB, f.A, alpha=s) if input_grad else None
    if not param_grads or not f.trains:
        return dx, (None,) * len(f.params)
    dtype = f.params[0].dtype
    dA = _scaled(_product_in(gB.t(), x2, dtype), s).split(f.A.shape[0] // n)
    dB = _block_gradients(g, h, n, dtype, s)
    grads = (d.view(p.shape) if p.dim() != 2 else d for d, p in zip((*dA, *dB), f.params))
    return dx, tuple(grads)


def _block_gradients(g: torch.Tensor, h: torch.Tensor, n: int, dtype: torch.dtype, s: float) -> tuple:
    """s g_i^T h_i for each of n stacked layers (g: (M, n C), h: (M, n r)), each contiguous: the diagonal
    blocks of s g^T h, without computing the others."""
    if n == 1:
        return (_scaled(_product_in(g.t(), h, dtype), s),)
    M = g.shape[0]
    gi = g.view(M, n, -1).permute(1, 2, 0)  # (n, C, M)
    hi = h.view(M, n, -1).transpose(0, 1)  # (n, M, r)
    return tuple(_scaled(_product_in(gi, hi, dtype, torch.bmm), s).unbind(0))


def _product_in(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, product=torch.mm) -> torch.Tensor:
    """product(a, b) (torch.mm or torch.bmm) written in `dtype`: by the product itself on CUDA (bf16 in,
    float32 out), else cast."""
    if a.dtype == dtype:
        return product(a, b)
    if a.is_cuda and dtype == torch.float32:
        return product(a, b, out_dtype=dtype)
    return product(a, b).to(dtype)


def _scaled(t: torch.Tensor, s: float) -> torch.Tensor:
    return t if s == 1 else t.mul_(s)
