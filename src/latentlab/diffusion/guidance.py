"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

from typing import Callable

import torch


def classifier_free_guidance(model: Callable[..., torch.Tensor], context: torch.Tensor, mask: torch.Tensor | None,
                             uncond_context: torch.Tensor, uncond_mask: torch.Tensor | None, scale: float,
                             extra: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
    """A network (x_t, t) -> out_uncond + scale * (out_cond - out_uncond).

    `extra`: further conditions the model takes by keyword, each {name: (conditional, unconditional)} (unCLIP's
    image embedding beside the text).

    Both halves run as one batch. Scale 1 is the conditional model alone; 0 the unconditional one.
    Every parameterisation (eps, x_0, v) is affine in the output at fixed x_t, so guiding the output
    guides the noise prediction alike. Learned-variance channels (those past x_t's) are not guided:
    they come from the conditional half, as in GLIDE (Nichol et al. 2022).
    """
    extra = extra or {}
    if scale == 1.0:
        conditions = {name: cond for name, (cond, _) in extra.items()}
        return lambda x_t, t: model(x_t, t, context, mask, **conditions)
    both_context = torch.cat([context, uncond_context])
    both_mask = None if mask is None else torch.cat([mask, uncond_mask])  # None: every token is real
    both = {name: torch.cat([cond, uncond]) for name, (cond, uncond) in extra.items()}

    def guided(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond, uncond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), both_context, both_mask, **both).chunk(2)
        c = x_t.shape[1]
        mean = uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([mean, cond[:, c:]], dim=1)

    return guided
