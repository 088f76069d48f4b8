"""Diffusion maths: schedules, the forward process, objectives, samplers and guidance. No networks."""

from .guidance import classifier_free_guidance
from .losses import l_simple
from .process import DiffusionConfig, predict_x0, q_posterior, q_sample
from .samplers import SAMPLERS, ddim, ddpm, get_sampler, timesteps_for
from .schedules import SCHEDULES, cosine_betas, linear_betas, make_betas

__all__ = [
    "DiffusionConfig", "SAMPLERS", "SCHEDULES", "classifier_free_guidance", "cosine_betas", "ddim", "ddpm",
    "get_sampler", "l_simple", "linear_betas", "make_betas", "predict_x0", "q_posterior", "q_sample",
    "timesteps_for",
]
