"""The variational bound on -log p(x_0) (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, sec. 2.1), in bits.

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                  the prior term, no parameters
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))  Gaussians, in closed form
    L_0     = -log p(x_0 | x_1)                            the decoder: a Gaussian density for continuous
                                                           data (latents), or its integral over each 8-bit
                                                           bin of [-1, 1] for images (the discretised decoder)
Every term is averaged over dimensions and divided by ln 2: bits per dimension.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .denoiser import Denoised
from .process import gather, q_posterior, q_sample
from .reverse import grid_log_variances, p_mean_variance

DECODERS = ("continuous", "discretized")
LN2 = math.log(2)


def normal_kl(mean_1, log_var_1, mean_2, log_var_2) -> torch.Tensor:
    """KL(N(mean_1, exp(log_var_1)) || N(mean_2, exp(log_var_2))), elementwise, in nats."""
    return 0.5 * (-1 + log_var_2 - log_var_1 + (log_var_1 - log_var_2).exp()
                  + (mean_1 - mean_2) ** 2 * (-log_var_2).exp())


def gaussian_log_likelihood(x, mean, log_scale) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2), elementwise, in nats."""
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * (-log_scale).exp()) ** 2


def discretized_gaussian_log_likelihood(x, mean, log_scale, *, bins: int = 256) -> torch.Tensor:
    """log of the N(mean, exp(log_scale)^2) mass of x's bin, for x in [-1, 1] quantised to `bins` levels;
    the outermost bins reach to -inf and +inf (Ho et al. 2020, eq. 13). Elementwise, in nats."""
    half_bin = 1 / (bins - 1)
    inv_scale = (-log_scale).exp()
    upper, lower = (x - mean + half_bin) * inv_scale, (x - mean - half_bin) * inv_scale
    log_cdf_upper = torch.special.log_ndtr(upper)  # the bin reaching to -inf
    log_sf_lower = torch.special.log_ndtr(-lower)  # the bin reaching to +inf
    # a middle bin's mass, taken in whichever tail keeps the difference precise
    right = lower > 0
    mass = torch.where(right, torch.special.ndtr(-lower) - torch.special.ndtr(-upper),
                       torch.special.ndtr(upper) - torch.special.ndtr(lower))
    middle = mass.clamp(min=1e-12).log()
    return torch.where(x < -1 + half_bin, log_cdf_upper, torch.where(x > 1 - half_bin, log_sf_lower, middle))


def _mean_bits(values: torch.Tensor) -> torch.Tensor:
    """(B, ...) nats -> (B,) bits per dimension."""
    return values.flatten(1).mean(1) / LN2


def training_log_variances(alphas_cumprod: torch.Tensor):
    """(log beta_t, clipped log beta tilde_t) for every training timestep t = 0 .. T-1."""
    a = alphas_cumprod.flip(0)  # the full grid, T-1 down to 0
    a_prev = torch.cat([a[1:], a.new_ones(1)])
    log_beta, log_beta_tilde = grid_log_variances(a, a_prev)
    return log_beta.flip(0), log_beta_tilde.flip(0)


def prior_bits(x_0: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)), (B,) bits per dimension."""
    a = alphas_cumprod[-1].to(x_0.device, x_0.dtype)
    return _mean_bits(normal_kl(a.sqrt() * x_0, (1 - a).log(), torch.zeros_like(x_0), torch.zeros_like(x_0)))


def vlb_terms(denoised: Denoised, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              alphas_cumprod: torch.Tensor, *, variance: str, decoder: str = "continuous") -> torch.Tensor:
    """L_t for each example at its timestep t (B,): the KL term for t > 0, the decoder NLL at t = 0.

    (B,) bits per dimension. For the hybrid loss, pass a `denoised` whose x_0 is detached, so the
    term trains only the variance (Nichol & Dhariwal 2021, sec. 3.1).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; accepted: {', '.join(DECODERS)}")
    ac = alphas_cumprod.to(x_0.device)
    log_beta, log_beta_tilde = (gather(v, t, x_0) for v in training_log_variances(ac))
    a = gather(ac, t, x_0)
    a_prev = gather(torch.cat([ac.new_ones(1), ac[:-1]]), t, x_0)
    last = (t == 0).view_as(a)
    true_mean, _ = q_posterior(x_0, x_t, a, a_prev)
    mean, log_var = p_mean_variance(denoised, x_t, a, a_prev, log_beta, log_beta_tilde, variance, last)
    kl = _mean_bits(normal_kl(true_mean, log_beta_tilde, mean, log_var))
    log_likelihood = gaussian_log_likelihood if decoder == "continuous" else discretized_gaussian_log_likelihood
    nll = -_mean_bits(log_likelihood(x_0, mean, 0.5 * log_var))
    return torch.where(t == 0, nll, kl)


@torch.no_grad()
def nll_bits(denoise: Callable[..., Denoised], x_0: torch.Tensor, alphas_cumprod: torch.Tensor, *,
             variance: str = "small", decoder: str = "continuous", generator: torch.Generator | None = None,
             callback=None) -> dict[str, torch.Tensor]:
    """The full bound, every one of the T terms evaluated once per example (T network calls).

    Returns per-example (B,) tensors in bits per dimension: `total`, `prior` (L_T), `decoder` (L_0),
    and `terms`, (T,) the mean of each L_t over the batch.
    """
    T = alphas_cumprod.shape[0]
    x_0 = x_0.double()
    ac = alphas_cumprod.to(x_0.device, torch.float64)
    total = prior_bits(x_0, ac)
    prior = total.clone()
    terms = torch.zeros(T, dtype=torch.float64)
    for i, step in enumerate(range(T - 1, -1, -1)):
        t = torch.full((x_0.shape[0],), step, device=x_0.device, dtype=torch.long)
        noise = torch.randn(x_0.shape, generator=generator, device=generator.device if generator else x_0.device,
                            dtype=x_0.dtype).to(x_0.device)
        x_t = q_sample(x_0, t, noise, ac)
        denoised = denoise(x_t, t, ac[step])
        term = vlb_terms(denoised, x_0, x_t, t, ac, variance=variance, decoder=decoder)
        terms[step] = term.mean().cpu()
        total = total + term
        if callback is not None:
            callback(i, T)
    return {"total": total, "prior": prior, "decoder": term, "terms": terms}
