"""The DDPM forward process q(x_t | x_0), its posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020), and the
three equivalent things a network can predict: the noise eps, the data x_0, or the velocity v.

Timesteps are 0-based indices into the schedule: t = 0 is the first noising step (beta_1 in the paper).
All coefficients come from `alphas_cumprod` (alpha_bar), the one state a schedule has. With
x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, the velocity is v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
(Salimans & Ho 2022), and the signal-to-noise ratio is SNR = alpha_bar / (1 - alpha_bar).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedules import SCHEDULES, make_betas

PREDICTIONS = ("eps", "x0", "v")
MAX_TIMESTEPS = 100_000  # beyond any schedule in use; a typo's 10^12 levels would not fit in memory


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # one of schedules.SCHEDULES
    timesteps: int = 1000  # T, the number of training noise levels
    prediction: str = "eps"  # what the network predicts: eps (the noise), x0 (the data) or v (the velocity)
    learned_variance: bool = False  # the network also outputs the reverse variance (Nichol & Dhariwal 2021)
    zero_terminal_snr: bool = False  # rescale the schedule so alpha_bar_T = 0 (Lin et al. 2024)

    def __post_init__(self):
        if not 2 <= self.timesteps <= MAX_TIMESTEPS:
            raise ValueError(f"timesteps must be from 2 to {MAX_TIMESTEPS:,}, got {self.timesteps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; accepted: {', '.join(PREDICTIONS)}")
        if self.zero_terminal_snr and self.prediction == "eps":
            raise ValueError("at zero terminal SNR x_T holds no signal, so x_0 cannot be recovered from a noise "
                             "prediction; use prediction 'v' or 'x0'")

    def alphas_cumprod(self) -> torch.Tensor:
        """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64, shape (T,)."""
        betas = make_betas(self.schedule, self.timesteps, zero_terminal_snr=self.zero_terminal_snr)
        return torch.cumprod(1 - betas, dim=0)


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast against `like` (B, ...)."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def q_sample(x_0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. 4."""
    a = gather(alphas_cumprod, t, x_0)
    return a.sqrt() * x_0 + (1 - a).sqrt() * eps


def q_posterior(x_0: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_prev: torch.Tensor):
    """Mean and variance of q(x_prev | x_t, x_0), eq. 7, between any two levels of the schedule.

    With alpha_bar_prev the level right before alpha_bar this is the paper's posterior; with a
    sparser subsequence it is the posterior of the respaced process (beta = 1 - alpha_bar / alpha_bar_prev).
    """
    beta = 1 - alpha_bar / alpha_bar_prev
    mean = (alpha_bar_prev.sqrt() * beta * x_0 + (1 - beta).sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)  # beta tilde
    return mean, variance


# ------------------------------------------------------------------ parameterisations


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from x_t and the noise, eq. 4 solved for x_0 (alpha_bar broadcastable)."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def x0_and_eps(output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction: str):
    """(x_0, eps) implied by a network `output` that predicts `prediction` at x_t."""
    a = alpha_bar
    if prediction == "eps":
        return predict_x0(x_t, output, a), output
    if prediction == "x0":
        return output, (x_t - a.sqrt() * output) / (1 - a).sqrt()
    if prediction == "v":
        return a.sqrt() * x_t - (1 - a).sqrt() * output, (1 - a).sqrt() * x_t + a.sqrt() * output
    raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")


def prediction_target(x_0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """What a network predicting `prediction` should output for the pair (x_0, eps)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x_0
    if prediction == "v":
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x_0
    raise ValueError(f"unknown prediction {prediction!r}; accepted: {', '.join(PREDICTIONS)}")


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) (Kingma et al. 2021)."""
    return alpha_bar / (1 - alpha_bar)


# ------------------------------------------------------------------ continuous timesteps


def sigmas_of(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of each level: x_t / sqrt(alpha_bar_t) is x_0 plus noise
    of this standard deviation. A zero terminal alpha_bar is taken as 2^-24, so sigma_T is finite."""
    a = alphas_cumprod.double()
    a = torch.where(a > 0, a, torch.full_like(a, 2.0**-24))
    return ((1 - a) / a).sqrt()


def sigma_to_t(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The fractional training timestep of a noise level sigma = sqrt((1 - alpha_bar) / alpha_bar),
    interpolating linearly in log sigma between the two training levels around it (Karras et al. 2022)."""
    log_sigmas = sigmas_of(alphas_cumprod).log().to(sigma.device)
    log_sigma = sigma.double().clamp(min=1e-10).log()
    # index of the last training level at or below log_sigma, kept one short of the end
    low = (log_sigma[None] >= log_sigmas[:, None]).sum(0).sub(1).clamp(0, len(log_sigmas) - 2)
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1])).clamp(0, 1)
    return (1 - w) * low + w * (low + 1)


def alpha_bar_at(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar at fractional timesteps t, the inverse of `sigma_to_t` (exact at integer t)."""
    log_sigmas = sigmas_of(alphas_cumprod).log().to(t.device)
    t = t.double().clamp(0, len(log_sigmas) - 1)
    low = t.floor().long().clamp(max=len(log_sigmas) - 2)
    w = t - low
    log_sigma = (1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]
    return 1 / (1 + (2 * log_sigma).exp())
