"""Mixed precision: cast an activation to the autocast dtype once, where several products read it.

Under torch.autocast each matrix product casts its float32 input to bf16 (or fp16) itself, and
autograd keeps each cast for the backward pass. An activation read by several products (the
normalised tokens that q, k and v project, or a LoRA layer's input, read by W0 and by A) is then cast
and stored several times. Casting it once here makes one bf16 tensor that they all read and save.
"""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product of x runs in: autocast's when it is on for x's device and x is floating
    point, else x's own."""
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """x in autocast's dtype when autocast is on for x's device and x is floating point; else x."""
    return x.to(compute_dtype(x))
