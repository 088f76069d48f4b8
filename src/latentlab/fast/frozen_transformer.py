"""A frozen transformer block (models/attention.py TransformerBlock) trained through its adapters, as one
autograd node.

Training LoRA on Stable Diffusion's U-Net is bound by the host: at batch 8 on an H100 the GPU waits for
Python and the autograd engine more than for its kernels. A transformer block records about 45 autograd
nodes (nine of them Python functions: the normalisations, the low-rank products, the gated feed-forward)
and makes about 15 module calls. Here it is one node: the forward pass calls the kernels directly, and
the backward pass chains their gradients by hand,

    x1 = x0 + attn1(norm1(x0)),  x2 = x1 + attn2(norm2(x1), context),  out = x2 + ff(norm3(x2)),

each projection a frozen weight plus, where an adapter trains, a low-rank term (fast/lowrank.py).
The attention itself keeps PyTorch's kernels and their backward: scaled_dot_product_attention is
recorded on its own (one node, whatever backend serves it) and differentiated by the engine from within
this node's backward pass.

It computes what the modules compute, with the same products, and saves what they save (each
sub-block's input with its normalisation's statistics, the inputs of the trained products, the
attention's operands, and the gated feed-forward's two halves). It applies in eager training when the
block's own weights are frozen: every projection a frozen linear layer or a layer that trains one
low-rank adapter (fast/lora.py `training_factors`: plain LoRA only), the normalisations frozen, no dropout, and a
large activation (activation_memory.MIN_ELEMENTS). Elsewhere the modules run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.attention import GEGLU, Attention, FeedForward
from . import activation_memory, lowrank
from .lora import training_factors
from .activation_memory import _arithmetic, _layer_norm_backward, _to
from .precision import compute_dtype

ENABLED = True
"""Run eligible blocks as one node; False runs the modules (benchmarks compare both)."""

_gelu_backward = torch.ops.aten.gelu_backward.default


def frozen_transformer_block(block: nn.Module, x: torch.Tensor, context: torch.Tensor,
                             mask: torch.Tensor | None) -> torch.Tensor | None:
    """block(x, context, mask) as one autograd node, or None where it does not apply (see the module's
    docstring); the caller then runs the modules."""
    if not _applies(block, x):
        return None
    context = context.to(x.dtype)
    a1, a2, ff = block.attn1, block.attn2, block.ff
    factors = (_factors((a1.to_q, a1.to_k, a1.to_v), x), _factors((a1.to_out[0],), x), _factors((a2.to_q,), x),
               _factors((a2.to_k, a2.to_v), context), _factors((a2.to_out[0],), x), _factors((ff.net[0].proj,), x),
               _factors((ff.net[2],), x))
    if None in factors:
        return None
    params = tuple(p for f in factors for p in f.params)
    if not (x.requires_grad or context.requires_grad or params):
        return None
    return _FrozenTransformerBlock.apply(x, context, mask, block, factors, *params)


def _applies(block: nn.Module, x: torch.Tensor) -> bool:
    """Cheap refusals first: a small map, autograd off, tokens not in the compute dtype, torch.compile,
    saved-tensor hooks (the attention's own node would escape their packing), an attention or feed-forward
    that is not the plain one (an adapter wrapping a whole attention: a prefix), dropout, a trained norm."""
    if x.numel() < activation_memory.MIN_ELEMENTS or not (ENABLED and activation_memory.ENABLED) \
            or not torch.is_grad_enabled() or x.dtype != compute_dtype(x) or torch.compiler.is_compiling() \
            or _saved_tensors_hooks_set():
        return False
    if not (isinstance(block.attn1, Attention) and isinstance(block.attn2, Attention)
            and isinstance(block.ff, FeedForward) and isinstance(block.ff.net[0], GEGLU)):
        return False
    dropouts = (block.attn1.to_out[1], block.attn2.to_out[1], block.ff.net[1])
    if any(d.training and d.p > 0 for d in dropouts):
        return False
    norms = (block.norm1, block.norm2, block.norm3)
    return all(type(n) is activation_memory.LayerNorm and not any(p.requires_grad for p in n.parameters())
               for n in norms)


def _saved_tensors_hooks_set() -> bool:
    """Whether saved-tensor hooks are set (torch.autograd.graph.saved_tensors_hooks, non-reentrant
    torch.utils.checkpoint); a torch that cannot tell is taken to have them."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return True
    try:
        return top(False) is not None
    except TypeError:  # before the argument ignore_is_tracing
        return top() is not None


def _factors(layers: tuple[nn.Module, ...], x: torch.Tensor) -> lowrank.Factors | None:
    """The layers' product for input x: frozen linear layers, or LoRA layers that train one adapter."""
    f = lowrank.frozen_linear(layers, x.dtype)
    return training_factors(layers, x) if f is None else f


class _FrozenTransformerBlock(torch.autograd.Function):
    """The block's input and the text are saved (autograd checks them for in-place writes); what the node
    computes itself, which nothing else can see, is kept per sub-block in `ctx.parts` and released as the
    backward pass leaves each, so that the block's memory falls as the modules' would."""

    @staticmethod
    def forward(ctx, x, context, mask, block, factors, *params):
        f_qkv, f_out1, f_q, f_kv, f_out2, f_proj, f_ff = factors
        B, N, C = x.shape
        x0 = x.reshape(B * N, C)
        n1, stats1 = _norm(x0, block.norm1)  # x1 = x0 + attn1(norm1(x0))
        qkv, h_qkv = lowrank.forward(n1, f_qkv)
        attn1 = _Attention(qkv.split(C, dim=-1), B, block.attn1.heads, None)
        y, h_out1 = lowrank.forward(attn1.o2, f_out1)
        x1 = y.add_(x0)
        n2, stats2 = _norm(x1, block.norm2)  # x2 = x1 + attn2(norm2(x1), context)
        q, h_q = lowrank.forward(n2, f_q)
        context2 = context.reshape(-1, context.shape[-1])
        kv, h_kv = lowrank.forward(context2, f_kv)
        attn2 = _Attention((q, *kv.split(C, dim=-1)), B, block.attn2.heads, mask)
        y, h_out2 = lowrank.forward(attn2.o2, f_out2)
        x2 = y.add_(x1)
        n3, stats3 = _norm(x2, block.norm3)  # out = x2 + W_ff (a * gelu(gate)), (a, gate) = W_proj norm3(x2)
        a, gate, h_proj = _geglu_input(n3, f_proj, block.ff.net[0].inner)
        y, h_ff = lowrank.forward(a * F.gelu(gate), f_ff)
        ctx.save_for_backward(x, context)
        ctx.parts = [(stats1, n1, h_qkv, attn1, h_out1), (x1, stats2, n2, h_q, h_kv, attn2, h_out2),
                     (x2, stats3, n3 if f_proj.trains else None, h_proj, a, gate, h_ff)]
        ctx.block, ctx.factors = block, factors
        return y.add_(x2).view(B, N, C)

    @staticmethod
    def backward(ctx, grad):
        x, context = ctx.saved_tensors
        block, factors, needs = ctx.block, ctx.factors, ctx.needs_input_grad
        grads = [()] * len(factors)  # the trained parameters' gradients, per product
        dx = _feed_forward_backward(grad.reshape(-1, grad.shape[-1]), ctx.parts.pop(), block, factors, grads)
        dx, dcontext = _cross_attention_backward(dx, ctx.parts.pop(), context.reshape(-1, context.shape[-1]), block,
                                                 factors, grads, needs[1])
        dx = _self_attention_backward(dx, ctx.parts.pop(), x.reshape(dx.shape), block, factors, grads, needs[0])
        params = (d for f, fg in zip(factors, grads) for d in (fg or (None,) * len(f.params)))
        return (None if dx is None else dx.view(grad.shape)), \
            (None if dcontext is None else dcontext.view(context.shape)), None, None, None, *params


def _feed_forward_backward(g, part, block, factors, grads):
    """x2's gradient through out = x2 + ff(norm3(x2)), from out's g."""
    x2, (mean, rstd), n3, h_proj, a, gate, h_ff = part
    f_proj, f_ff = factors[5], factors[6]
    gelu = F.gelu(gate)
    du, grads[6] = lowrank.backward(g, a * gelu if f_ff.trains else None, h_ff, f_ff)
    da = du * gelu
    del gelu
    dgate = _gelu_backward(du * a, gate)
    del du
    if f_proj.A is None:
        inner = da.shape[-1]
        dn3 = (da @ f_proj.W[:inner]).addmm_(dgate, f_proj.W[inner:])
    else:
        dn3, grads[5] = lowrank.backward(torch.cat([da, dgate], dim=-1), n3, h_proj, f_proj)
    del da, dgate
    return _norm_backward(dn3, x2, mean, rstd, block.norm3).add_(g)


def _cross_attention_backward(g, part, context2, block, factors, grads, context_grad):
    """(x1's gradient, the text's or None) through x2 = x1 + attn2(norm2(x1), context), from x2's g."""
    x1, (mean, rstd), n2, h_q, h_kv, attn, h_out = part
    f_q, f_kv, f_out = factors[2], factors[3], factors[4]
    do, grads[4] = lowrank.backward(g, attn.o2, h_out, f_out)
    kv_grads = f_kv.trains or context_grad
    dq, dk, dv = attn.backward(do, (True, kv_grads, kv_grads))
    dn2, grads[2] = lowrank.backward(_tokens(dq), n2, h_q, f_q)
    dcontext = None
    if kv_grads:
        dcontext, grads[3] = lowrank.backward(_tokens(dk, dv), context2, h_kv, f_kv, context_grad)
    return _norm_backward(dn2, x1, mean, rstd, block.norm2).add_(g), dcontext


def _self_attention_backward(g, part, x0, block, factors, grads, input_grad):
    """x0's gradient (None unless asked for) through x1 = x0 + attn1(norm1(x0)), from x1's g."""
    (mean, rstd), n1, h_qkv, attn, h_out = part
    f_qkv, f_out = factors[0], factors[1]
    do, grads[1] = lowrank.backward(g, attn.o2, h_out, f_out)
    dq, dk, dv = attn.backward(do, (True, True, True))
    dn1, grads[0] = lowrank.backward(_tokens(dq, dk, dv), n1, h_qkv, f_qkv, input_grad)
    return _norm_backward(dn1, x0, mean, rstd, block.norm1).add_(g) if input_grad else None


class _Attention:
    """Multi-head scaled-dot-product attention of q (M, C) to k and v (B L, C), recorded on its own so that
    the engine differentiates it (PyTorch's kernels for whatever backend serves it); o2 is the output as
    tokens (M, C), contiguous, for the output projection."""

    def __init__(self, qkv: tuple[torch.Tensor, ...], batch: int, heads: int, mask: torch.Tensor | None):
        C = qkv[0].shape[-1]
        with torch.enable_grad():
            self.inputs = [t.view(batch, -1, heads, C // heads).transpose(1, 2).detach().requires_grad_()
                           for t in qkv]
            self.o = F.scaled_dot_product_attention(*self.inputs,
                                                    attn_mask=None if mask is None else mask[:, None, None, :])
        self.o2 = self.o.detach().transpose(1, 2).reshape(-1, C)

    def backward(self, do2: torch.Tensor, wanted: tuple[bool, bool, bool]) -> list[torch.Tensor | None]:
        """(dq, dk, dv), each (B, heads, tokens, C / heads), None where not wanted."""
        B, heads, N, d = self.o.shape
        inputs = [t for t, w in zip(self.inputs, wanted) if w]
        grads = iter(torch.autograd.grad(self.o, inputs, do2.view(B, N, heads, d).transpose(1, 2)))
        self.inputs = self.o = None  # release the attention's saved tensors
        return [next(grads) if w else None for w in wanted]


def _tokens(*grads: torch.Tensor) -> torch.Tensor:
    """Attention-shaped gradients (B, heads, N, d) as tokens side by side, (B N, len(grads) heads d): the
    gradient of the product whose output they were split from, written in one pass."""
    B, heads, N, d = grads[0].shape
    if len(grads) == 1:
        return grads[0].transpose(1, 2).reshape(B * N, heads * d)
    return torch.stack([t.transpose(1, 2) for t in grads], dim=2).view(B * N, len(grads) * heads * d)


def _norm(x: torch.Tensor, norm: nn.LayerNorm) -> tuple[torch.Tensor, tuple]:
    """(norm(x) in x's dtype, (mean, 1/std)), computed as activation_memory.LayerNorm computes it."""
    arith = _arithmetic(x, norm.weight, norm.bias)
    y, mean, rstd = torch.native_layer_norm(x.to(arith), norm.normalized_shape, _to(norm.weight, arith),
                                            _to(norm.bias, arith), norm.eps)
    return y.to(x.dtype), (mean, rstd)


def _norm_backward(grad, x, mean, rstd, norm):
    arith = _arithmetic(x, norm.weight, norm.bias)
    return _layer_norm_backward(grad.to(arith), x.to(arith), norm.normalized_shape, mean, rstd, _to(norm.weight, arith),
                                _to(norm.bias, arith), [True, False, False])[0]


def _geglu_input(n3, f, inner):
    """(a, gate, h) of GEGLU's projection: with a frozen weight as two products, each half contiguous (as
    fast/modules.py FastGEGLU computes it at inference); with an adapter as one, chunked."""
    if f.A is None:
        bias = (None, None) if f.bias is None else (f.bias[:inner], f.bias[inner:])
        return F.linear(n3, f.W[:inner], bias[0]), F.linear(n3, f.W[inner:], bias[1]), None
    y, h = lowrank.forward(n3, f)
    return *y.chunk(2, dim=-1), h
