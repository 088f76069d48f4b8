"""Training objectives: the weighted regression loss on the network's target, plus, for a learned
variance, the variational bound term of Improved DDPM's hybrid loss."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .denoiser import Denoised, split_variance
from .likelihood import vlb_terms
from .process import DiffusionConfig, gather, prediction_target, q_sample, snr, x0_and_eps

WEIGHTINGS = ("uniform", "min_snr")


def loss_weight(alpha_bar: torch.Tensor, prediction: str, weighting: str, gamma: float = 5.0) -> torch.Tensor:
    """Weight of the squared error on the network's own target at level alpha_bar.

    uniform: 1 (L_simple, Ho et al. 2020, eq. 14, for any target).
    min_snr: Hang et al. (2023): min(SNR, gamma) times the error in x_0. The error in eps is SNR times
    the error in x_0, and the error in v is (SNR + 1) times it, hence the divisors.
    """
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting {weighting!r}; accepted: {', '.join(WEIGHTINGS)}")
    s = snr(alpha_bar)
    clipped = s.clamp(max=gamma)
    return {"eps": clipped / s, "x0": clipped, "v": clipped / (s + 1)}[prediction]


class Loss(NamedTuple):
    loss: torch.Tensor  # (B,) per-example loss to average (times importance weights, if any)
    mse: torch.Tensor  # (B,) the weighted squared error on the target
    vlb: torch.Tensor | None  # (B,) L_t in bits per dimension (learned variance only)


def diffusion_loss(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_0: torch.Tensor,
                   alphas_cumprod: torch.Tensor, config: DiffusionConfig, *, t: torch.Tensor | None = None,
                   eps: torch.Tensor | None = None, weighting: str = "uniform", snr_gamma: float = 5.0,
                   vlb_weight: float = 1e-3, generator: torch.Generator | None = None) -> Loss:
    """The loss at timesteps t (uniform over the T levels when None) with noise eps (fresh when None).

    With a learned variance this is the hybrid loss L_simple + lambda L_vlb (Nichol & Dhariwal 2021,
    sec. 3.1), lambda = `vlb_weight`; the single-term estimate of L_vlb = sum_t L_t is T * L_t.
    """
    T = alphas_cumprod.shape[0]
    if t is None:
        t = torch.randint(0, T, (x_0.shape[0],), device=x_0.device, generator=generator)
    if eps is None:
        eps = torch.randn(x_0.shape, device=x_0.device, dtype=x_0.dtype, generator=generator)
    x_t = q_sample(x_0, t, eps, alphas_cumprod)
    output, v = split_variance(model(x_t, t).float(), x_0.shape[1])
    if config.learned_variance and v is None:
        raise ValueError("the config has a learned variance but the network outputs no variance channels")
    a = gather(alphas_cumprod.to(x_0.device), t, x_0.float())
    target = prediction_target(x_0.float(), eps.float(), a, config.prediction)
    weight = loss_weight(a.flatten(), config.prediction, weighting, snr_gamma)
    mse = weight * (output - target).pow(2).flatten(1).mean(1)
    if v is None:
        return Loss(mse, mse, None)
    # the bound trains the variance only: stop the gradient through the mean
    x0_hat, eps_hat = x0_and_eps(output.detach(), x_t.float(), a, config.prediction)
    vlb = vlb_terms(Denoised(x0_hat, eps_hat, v.clamp(-1, 1)), x_0.float(), x_t.float(), t, alphas_cumprod,
                    variance="learned")
    return Loss(mse + vlb_weight * T * vlb, mse, vlb)
