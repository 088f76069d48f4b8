"""Training runs: the autoencoder, then the latent diffusion model."""

from .diffusion import DiffusionTrainConfig, train_diffusion
from .presets import PRESETS, preset
from .vae import VAETrainConfig, train_vae

__all__ = ["DiffusionTrainConfig", "PRESETS", "VAETrainConfig", "preset", "train_diffusion", "train_vae"]
