"""Layers that keep for the backward pass only what their gradients need.

Training memory is mostly the activations autograd saves. Four kinds of layer save more than their
gradients need, and matter most when the network is frozen (LoRA) or trains under autocast:

* A convolution saves its input for the weight's gradient. A frozen convolution has none to compute:
  the input's gradient is the transposed convolution of the output's gradient with W alone. `Conv2d`
  then saves nothing but W (a parameter, no new memory). (A linear layer with a frozen weight already
  saves only W: PyTorch skips saving the input when its weight needs no gradient.)
* GroupNorm and LayerNorm run in float32 under autocast, so autograd saves a float32 copy of their
  bf16 input, and SiLU saves the normalised map again. `group_norm_act` and `LayerNorm` save the
  input as it came (bf16) with the per-group mean and 1/std, and recompute the normalisation (and
  SiLU) in the backward pass: a bandwidth-bound pass, cheap beside the convolutions. With weights of
  the input's dtype (a frozen bf16 base) they read and write that dtype, with no float32 copies, as
  the kernels accumulate in float32 anyway; with float32 weights they compute in float32.
* GEGLU, a * gelu(g), saves a, g and gelu(g); `geglu` saves a and g and recomputes gelu(g).

A frozen residual block (`frozen_res_block`) goes one step further: it saves what its lean layers save but
runs as one autograd node, its backward pass calling the kernels directly, where autograd would record and
schedule about ten nodes on the host.

Each computes what the plain layer computes (a normalisation with bf16 weights in bf16, where autocast
would use float32: within bf16 rounding of it), with gradients equal to autograd's up to float rounding.
They apply in eager training; under torch.compile the plain layers run, since the
compiler chooses for itself what to save and recompute. Eager training of a large U-Net is bound by
the host as much as by the GPU, so these functions call ATen's operators directly (no autocast
contexts: every input is cast to the compute dtype first), one autograd node per layer.
Set `ENABLED = False` to run the plain layers (benchmarks compare both); activations under
`MIN_ELEMENTS` always take them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import compute_dtype

ENABLED = True
"""Use the lean layers when autograd records; False runs PyTorch's layers (for comparisons)."""

MIN_ELEMENTS = 1 << 21
"""Smaller activations take PyTorch's layers: their memory is little, and a Python autograd node costs the
host more than the two to four C++ nodes it replaces. (Training the shipped shapes model, batch 256 of 8x8
latents, whose largest maps hold 1M elements, ran 16% slower on one H100 with every layer lean; Stable
Diffusion's maps at batch 8 hold 2.6M to 21M elements above its 8x8 level.)"""

_aten = torch.ops.aten
_conv_backward = _aten.convolution_backward.default
_group_norm_backward = _aten.native_group_norm_backward.default
_layer_norm_backward = _aten.native_layer_norm_backward.default
_silu_backward = _aten.silu_backward.default
_gelu_backward = _aten.gelu_backward.default


def lean(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether a lean layer should take x: a large activation, with autograd recording."""
    return x.numel() >= MIN_ELEMENTS and recording(x, *params)


def recording(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether autograd records this call, outside torch.compile: x or a parameter needs a gradient."""
    needs_grad = x.requires_grad or any(p is not None and p.requires_grad for p in params)
    return needs_grad and ENABLED and torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _cast(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if grad is None or like is None else grad.to(like.dtype)


def _arithmetic(x: torch.Tensor, *params: torch.Tensor | None) -> torch.dtype:
    """The dtype a normalisation reads and writes: x's own when its parameters share it (a frozen bf16
    base: the kernels accumulate in float32 anyway), else float32 (bf16 activations, float32 weights)."""
    return x.dtype if all(p is None or p.dtype == x.dtype for p in params) else torch.float32


def _param_mask(ctx, weight, bias) -> list[bool]:
    return [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2]]


# ---------------------------------------------------------------------------------------- convolution


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, with its weight and bias frozen, saves none of its input for the backward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        if frozen and self.padding_mode == "zeros" and lean(x):
            return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return super().forward(x)


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        dtype = compute_dtype(x)
        weight = weight.to(dtype)
        ctx.save_for_backward(weight)
        ctx.conv = (x.shape, x.dtype, stride, padding, dilation, groups)
        return F.conv2d(x.to(dtype), weight, _to(bias, dtype), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, groups = ctx.conv
        return _conv_input_grad(grad, weight, shape, stride, padding, dilation, groups).to(dtype), \
            None, None, None, None, None, None


def _conv_input_grad(grad, weight, shape, stride, padding, dilation, groups):
    """The gradient of a convolution's input (of `shape`) from its output's: the transposed convolution."""
    x = grad.new_empty(1).expand(shape)  # only its shape is read when no weight gradient is asked for
    return _conv_backward(grad.to(weight.dtype), x, weight, None, stride, padding, dilation, False, (0, 0),
                          groups, (True, False, False))[0]


# ---------------------------------------------------------------------------------------- normalisation


def group_norm_act(x: torch.Tensor, norm: nn.GroupNorm, silu: bool) -> torch.Tensor:
    """silu(norm(x)) (or norm(x)) for training: the result in the compute dtype, x saved as it came."""
    return _GroupNormAct.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu, compute_dtype(x))


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, silu, dtype):
        ctx.arith, ctx.groups, ctx.eps, ctx.silu = _arithmetic(x, weight, bias), groups, eps, silu
        y, mean, rstd = _group_norm(x, weight, bias, groups, eps, ctx.arith)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return (F.silu(y) if silu else y).to(dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = _group_norm_act_backward(grad, x, weight, bias, mean, rstd, ctx.groups, ctx.eps, ctx.silu,
                                              ctx.arith, _param_mask(ctx, weight, bias))
        return _cast(dx, x), _cast(dw, weight), _cast(db, bias), None, None, None, None


def _group_norm_act_backward(grad, x, weight, bias, mean, rstd, groups, eps, silu, arith, mask):
    """(dx, dw, db) of silu(group_norm(x)) (or group_norm(x)), in `arith`, recomputing the normalisation."""
    N, C = x.shape[0], x.shape[1]
    grad = grad.to(arith).contiguous()  # cuDNN hands back channels-last gradients; the kernels read NCHW
    if silu:  # through SiLU, at the recomputed y = norm(x)
        grad = _silu_backward(grad, _group_norm(x, weight, bias, groups, eps, arith)[0])
    return _group_norm_backward(grad, x.to(arith).contiguous(), mean, rstd, _to(weight, arith),
                                N, C, x.numel() // max(N * C, 1), groups, mask)


def _group_norm(x, weight, bias, groups, eps, dtype):
    """(y, mean, 1/std) of GroupNorm, read and written in `dtype` (accumulated in float32 whatever it is)."""
    N, C = x.shape[0], x.shape[1]
    return torch.native_group_norm(x.to(dtype).contiguous(), _to(weight, dtype), _to(bias, dtype), N, C,
                                   x.numel() // max(N * C, 1), groups, eps)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that, when autograd records, returns the compute dtype (bf16 under autocast) and saves
    its input as it came rather than a float32 copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if lean(x, self.weight, self.bias):
            return _LayerNorm.apply(x, self.weight, self.bias, self.normalized_shape, self.eps, compute_dtype(x))
        return super().forward(x)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shape, eps, dtype):
        arith = ctx.arith = _arithmetic(x, weight, bias)
        ctx.shape = shape
        y, mean, rstd = torch.native_layer_norm(x.to(arith).contiguous(), shape, _to(weight, arith), _to(bias, arith),
                                                eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        arith = ctx.arith
        dx, dw, db = _layer_norm_backward(grad.to(arith).contiguous(), x.to(arith).contiguous(), ctx.shape, mean, rstd,
                                          _to(weight, arith), _to(bias, arith), _param_mask(ctx, weight, bias))
        return _cast(dx, x), _cast(dw, weight), _cast(db, bias), None, None, None


# ---------------------------------------------------------------------------------------- GEGLU


def geglu(a: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """a * gelu(gate), saving a and gate only when autograd records."""
    if lean(a) or lean(gate):
        return _GEGLU.apply(a, gate)
    return a * F.gelu(gate)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, gate):
        ctx.save_for_backward(a, gate)
        return a * F.gelu(gate)

    @staticmethod
    def backward(ctx, grad):
        a, gate = ctx.saved_tensors
        da = grad * F.gelu(gate) if ctx.needs_input_grad[0] else None
        dgate = _gelu_backward(grad * a, gate) if ctx.needs_input_grad[1] else None
        return da, dgate


# ---------------------------------------------------------------------------------------- residual block


def frozen_res_block(block: nn.Module, x: torch.Tensor, e: torch.Tensor | None) -> torch.Tensor | None:
    """A frozen residual block (models/blocks.py ResBlock, "additive" time conditioning) as one autograd
    node: conv2(silu(norm2(conv1(silu(norm1(x))) + e))) + shortcut(x), with e the projected embedding.

    Autograd would record about ten nodes, each with the engine's bookkeeping on the host; this node
    computes the same products with none, and its backward pass calls the transposed convolutions and the
    normalisations' backward kernels directly. Saved: x and h = conv1(...) + e (as the lean layers save
    them) with the two normalisations' statistics. None where it does not apply: a weight that trains (an
    adapter on a convolution), dropout in training, an embedding that needs a gradient, or a small map."""
    if not lean(x) or e is not None and e.requires_grad or block.dropout.training and block.dropout.p > 0:
        return None  # (first, and cheap: every residual block asks, at inference too)
    convs = (block.conv1, block.conv2, block.conv_shortcut) if isinstance(block.conv_shortcut, nn.Conv2d) \
        else (block.conv1, block.conv2)
    if not all(type(c) is Conv2d and c.padding_mode == "zeros" for c in convs):
        return None
    params = (block.norm1.weight, block.norm1.bias, block.norm2.weight, block.norm2.bias,
              *(c.weight for c in convs), *(c.bias for c in convs))
    if any(p is not None and p.requires_grad for p in params):
        return None
    return _FrozenResBlock.apply(x, e, block)


class _FrozenResBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, e, block):
        dtype = compute_dtype(x)
        n1, n2 = block.norm1, block.norm2
        arith1 = _arithmetic(x, n1.weight, n1.bias)
        y, mean1, rstd1 = _group_norm(x, n1.weight, n1.bias, n1.num_groups, n1.eps, arith1)
        h = _conv(block.conv1, F.silu(y).to(dtype))
        if e is not None:
            h = h.add_(e.to(h.dtype))
        arith2 = _arithmetic(h, n2.weight, n2.bias)
        y, mean2, rstd2 = _group_norm(h, n2.weight, n2.bias, n2.num_groups, n2.eps, arith2)
        out = _conv(block.conv2, F.silu(y).to(dtype))
        skip = block.conv_shortcut
        out = out + (_conv(skip, x.to(dtype)) if isinstance(skip, nn.Conv2d) else x)
        ctx.save_for_backward(x, h, mean1, rstd1, mean2, rstd2)
        ctx.block, ctx.arith, ctx.dtype = block, (arith1, arith2), dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        x, h, mean1, rstd1, mean2, rstd2 = ctx.saved_tensors
        block, (arith1, arith2), dtype = ctx.block, ctx.arith, ctx.dtype
        n1, n2, skip = block.norm1, block.norm2, block.conv_shortcut
        input_only = [True, False, False]  # the normalisations' input gradients, not their weights
        g = _conv_input_grad(grad, block.conv2.weight.to(dtype), h.shape, *_geometry(block.conv2))
        g = _group_norm_act_backward(g, h, n2.weight, n2.bias, mean2, rstd2, n2.num_groups, n2.eps, True, arith2,
                                     input_only)[0]
        g = _conv_input_grad(g, block.conv1.weight.to(dtype), x.shape, *_geometry(block.conv1))
        dx = _group_norm_act_backward(g, x, n1.weight, n1.bias, mean1, rstd1, n1.num_groups, n1.eps, True, arith1,
                                      input_only)[0].to(x.dtype)
        if isinstance(skip, nn.Conv2d):
            dx += _conv_input_grad(grad, skip.weight.to(dtype), x.shape, *_geometry(skip))
        else:
            dx += grad
        return dx, None, None


def _geometry(conv: nn.Conv2d) -> tuple:
    return conv.stride, conv.padding, conv.dilation, conv.groups


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight.to(x.dtype), _to(conv.bias, x.dtype), conv.stride, conv.padding, conv.dilation,
                    conv.groups)

