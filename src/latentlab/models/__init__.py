"""Networks: the U-Net denoiser, the autoencoder, the text encoders and their tokenizers."""

from .bert import BertConfig, BertModel
from .clip import CLIPTextConfig, CLIPTextModel
from .clip_tokenizer import clip_tokenizer, clip_tokenizer_from_files
from .text_encoder import TextEncoder, TextEncoderConfig, encode_prompts
from .tokenizer import Tokenizer
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["AutoencoderKL", "BertConfig", "BertModel", "CLIPTextConfig", "CLIPTextModel", "TextEncoder",
           "TextEncoderConfig", "Tokenizer", "UNet", "UNetConfig", "VAEConfig", "clip_tokenizer",
           "clip_tokenizer_from_files", "encode_prompts"]
