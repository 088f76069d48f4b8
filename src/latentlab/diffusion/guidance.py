"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

from typing import Callable

import torch


def classifier_free_guidance(model: Callable[..., torch.Tensor], context: torch.Tensor, mask: torch.Tensor,
                             uncond_context: torch.Tensor, uncond_mask: torch.Tensor, scale: float):
    """A denoiser (x_t, t) -> eps_uncond + scale * (eps_cond - eps_uncond).

    Both halves run as one batch. Scale 1 is the conditional model alone; 0 the unconditional one.
    """
    if scale == 1.0:
        return lambda x_t, t: model(x_t, t, context, mask)
    both_context = torch.cat([context, uncond_context])
    both_mask = torch.cat([mask, uncond_mask])

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both_context, both_mask).chunk(2)
        return eps_uncond + scale * (eps_cond - eps_uncond)

    return denoiser
