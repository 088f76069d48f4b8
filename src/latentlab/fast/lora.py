"""LoRA's fast path: `FastLoRALayer` computes what adapters/lora.py `LoRALayer` computes, faster.

In training, a layer that trains one adapter on a frozen linear layer runs as one autograd node
(`_LoRALinear`, over fast/lowrank.py's product), and several such layers that read the same input (q, k
and v of an attention) as one node over their stacked weights (`stacked`). At inference the adapters'
weights are read through compute copies (fast/precision.py), cast once per change rather than per call.

These nodes compute plain LoRA's maths, so they apply to exactly `LoRALayer`: fast/install.py swaps a
`LoRALayer` for a `FastLoRALayer`, and a subclass of `LoRALayer` (another adapter's maths, e.g. a learned
magnitude) is left as it is, computing its own forward.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters.lora import LoRALayer
from . import activation_memory, lowrank
from .activation_memory import recording
from .checkpointing import first_pass
from .precision import compute_copy, stacked_copy, to_autocast_dtype


class FastLoRALayer(LoRALayer):
    """LoRALayer with its training node and cached compute copies; no state of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active() and not self.on_tokens(x):  # every adapter merged or at scale 0: the base layer
            return self.base(x)
        x = to_autocast_dtype(x)  # one cast, read (and saved) by W0 and by every A
        out = _training_node([self], x)  # training this layer's one adapter
        if out is not None:
            return out
        tokens = self.on_tokens(x)
        out = self.product(self.base.weight, x, tokens, self.base.bias) if tokens else self.base(x)
        for name in self.active():
            A, B = _in_dtype(self.lora_A[name].weight, self.lora_B[name].weight, x.dtype)
            h = self.product(A, self.lora_dropout[name](x), tokens, down=True)
            out = torch.add(out, self.product(B, h, tokens), alpha=self.scaling(name))
        return out

    def trained(self, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor] | None:
        """(scaling, A, B) when this layer can train through `_LoRALinear`: one active adapter on a frozen
        linear layer (or 1x1 convolution over tokens), without dropout, while autograd records outside
        torch.compile, or in a checkpointed block's first pass (fast/checkpointing.py), which the
        recomputation then repeats product for product. (On the hot path of every training step: few lookups.)"""
        base = self.base
        weight, bias = base.weight, base.bias
        if weight.requires_grad or bias is not None and bias.requires_grad:
            return None
        if not (isinstance(base, nn.Linear) or x.dim() == 3 and base.kernel_size == (1, 1)):
            return None
        active = self.active()
        if len(active) != 1:
            return None
        name = active[0]
        A, B, dropout = self.lora_A[name].weight, self.lora_B[name].weight, self.lora_dropout[name]
        if dropout.training and isinstance(dropout, nn.Dropout):  # (the trainer keeps the base in eval mode)
            return None
        trains = recording(x, A, B) or first_pass() and activation_memory.ENABLED and A.requires_grad
        return (self.scaling(name), A, B) if trains else None


def stacked(layers: tuple[nn.Module, ...], x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """Each layer's output for the same input x (q, k and v of one attention), computed by one `_LoRALinear`
    node over their stacked weights when each is a FastLoRALayer training one adapter on a frozen linear
    layer; None otherwise (apply them one by one)."""
    if not all(type(layer) is FastLoRALayer for layer in layers):
        return None
    out = _training_node(layers, x)
    return None if out is None else out.split([layer.base.weight.shape[0] for layer in layers], dim=-1)


def training_factors(layers: tuple[nn.Module, ...], x: torch.Tensor) -> lowrank.Factors | None:
    """The low-rank product (fast/lowrank.py) that computes these layers' outputs for x, stacked when several,
    in x's dtype: when each is a FastLoRALayer that trains one adapter (`trained`) and, for several, they
    share a scaling and have no bias, equal widths and equal ranks (as attention's q, k and v)."""
    if not all(type(layer) is FastLoRALayer for layer in layers):
        return None
    trained = [layer.trained(x) for layer in layers]
    if None in trained:
        return None
    scaling, dtype = trained[0][0], x.dtype
    A, B = tuple(t[1] for t in trained), tuple(t[2] for t in trained)
    frozen = lowrank.frozen_linear(tuple(layer.base for layer in layers), dtype)  # W0 (stacked), b
    if frozen is None or any(t[0] != scaling for t in trained) or len({a.shape[0] for a in A}) > 1:
        return None  # (stacks of equal layers without bias, of one scaling and one rank, as attention's)
    if len(layers) == 1:
        return frozen._replace(A=_matrix(compute_copy(A[0], dtype)), B=_matrix(compute_copy(B[0], dtype)),
                               scaling=scaling, params=(*A, *B))
    return frozen._replace(A=stacked_copy(A, dtype), B=stacked_copy(B, dtype, diagonal=True), scaling=scaling,
                           params=(*A, *B))


def _training_node(layers, x: torch.Tensor) -> torch.Tensor | None:
    """The layers' outputs for input x, side by side on the last dimension, from one `_LoRALinear` node;
    None unless each layer trains one adapter through it (`training_factors`)."""
    f = training_factors(layers, x)
    return None if f is None else _LoRALinear.apply(x, f, *f.params)


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight, or a 1x1 convolution's as one: (out, in)."""
    return weight if weight.dim() == 2 else weight.flatten(1)


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T as one autograd node, for training the adapters of frozen linear layers:
    one layer's (W = W0), or those of n layers that read the same x, stacked (fast/lowrank.py: q, k and v
    of an attention in three products, not nine).

    The plain composition records seven nodes per layer (W0's product, A's and B's casts and products, the
    scaling, the sum) and adds the two paths' input gradients in a separate pass. W, A and B come in the
    compute dtype (fast/precision.py: cast or stacked once per optimiser step); the float32 A_i and B_i
    (`params`) only receive their gradients. Saved: x (which other layers usually save too), the small
    h = x A^T, and the weights in the compute dtype."""

    @staticmethod
    def forward(ctx, x, f, *params):
        x2 = x.reshape(-1, x.shape[-1])
        out, h = lowrank.forward(x2, f)
        ctx.save_for_backward(x2, h, f.W, f.bias, f.A, f.B)
        ctx.f, ctx.x_shape = f._replace(W=None, bias=None, A=None, B=None), x.shape
        return out.view(*x.shape[:-1], f.W.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, h, W, bias, A, B = ctx.saved_tensors
        f, needs = ctx.f._replace(W=W, bias=bias, A=A, B=B), ctx.needs_input_grad
        dx, grads = lowrank.backward(grad.reshape(-1, grad.shape[-1]), x2, h, f, needs[0], any(needs[2:]))
        return (None if dx is None else dx.view(ctx.x_shape)), None, *grads


def _in_dtype(A: torch.Tensor, B: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B in the compute dtype: differentiable casts where autograd records or torch.compile traces,
    else the cached compute copies (sampling reads the same weights step after step)."""
    if torch.compiler.is_compiling() or torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return A.to(dtype), B.to(dtype)
    return compute_copy(A, dtype), compute_copy(B, dtype)

