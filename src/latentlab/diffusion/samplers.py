"""Samplers: plain functions that turn pure noise x_T into x_0.

Every sampler has the signature
    sampler(denoiser, x_T, alphas_cumprod, steps, *, generator=None, callback=None) -> x_0
where `denoiser(x_t, t)` predicts the noise eps for 0-based training timesteps t (B,), and `steps` is
how many network evaluations to spend: the sampler walks a subsequence of the T training levels.
`callback(i, steps)` is called after each step (progress bars).
"""

from __future__ import annotations

from typing import Callable

import torch

from .process import predict_x0, q_posterior

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def timesteps_for(T: int, steps: int) -> list[int]:
    """`steps` training timesteps from T - 1 down to 0, evenly spaced (both ends included)."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the {T} training steps, got {steps}")
    if steps == 1:
        return [T - 1]
    return [round(i * (T - 1) / (steps - 1)) for i in range(steps - 1, -1, -1)]


def _levels(alphas_cumprod: torch.Tensor, timesteps: list[int], like: torch.Tensor):
    """alpha_bar at each visited step and at the step after it (1.0 after the last: x_0 itself)."""
    a = alphas_cumprod[timesteps].to(like.device, torch.float64)
    a_prev = torch.cat([a[1:], a.new_ones(1)])
    return a, a_prev


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


@torch.no_grad()
def ddpm(denoiser: Denoiser, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int | None = None, *,
         generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Ancestral sampling, Ho et al. (2020) Algorithm 2, with sigma_t^2 = beta tilde (the posterior variance).

    With fewer steps than T it samples the respaced process (Nichol & Dhariwal 2021, sec. 4).
    """
    T = alphas_cumprod.shape[0]
    timesteps = timesteps_for(T, steps or T)
    a, a_prev = _levels(alphas_cumprod, timesteps, x_T)
    x = x_T
    for i, t in enumerate(timesteps):
        eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x_0 = predict_x0(x.double(), eps.double(), a[i])
        mean, variance = q_posterior(x_0, x.double(), a[i], a_prev[i])
        x = (mean + variance.sqrt() * _noise(x, generator).double()).to(x_T.dtype)
        if callback is not None:
            callback(i, len(timesteps))
    return x


@torch.no_grad()
def ddim(denoiser: Denoiser, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 50, *,
         eta: float = 0.0, generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """DDIM, Song et al. (2021) eq. 12; eta = 0 is deterministic, eta = 1 is DDPM's posterior noise."""
    T = alphas_cumprod.shape[0]
    timesteps = timesteps_for(T, steps)
    a, a_prev = _levels(alphas_cumprod, timesteps, x_T)
    x = x_T
    for i, t in enumerate(timesteps):
        eps = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).double()
        # 1. predicted x_0, "predicted x_0" term of eq. 12
        x_0 = predict_x0(x.double(), eps, a[i])
        # 2. sigma_t, eq. 16
        sigma = eta * ((1 - a_prev[i]) / (1 - a[i]) * (1 - a[i] / a_prev[i])).sqrt()
        # 3. direction pointing to x_t, then the step
        x_prev = a_prev[i].sqrt() * x_0 + (1 - a_prev[i] - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * _noise(x, generator).double()
        x = x_prev.to(x_T.dtype)
        if callback is not None:
            callback(i, len(timesteps))
    return x


SAMPLERS = {"ddim": ddim, "ddpm": ddpm}


def get_sampler(name: str):
    """The sampler called `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
