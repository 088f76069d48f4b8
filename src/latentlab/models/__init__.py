"""Networks: the U-Net denoiser, the autoencoder, the text encoder and its tokenizer."""

from .clip import CLIPTextConfig, CLIPTextModel
from .text_encoder import TextEncoder, TextEncoderConfig, encode_prompts
from .tokenizer import Tokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["AutoencoderKL", "CLIPTextConfig", "CLIPTextModel", "TextEncoder", "TextEncoderConfig", "Tokenizer", "UNet",
           "UNetConfig", "VAEConfig", "encode_prompts"]
