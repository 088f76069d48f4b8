"""Networks: the U-Net denoiser, the autoencoder, the text encoder and its tokenizer."""

from .text_encoder import TextEncoder, TextEncoderConfig, encode_prompts
from .tokenizer import Tokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["AutoencoderKL", "TextEncoder", "TextEncoderConfig", "Tokenizer", "UNet", "UNetConfig", "VAEConfig",
           "encode_prompts"]
