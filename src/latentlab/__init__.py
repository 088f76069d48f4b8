"""latentlab: latent diffusion models and their parameter-efficient fine-tuning, in PyTorch."""

from .pipeline import Pipeline

__version__ = "0.1.0"
__all__ = ["Pipeline", "__version__"]
