"""Fixtures of the trainers of a frozen model (LoRA and the other methods, textual inversion)."""

import dataclasses

import pytest
import torch

from latentlab.diffusion import DiffusionConfig
from latentlab.models import AutoencoderKL, TextEncoder, UNet
from latentlab.pipeline import Pipeline
from latentlab.training.presets import preset


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    """A tiny model folder: the real modules at the `tiny` preset, randomly initialised."""
    torch.manual_seed(0)
    text = TextEncoder(dataclasses.replace(preset("tiny", "text"), vocab_size=tokenizer.vocab_size))
    unet = UNet(preset("tiny", "unet"))
    for p in unet.parameters():  # undo the zero initialisation, so that the text reaches the output
        torch.nn.init.normal_(p, std=0.05)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    Pipeline(tokenizer=tokenizer, text_encoder=text, unet=unet, vae=AutoencoderKL(preset("tiny", "vae")),
             diffusion=DiffusionConfig(schedule="linear", timesteps=100), image_size=32).save(folder)
    return folder
