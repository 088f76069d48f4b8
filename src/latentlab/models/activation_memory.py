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

Each is exact: the same forward values as the plain layers, and gradients equal to autograd's up to
float rounding. They apply in eager training; under torch.compile the plain layers run, since the
compiler chooses for itself what to save and recompute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def recording(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether autograd records this call, outside torch.compile: x or a parameter needs a gradient."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return x.requires_grad or any(p is not None and p.requires_grad for p in params)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product would run in: autocast's when it is on for x's device, else x's."""
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


# ---------------------------------------------------------------------------------------- convolution


class Conv2d(nn.Conv2d):
    """nn.Conv2d that, with its weight and bias frozen, saves none of its input for the backward pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
        if frozen and self.padding_mode == "zeros" and recording(x):
            return _FrozenConv2d.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return super().forward(x)


class _FrozenConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        dtype = compute_dtype(x)
        weight = weight.to(dtype)
        ctx.save_for_backward(weight)
        ctx.conv = (x.shape, x.dtype, stride, padding, dilation, groups)
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.to(dtype), weight, None if bias is None else bias.to(dtype),
                            stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, dtype, stride, padding, dilation, groups = ctx.conv
        dx = torch.nn.grad.conv2d_input(shape, weight, grad.to(weight.dtype), stride, padding, dilation, groups)
        return dx.to(dtype), None, None, None, None, None, None


# ---------------------------------------------------------------------------------------- normalisation


def group_norm_act(x: torch.Tensor, norm: nn.GroupNorm, silu: bool) -> torch.Tensor:
    """silu(norm(x)) (or norm(x)) for training: float32 arithmetic, the result in the compute dtype,
    x saved as it came."""
    return _GroupNormAct.apply(x, norm.weight, norm.bias, norm.num_groups, norm.eps, silu, compute_dtype(x))


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups, eps, silu, dtype):
        ctx.arith = _arithmetic(x, weight, bias)
        with torch.autocast(x.device.type, enabled=False):
            y, mean, rstd = _group_norm(x, weight, bias, groups, eps, ctx.arith)
            out = (F.silu(y) if silu else y).to(dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.eps, ctx.silu = groups, eps, silu
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        N, C, HxW = x.shape[0], x.shape[1], x[0, 0].numel()
        grad = grad.to(ctx.arith).contiguous()  # cuDNN hands back channels-last gradients; the kernels read NCHW
        if ctx.silu:  # through SiLU, at the recomputed y = norm(x)
            y = _group_norm(x, weight, bias, ctx.groups, ctx.eps, ctx.arith)[0]
            grad = torch.ops.aten.silu_backward(grad, y)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_group_norm_backward(grad, x.to(ctx.arith).contiguous(), mean, rstd, _to(weight, ctx.arith),
                                                               N, C, HxW, ctx.groups, mask)
        return (_cast(dx, x), _cast(dw, weight), _cast(db, bias), None, None, None, None)


def _group_norm(x, weight, bias, groups, eps, dtype):
    """(y, mean, 1/std) of GroupNorm, read and written in `dtype` (accumulated in float32 whatever it is)."""
    N, C, HxW = x.shape[0], x.shape[1], x[0, 0].numel()
    return torch.ops.aten.native_group_norm(x.to(dtype).contiguous(), _to(weight, dtype), _to(bias, dtype), N, C, HxW, groups, eps)


def _arithmetic(x: torch.Tensor, *params: torch.Tensor | None) -> torch.dtype:
    """The dtype a normalisation reads and writes: x's own when its parameters share it (a frozen bf16
    base: the kernels accumulate in float32 anyway), else float32 (bf16 activations, float32 weights)."""
    return x.dtype if all(p is None or p.dtype == x.dtype for p in params) else torch.float32


def _to(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that, when autograd records, computes in float32, returns the compute dtype (bf16
    under autocast) and saves its input as it came rather than a float32 copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if recording(x, self.weight, self.bias):
            return _LayerNorm.apply(x, self.weight, self.bias, self.normalized_shape, self.eps, compute_dtype(x))
        return super().forward(x)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, shape, eps, dtype):
        ctx.arith, ctx.shape = _arithmetic(x, weight, bias), shape
        with torch.autocast(x.device.type, enabled=False):
            y, mean, rstd = torch.ops.aten.native_layer_norm(x.to(ctx.arith).contiguous(), shape, _to(weight, ctx.arith),
                                                             _to(bias, ctx.arith), eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y.to(dtype)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        dtype = ctx.arith
        dx, dw, db = torch.ops.aten.native_layer_norm_backward(grad.to(dtype).contiguous(), x.to(dtype).contiguous(), ctx.shape, mean, rstd,
                                                               _to(weight, dtype), _to(bias, dtype), mask)
        return _cast(dx, x), _cast(dw, weight), _cast(db, bias), None, None, None


def _cast(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if grad is None or like is None else grad.to(like.dtype)


# ---------------------------------------------------------------------------------------- GEGLU


def geglu(a: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """a * gelu(gate), saving a and gate only when autograd records."""
    if recording(a) or recording(gate):
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
        dgate = torch.ops.aten.gelu_backward(grad * a, gate) if ctx.needs_input_grad[1] else None
        return da, dgate
