"""Exponential moving average of a model's weights (Polyak averaging), the weights that get shipped."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """shadow <- d * shadow + (1 - d) * weights, with d warming up as (1 + step) / (10 + step)."""
        d = min(self.decay, (1 + step) / (10 + step))
        shadow = [p for p in self.model.parameters()]
        torch._foreach_lerp_(shadow, [p.detach() for p in model.parameters()], 1 - d)
