"""Diffusion maths: schedules, the forward and reverse processes, objectives, the bound, samplers and
guidance. No networks."""

from .denoiser import Denoised, make_denoiser, observed, split_variance
from .guidance import classifier_free_guidance
from .inpainting import keep_known
from .importance import ImportanceSampler
from .likelihood import (DECODERS, discretized_gaussian_log_likelihood, gaussian_log_likelihood, nll_bits, normal_kl,
                         prior_bits, vlb_terms)
from .losses import WEIGHTINGS, Loss, diffusion_loss, loss_weight
from .process import (PREDICTIONS, DiffusionConfig, alpha_bar_at, predict_x0, prediction_target, q_posterior, q_sample,
                      sigma_to_t, sigmas_of, snr, x0_and_eps)
from .reverse import VARIANCES, grid_log_variances, p_log_variance, p_mean_variance
from .samplers import (SAMPLERS, SPACINGS, ddim, ddpm, dpmpp_2m, euler, get_sampler, heun, karras_sigmas,
                       sampler_options, start_level, timesteps_for)
from .schedules import SCHEDULES, cosine_betas, linear_betas, make_betas, rescale_zero_terminal_snr, scaled_linear_betas

__all__ = [
    "DECODERS", "Denoised", "DiffusionConfig", "ImportanceSampler", "Loss", "PREDICTIONS", "SAMPLERS", "SCHEDULES",
    "SPACINGS", "VARIANCES", "WEIGHTINGS", "alpha_bar_at", "classifier_free_guidance", "cosine_betas", "ddim", "ddpm",
    "diffusion_loss", "discretized_gaussian_log_likelihood", "dpmpp_2m", "euler", "gaussian_log_likelihood",
    "get_sampler", "grid_log_variances", "heun", "karras_sigmas", "keep_known", "linear_betas", "loss_weight", "observed",
    "make_betas", "make_denoiser", "nll_bits", "normal_kl", "p_log_variance", "p_mean_variance", "predict_x0",
    "prediction_target", "prior_bits", "q_posterior", "q_sample", "rescale_zero_terminal_snr", "sampler_options",
    "scaled_linear_betas", "sigma_to_t", "sigmas_of", "snr", "split_variance", "start_level", "timesteps_for",
    "vlb_terms", "x0_and_eps",
]
