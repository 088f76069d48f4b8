"""One wrapper makes any network a denoiser the samplers understand, whatever it predicts.

A network maps (x_t, t) to an output of x_t's channels (eps, x_0 or v, see `process.py`), plus as
many channels again when it learns its reverse variance. `make_denoiser` turns it into
`denoise(x_t, t, alpha_bar) -> Denoised(x_0, eps, v)`, so every sampler works with every model.
The sampler owns the time grid: it passes both the timestep the network is conditioned on and the
alpha_bar of that noise level, so neither is derived from the other twice.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .process import x0_and_eps

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Denoised(NamedTuple):
    x_0: torch.Tensor  # predicted data
    eps: torch.Tensor  # predicted noise
    v: torch.Tensor | None  # variance interpolation in [-1, 1] (Nichol & Dhariwal 2021, eq. 15), if learned


def split_variance(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean output, variance output or None) of a network output with `channels` or 2 * `channels` channels."""
    if output.shape[1] == channels:
        return output, None
    if output.shape[1] == 2 * channels:
        return output[:, :channels], output[:, channels:]
    raise ValueError(f"the network returned {output.shape[1]} channels for an input of {channels}; "
                     f"expected {channels}, or {2 * channels} with a learned variance")


def make_denoiser(model: Model, prediction: str = "eps") -> Callable[..., Denoised]:
    """denoise(x_t, t, alpha_bar) -> Denoised, computed in float64 whatever the network's dtype."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> Denoised:
        output, v = split_variance(model(x_t, t).double(), x_t.shape[1])
        x_0, eps = x0_and_eps(output, x_t.double(), alpha_bar, prediction)
        return Denoised(x_0, eps, None if v is None else v.clamp(-1, 1))

    return denoise


def observed(denoise: Callable[..., Denoised], watch: Callable[[torch.Tensor], None]) -> Callable[..., Denoised]:
    """The denoiser, calling `watch(x_0)` with each estimate of x_0 it makes (a page's preview of the image so
    far)."""

    def denoise_and_watch(x_t: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor) -> Denoised:
        out = denoise(x_t, t, alpha_bar)
        watch(out.x_0)
        return out

    return denoise_and_watch
