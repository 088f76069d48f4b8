"""Gradient checkpointing: keep a block's inputs, recompute its activations in the backward pass.

`torch.utils.checkpoint` (non-reentrant) runs the block's first forward pass with autograd on: it records
every node and hands every tensor a node saves to a hook that drops it (a thousand per step at SD 1.5's
size), then records the graph again while recomputing. Where the host sets the pace (the eager training
step of an SD-size U-Net on an H100) that bookkeeping shows: without it the LoRA step runs 19% faster
(docs/lora.md).

`checkpoint` here runs the first pass under no_grad, as the reentrant variant does: no graph, no saved
tensors, no hooks. The backward pass recomputes the block with autograd on and differentiates it with
`torch.autograd.grad`. The block's trained parameters are inputs of the node, so that it joins the graph
even where none of its tensor inputs carries a gradient (a LoRA's first block: the frozen stem's output),
and so that their gradients come back as the node's own: `torch.autograd.grad` from outside works, where
the reentrant variant writes `.grad` instead. Autocast's state, and on request the RNG state, are restored
for the recomputation. In float32 it gives the values the first pass gave; in bf16 they can differ by
rounding, since under no_grad the lean layers of activation_memory.py take their inference paths (LoRA's
training node, which `first_pass()` asks for, does not): 0.02% of the gradients' norm on the tiny U-Net
(tests/fast/test_checkpointing.py).

torch.compile traces `torch.utils.checkpoint` (and not a node whose backward pass calls autograd), so
under compilation `checkpoint` hands over to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint


def checkpoint(function: Callable[..., torch.Tensor], *args, parameters: Sequence[torch.Tensor],
               preserve_rng_state: bool = False) -> torch.Tensor:
    """function(*args), one tensor, whose activations are recomputed in the backward pass.

    parameters: the trained tensors function reads besides args (those not requiring a gradient are
    skipped); one left out gets no gradient from this block, so list them all (UNet: Level.layer_parameters,
    whose gradients tests/fast/test_checkpointing.py compares with the block run plainly).
    preserve_rng_state: replay the random draws (dropout) in the recomputation.
    """
    if torch.compiler.is_compiling():
        return torch_checkpoint(function, *args, use_reentrant=False, preserve_rng_state=preserve_rng_state)
    trained = [p for p in parameters if p.requires_grad]
    return _Recompute.apply(function, preserve_rng_state, len(args), *args, *trained)


_state = threading.local()


def first_pass() -> bool:
    """Whether a checkpointed block's first pass runs now: under no_grad, though the block trains. Layers
    that train through a node of their own (adapters/lora.py) take it here too, so that the recomputation
    repeats this pass's products."""
    return getattr(_state, "depth", 0) > 0


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype, bool]:
    return (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type),
            torch.is_autocast_cache_enabled())


def _devices(tensors: Sequence[torch.Tensor]) -> list[torch.device]:
    return sorted({t.device for t in tensors if t.device.type == "cuda"}, key=str)


_TENSOR = object()  # marks where a tensor argument goes among the constant ones


class _Recompute(torch.autograd.Function):
    """(function, preserve_rng_state, n_args, *args, *parameters) -> function(*args), differentiable in the
    tensor args and the parameters."""

    @staticmethod
    def forward(ctx, function, preserve_rng_state, n_args, *inputs):
        args = inputs[:n_args]
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        ctx.function, ctx.preserve, ctx.parameters = function, preserve_rng_state, inputs[n_args:]
        ctx.constants = [_TENSOR if isinstance(a, torch.Tensor) else a for a in args]
        ctx.autocast = {d: _autocast_state(d) for d in {"cpu", *(t.device.type for t in tensors)}}
        ctx.devices = _devices(tensors) if preserve_rng_state else []
        if preserve_rng_state:
            ctx.rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in ctx.devices]
        ctx.save_for_backward(*tensors)
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return function(*args)  # autograd.Function.forward runs under no_grad: no graph, nothing saved
        finally:
            _state.depth -= 1

    @staticmethod
    def backward(ctx, grad_output):
        needs = ctx.needs_input_grad[3:]
        saved = iter(ctx.saved_tensors)
        args = [next(saved).detach().requires_grad_(need) if constant is _TENSOR else constant
                for constant, need in zip(ctx.constants, needs)]
        with torch.random.fork_rng(ctx.devices, enabled=ctx.preserve):
            if ctx.preserve:
                _set_rng_state(ctx.devices, *ctx.rng)
            with torch.enable_grad(), _autocast(ctx.autocast):
                output = ctx.function(*args)
        inputs = [*args, *ctx.parameters]
        wanted = [i for i, need in enumerate(needs) if need]
        grads = torch.autograd.grad(output, [inputs[i] for i in wanted], grad_output, allow_unused=True)
        result: list[torch.Tensor | None] = [None] * (3 + len(inputs))
        for i, grad in zip(wanted, grads):
            result[3 + i] = grad
        return tuple(result)


def _set_rng_state(devices: list[torch.device], cpu_state: torch.Tensor, cuda_states: list[torch.Tensor]):
    torch.set_rng_state(cpu_state)
    for device, state in zip(devices, cuda_states):
        torch.cuda.set_rng_state(state, device)


def _autocast(states: dict[str, tuple[bool, torch.dtype, bool]]) -> ExitStack:
    """Autocast as it was, on each device type, when the first pass ran."""
    stack = ExitStack()
    for device_type, (enabled, dtype, cache) in states.items():
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache))
    return stack
