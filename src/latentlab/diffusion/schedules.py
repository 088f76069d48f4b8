"""Noise schedules: pure functions from the number of steps T to the betas beta_1 .. beta_T.

Everything else about the forward process derives from the betas (see `process.py`).
"""

from __future__ import annotations

import math

import torch


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02, max_beta: float = 0.999) -> torch.Tensor:
    """Linear schedule of Ho et al. (2020), scaled by 1000 / T so any T spans about the same noise
    range (Nichol & Dhariwal 2021), each beta at most `max_beta`."""
    scale = 1000 / T
    return torch.linspace(beta_1 * scale, beta_T * scale, T, dtype=torch.float64).clamp(max=max_beta)


def scaled_linear_betas(T: int = 1000, beta_1: float = 0.00085, beta_T: float = 0.012) -> torch.Tensor:
    """Stable Diffusion's schedule (Rombach et al. 2022): linear in sqrt(beta), from 0.00085 to 0.012."""
    return torch.linspace(beta_1**0.5, beta_T**0.5, T, dtype=torch.float64) ** 2


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 exactly
    (the last step is pure noise, as at sampling time) while alpha_bar_1 keeps its value."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


SCHEDULES = {"linear": linear_betas, "scaled_linear": scaled_linear_betas, "cosine": cosine_betas}


def make_betas(name: str, T: int, *, zero_terminal_snr: bool = False) -> torch.Tensor:
    """The betas of the schedule called `name`, optionally rescaled to zero terminal SNR."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; accepted: {', '.join(SCHEDULES)}")
    if T < 2:
        raise ValueError(f"a schedule needs at least 2 steps, got {T}")
    betas = SCHEDULES[name](T)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas
