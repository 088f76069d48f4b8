"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

from typing import Callable

import torch


def classifier_free_guidance(model: Callable[..., torch.Tensor], context: torch.Tensor, mask: torch.Tensor | None,
                             uncond_context: torch.Tensor, uncond_mask: torch.Tensor | None, scale: float):
    """A network (x_t, t) -> out_uncond + scale * (out_cond - out_uncond).

    Both halves run as one batch. Scale 1 is the conditional model alone; 0 the unconditional one.
    Every parameterisation (eps, x_0, v) is affine in the output at fixed x_t, so guiding the output
    guides the noise prediction alike. Learned-variance channels (those past x_t's) are not guided:
    they come from the conditional half, as in GLIDE (Nichol et al. 2022).
    """
    if scale == 1.0:
        return lambda x_t, t: model(x_t, t, context, mask)
    both_context = torch.cat([context, uncond_context])
    both_mask = None if mask is None else torch.cat([mask, uncond_mask])  # None: every token is real

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both_context, both_mask).chunk(2)
        c = x_t.shape[1]
        mean = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([mean, cond[:, c:]], dim=1)

    return guided
