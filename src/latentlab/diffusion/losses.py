"""Training objectives."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .process import q_sample


def l_simple(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_0: torch.Tensor,
             alphas_cumprod: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """L_simple of Ho et al. (2020), eq. 14: E_{t, eps} || eps - eps_theta(x_t, t) ||^2, t uniform."""
    T = alphas_cumprod.shape[0]
    t = torch.randint(0, T, (x_0.shape[0],), device=x_0.device, generator=generator)
    eps = torch.randn(x_0.shape, device=x_0.device, dtype=x_0.dtype, generator=generator)
    x_t = q_sample(x_0, t, eps, alphas_cumprod)
    return F.mse_loss(model(x_t, t).float(), eps.float())
