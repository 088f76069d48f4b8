"""The reverse process p(x_prev | x_t) = N(mu_theta, sigma_t^2) between two levels of a time grid.

The mean is the posterior mean at the predicted x_0 (Ho et al. 2020, eq. 11). The variance is one of
  small    sigma_t^2 = beta tilde_t, the posterior variance (the lower bound on the optimal one),
  large    sigma_t^2 = beta_t (the upper bound),
  learned  log sigma_t^2 = frac log beta_t + (1 - frac) log beta tilde_t, frac = (v + 1) / 2, with v the
           network's variance output (Nichol & Dhariwal 2021, eq. 15).
A grid is a decreasing sequence of levels alpha_bar (all T training levels, or a respaced subset);
each step goes from alpha_bar to alpha_bar_prev, and the last step to alpha_bar_prev = 1, x_0 itself.
"""

from __future__ import annotations

import torch

from .denoiser import Denoised
from .process import q_posterior

VARIANCES = ("small", "large", "learned")


def grid_log_variances(alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor):
    """(log beta, log beta tilde) of each step of a grid, shape (n,) each, float64.

    beta tilde is 0 on the last step, so, as in Improved DDPM, it takes the value of the step before
    ("clipped"); with a single step it is floored at 1e-20.
    """
    beta = 1 - alpha_bar / alpha_bar_prev
    beta_tilde = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)
    if len(beta_tilde) > 1:
        beta_tilde = torch.cat([beta_tilde[:-1], beta_tilde[-2:-1]])
    return beta.clamp(min=1e-20).log(), beta_tilde.clamp(min=1e-20).log()


def check_variance(variance: str, learned: bool) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; accepted: {', '.join(VARIANCES)}")
    if variance == "learned" and not learned:
        raise ValueError("variance 'learned' needs a model trained with a learned variance; use 'small' or 'large'")


def p_log_variance(variance: str, log_beta: torch.Tensor, log_beta_tilde: torch.Tensor, last: torch.Tensor | bool,
                   v: torch.Tensor | None = None) -> torch.Tensor:
    """log sigma_t^2 for one step (tensors broadcastable against x); `last` marks the step to x_0."""
    if variance == "small":
        return log_beta_tilde
    if variance == "large":  # beta_t, but the clipped beta tilde on the step to x_0 (as Improved DDPM)
        return torch.where(torch.as_tensor(last, device=log_beta.device), log_beta_tilde, log_beta)
    if variance == "learned":
        if v is None:
            raise ValueError("variance 'learned' needs a model trained with a learned variance; use 'small' or 'large'")
        frac = (v + 1) / 2
        return frac * log_beta + (1 - frac) * log_beta_tilde
    raise ValueError(f"unknown variance {variance!r}; accepted: {', '.join(VARIANCES)}")


def p_mean_variance(denoised: Denoised, x_t: torch.Tensor, alpha_bar, alpha_bar_prev, log_beta, log_beta_tilde,
                    variance: str, last):
    """(mu_theta, log sigma_t^2) of p(x_prev | x_t)."""
    mean, _ = q_posterior(denoised.x_0, x_t, alpha_bar, alpha_bar_prev)
    return mean, p_log_variance(variance, log_beta, log_beta_tilde, last, denoised.v)
