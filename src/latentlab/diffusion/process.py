"""The DDPM forward process q(x_t | x_0) and its posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020).

Timesteps are 0-based indices into the schedule: t = 0 is the first noising step (beta_1 in the paper).
All coefficients come from `alphas_cumprod`, the one state a schedule has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import SCHEDULES, make_betas

PREDICTIONS = ("eps",)


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # one of schedules.SCHEDULES
    timesteps: int = 1000  # T, the number of training noise levels
    prediction: str = "eps"  # what the network predicts: the noise eps

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; accepted: {', '.join(PREDICTIONS)}")

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64, shape (T,)."""
        return torch.cumprod(1 - make_betas(self.schedule, self.timesteps), dim=0)


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against `like` (B, ...)."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def q_sample(x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. 4."""
    a = _gather(alphas_cumprod, t, x_0)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from x_t and the noise, eq. 4 solved for x_0 (alpha_bar broadcastable)."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def q_posterior(x_0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor):
    """Mean and variance of q(x_prev | x_t, x_0), eq. 7, between any two levels of the schedule.

    With alpha_bar_prev the level right before alpha_bar this is the paper's posterior; with a
    sparser subsequence it is the posterior of the respaced process (beta = 1 - alpha_bar / alpha_bar_prev).
    """
    beta = 1 - alpha_bar / alpha_bar_prev
    mean = (alpha_bar_prev.sqrt() * beta * x_0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)  # beta tilde
    return mean, variance
