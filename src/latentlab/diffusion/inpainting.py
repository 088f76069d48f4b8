"""Inpainting with a model that never saw a mask: keep the known region by replacing the denoiser's estimate of
x_0 there with the known latents at every step (the replacement method of Song et al. 2021, sec. 5; RePaint,
Lugmayr et al. 2022, adds resampling).

    x_0' = m * x_0_hat + (1 - m) * z_known,    eps' = (x_t - sqrt(alpha_bar) x_0') / sqrt(1 - alpha_bar)

m is 1 where the model draws. With DDIM (eta 0) the known region then walks the path of its own starting noise
exactly, as diffusers' blending of x_{t-1} with the noised known latents does, and ends on z_known; every sampler
reads the same replaced estimate. Its limit: the network sees the known region only through x_t, so what it draws
in the hole may disagree with the border, above all at high noise. A model with inpainting input channels
(the masked image and the mask concatenated with x_t) does not need this.
"""

from __future__ import annotations

from typing import Callable

import torch

from .denoiser import Denoised


def keep_known(denoise: Callable[..., Denoised], z_known: torch.Tensor, m: torch.Tensor) -> Callable[..., Denoised]:
    """`denoise` with its x_0 estimate replaced by z_known where m (broadcast over channels) is 0."""
    z_known, m = z_known.double(), m.double()

    def replaced(x_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> Denoised:
        out = denoise(x_t, t, alpha_bar)
        x_0 = m * out.x_0 + (1 - m) * z_known
        a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x_t.device)
        eps = (x_t.double() - a.sqrt() * x_0) / (1 - a).clamp(min=1e-12).sqrt()
        return Denoised(x_0, m * out.eps + (1 - m) * eps, out.v)

    return replaced
